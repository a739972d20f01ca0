"""Series selection: which series of a study is FLAIR, T1, T1ce or T2, and which are missing
(:mod:`.modality_selector`; the rules are data, ``app/modality_rules.json``).

May import: :mod:`operators.study_model`, :mod:`operators.errors`.
"""
