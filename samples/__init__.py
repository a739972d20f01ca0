"""Sample inputs: realistic DICOM studies built from BraTS cases (test and benchmark input, not
part of the MAP).

``make_study`` (the four-series study, ``--misalign``, ``--slices``; the CLI), ``clinical_profiles``,
``reformat_exam``, ``thick_post_exam`` (``--clinical PROFILE`` exams), ``make_native_study`` (an exam
in its native space); the parts they share: ``volumes`` (a case's NIfTI volumes, slabs, the
``--misalign`` draws; NumPy and nibabel only), ``scanner_protocols`` (vendor styles),
``dicom_writer`` (deterministic UIDs, one series on disk), ``study_manifest`` (``study.json``,
``misalignment.json``).
"""
