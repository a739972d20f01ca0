"""The BraTS 2017 cascade (Wang et al.): network, weights and the test-time protocol.

May import: :mod:`engines.runtimes.base` (the engine interface the protocol calls).
"""
