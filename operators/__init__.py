"""The operator graph of the MAP, and what its operators use.

The graph (wired in :mod:`app.app`), one Holoscan operator per ``*_operator.py`` file here, data
flowing one way::

    StudyLoaderOperator -> ModalitySelectorOperator -> RegistrationOperator
        -> SegmentationOperator -> DicomSegWriterOperator -> ReportWriterOperator

:mod:`operators.study_model` holds the types that flow between them (study, selection, model
input, segmentation outcome, pipeline result); :mod:`operators.errors` the typed input errors
(each with its exit code). The work itself lives in sub-packages by concern:

``dicom/``
    DICOM in and out: the study loader, series -> volume, the DICOM-SEG builder and reader.
``selection/``
    Which series is FLAIR / T1 / T1ce / T2 (site-editable rules).
``spatial/``
    Registration, resampling onto the model grid, brain extraction.
``outputs/``
    The run's output folder (staging, atomic writes) and the report's content.

May import: :mod:`engines` (the network, the runtimes); never :mod:`app`.
"""
