"""DICOM in and out: :mod:`.study_loader` (a folder -> one study's MR series),
:mod:`.series_volume` (a series -> a SimpleITK volume, geometry checked), :mod:`.seg_builder`
(labels -> DICOM-SEG with highdicom).

May import: :mod:`operators.study_model`, :mod:`operators.errors`, :mod:`operators.outputs`.
"""
