"""The model's vocabulary as types: the MR sequences, the tumour regions, the fills of an absent
sequence and the cascade's stage groups.

Each is a :class:`Term`, a ``StrEnum`` whose members stand for the strings the code used before
in every way that shows: a member compares and hashes equal to its string, formats, prints and
``repr`` s as it, and JSON writes it as it. ``report.json``, the SEG's texts and the logs read as
they did; the code names members (``Modality.T1CE``, ``Fill.ZERO``) instead of comparing strings.
"""
from __future__ import annotations

from enum import StrEnum


class Term(StrEnum):
    """A ``StrEnum`` whose members also ``repr`` as their string (in a list, a dict, a message)."""

    def __repr__(self) -> str:
        return repr(self.value)


class Modality(Term):
    """The four MR sequences, in the networks' channel order; the values are the keys used in
    code, settings and report.json (``"flair"``, ``"t1"``, ``"t1ce"``, ``"t2"``)."""

    FLAIR = "flair"
    T1 = "t1"
    T1CE = "t1ce"
    T2 = "t2"

    @property
    def display(self) -> str:
        """How every output spells the sequence for people (BraTS's spelling): FLAIR, T1, T1ce, T2."""
        return MODALITY_DISPLAY[self]


#: Modality -> the spelling shown to people.
MODALITY_DISPLAY: dict[Modality, str] = {Modality.FLAIR: "FLAIR", Modality.T1: "T1", Modality.T1CE: "T1ce",
                                         Modality.T2: "T2"}


class Region(Term):
    """The BraTS tumour regions, outermost first: whole tumour, tumour core, enhancing tumour."""

    WT = "WT"
    TC = "TC"
    ET = "ET"


class Fill(Term):
    """What an absent channel is fed (:mod:`engines.model.missing.fills`), in the order the
    measurement tries them."""

    ZERO = "zero"
    COPY = "copy"
    MATCHED = "matched"
    SYNTHESIS = "synthesis"


class StageGroup(Term):
    """The cascade's stages as the fills group them: the WT stage, and the TC and EN stages (``core``)."""

    WT = "wt"
    CORE = "core"
