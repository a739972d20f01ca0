"""The run's outputs: the staged output folder with atomic writes and the published file names
(:mod:`.staging`), the content of ``report.json`` (:mod:`.report`), and the QA image
``overlay.png`` (:mod:`.qa_image`).

May import: :mod:`operators.study_model`, :mod:`operators.errors`.
"""
