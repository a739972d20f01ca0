"""Benchmarks and evaluation (development only, not in the MAP).

Each ``python -m benchmarks.<name>`` writes its numbers and a table a person reads through
``reporting`` (results files, Markdown tables, figures, percentiles: the one shared module for
them); metrics come from ``evaluation`` (MONAI's per region, and the one NumPy Dice). ``run``
(engines on the CPU; ``run_report``, ``run_triton``) and ``gpu_check`` (the GPU measurement;
``gpu_check_measure``, ``gpu_check_report``) share ``measurement`` (reference batch, scenarios,
timing, host facts).
"""
