"""Spatial processing: rigid registration of every series to the reference and resampling onto
the model grid (:mod:`.registration`), brain extraction of skull-on volumes
(:mod:`.brain_extraction`). SimpleITK images, LPS physical space.

May import: :mod:`operators.study_model`, :mod:`operators.errors`.
"""
