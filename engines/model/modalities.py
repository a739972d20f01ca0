"""One vocabulary for the four MR sequences the networks take.

Keys (:class:`~engines.model.vocabulary.Modality`: ``"flair"``, ``"t1"``, ``"t1ce"``, ``"t2"``)
name a sequence in code, settings and ``report.json``'s keys; :data:`DISPLAY` is how every output
spells it for people (report texts, SEG descriptions, logs): FLAIR, T1, T1ce (post-contrast T1),
T2, BraTS's spelling. :data:`MODALITIES` is also the networks' input channel order.
"""
from __future__ import annotations

from engines.model.vocabulary import MODALITY_DISPLAY, Modality

MODALITIES: tuple[Modality, ...] = tuple(Modality)
"""Keys in the networks' channel order: FLAIR, T1, T1ce, T2."""

DISPLAY: dict[Modality, str] = MODALITY_DISPLAY
"""Key -> the spelling shown to people."""

CHANNEL_NAMES: tuple[str, ...] = tuple(DISPLAY[m] for m in MODALITIES)
"""Display names in channel order."""

__all__ = ["CHANNEL_NAMES", "DISPLAY", "MODALITIES", "Modality"]
