"""DICOM in and out: :mod:`.study_loader` (a folder -> one study's MR series),
:mod:`.series_volume` (a series -> a SimpleITK volume, geometry checked), :mod:`.seg`
(labels -> DICOM-SEG with highdicom), :mod:`.sr_builder` (the tumour volumes as a DICOM SR),
:mod:`.source_attributes` (source attribute values made to fit their VR).

May import: :mod:`operators.study_model`, :mod:`operators.errors`, :mod:`operators.outputs`.
"""
