"""The operator graph of the MAP, and what its operators use.

The graph (wired in :mod:`app.app`), one Holoscan operator per ``*_operator.py`` file here, data
flowing one way::

    StudyLoaderOperator -> ModalitySelectorOperator -> RegistrationOperator
        -> SegmentationOperator -> DicomSegWriterOperator -> ReportWriterOperator

Each operator takes what it needs on named ports (its docstring lists them, its ``setup()``
declares them), from whichever operator upstream makes it: the SEG writer, for one, takes the
selection, the reference series, the brain mask, the labels and the missing-sequence plan. One
:class:`~operators.study_model.Timings` follows the chain, each operator adding its stages.

:mod:`operators.study_model` holds the values that flow between them (study, selection, model
input, reference series, the registration and segmentation records, what was written, the
timings); :mod:`operators.errors` the typed errors, by kind (input, output folder, model folder,
inference server), each kind with its exit code. The work itself lives in sub-packages by concern:

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
