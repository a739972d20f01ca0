"""Serving the networks from a Triton Inference Server: the model repository generator
(:mod:`.triton_repository`) and the Python-backend model it ships (:mod:`.triton_python_model`).

May import: :mod:`engines.model`, :mod:`engines.runtimes`.
"""
