"""Inference engines behind one interface (:class:`.base.InferenceEngine`), the registry that
creates them by name and the ``auto`` choice (:mod:`.registry`), the on-disk cache of what an
engine builds for the GPU at hand (:mod:`.engine_cache`).

May import: :mod:`engines.model`.
"""
