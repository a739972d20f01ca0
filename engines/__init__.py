"""The network and the runtimes that run it; nothing here knows DICOM, series or operators.

``model/``
    The BraTS 2017 cascade: the MSNet port (:mod:`.model.msnet`) and its folded layout
    (:mod:`.model.msnet_folded`), the original weights (:mod:`.model.weights`), the test-time
    protocol on NumPy volumes (:mod:`.model.cascade`: tiling, views, cascade, post-processing),
    what absent sequences are fed (:mod:`.model.missing`: fills, the synthesis network, the
    measured strategy table), and the model's vocabulary as types (:mod:`.model.vocabulary`:
    sequences, regions, fills, stage groups).
``runtimes/``
    Every inference engine behind one interface (:mod:`.runtimes.base`), their registry and the
    policy that picks one (:mod:`.runtimes.registry`), the on-disk engine cache.
``serving/``
    The Triton Inference Server model repository generator and its Python-backend model.
:mod:`engines.prepare`
    ``python -m engines.prepare``: the model folder the app's ``-m`` takes.

May import: nothing of :mod:`app` or :mod:`operators`.
"""
