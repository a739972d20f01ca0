"""The run's outputs: the staged output folder with atomic writes and the published file names
(:mod:`.staging`), and the content of ``report.json`` (:mod:`.report`).

May import: :mod:`operators.study_model`, :mod:`operators.errors`.
"""
