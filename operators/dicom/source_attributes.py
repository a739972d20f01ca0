"""Attribute values copied from the source images into the outputs, checked against their VR.

highdicom copies the Patient and Study modules of the source into the SEG (and the SR takes
them from the SEG). Clinical sources carry values their VR does not allow: ``PatientAge``
``NA`` (AS), ``PatientBirthDate`` ``19701340`` (DA), times with colons (the retired
ACR-NEMA ``HH:MM:SS`` form), dates with dots (retired ``YYYY.MM.DD``), ``PatientSex``
``male``, ``PatientWeight`` ``75kg``, names of more than five components, control characters,
non-ASCII text without SpecificCharacterSet. Copied verbatim, they make the SEG invalid or
make highdicom refuse to build it at all.

:func:`sanitised_copy` returns a metadata copy of a source dataset in which every such value
is repaired when the repair is unambiguous (retired date / time forms, sex words, extra
name components, control characters, the character set), else emptied when the attribute is
Type 2 (present, may be empty) in the modules copied, else removed. Every change is listed
(keyword, what was wrong, what was done) for the log and ``report.json``. The caller's
dataset is never modified.

Geometry, pixel description, UIDs and sequences are not touched: those the SEG needs
exactly, and a fault there is a fault of the image, which is refused elsewhere.
"""
from __future__ import annotations

import datetime as _dt
import re
from collections.abc import Iterable
from dataclasses import dataclass

import pydicom
from pydicom.dataelem import DataElement, RawDataElement
from pydicom.valuerep import MAX_VALUE_LEN

__all__ = ["MAX_LENGTH", "PIXEL_DATA_TAGS", "AttributeFix", "fixes_text", "sanitised_copy"]

#: Text VRs checked (PS3.5 table 6.2-1); maximum lengths per value (PN: per component group).
#: pydicom's table where it has the VR; AS, DA and TM it checks by pattern, PN per component.
MAX_LENGTH: dict[str, int] = {
    **{vr: MAX_VALUE_LEN[vr] for vr in ("AE", "CS", "DS", "IS", "LO", "SH", "ST", "LT")},
    "AS": 4, "DA": 8, "PN": 64, "TM": 14,
}
#: Type 2 attributes of the copied Patient / General Study modules: emptied, never removed.
_TYPE2 = frozenset({
    "PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyDate", "StudyTime",
    "ReferringPhysicianName", "StudyID", "AccessionNumber",
})
#: Never changed here: the image's geometry and pixel description, and identifiers.
_PROTECTED = frozenset({
    "ImagePositionPatient", "ImageOrientationPatient", "PixelSpacing", "SliceThickness",
    "SpacingBetweenSlices", "SliceLocation", "RescaleSlope", "RescaleIntercept",
    "NumberOfFrames", "InstanceNumber", "SeriesNumber", "AcquisitionNumber",
    "SpecificCharacterSet", "ImageType", "PhotometricInterpretation",
})
#: Pixel Data, Float Pixel Data, Double Float Pixel Data: never copied into a metadata copy.
PIXEL_DATA_TAGS = frozenset({0x7FE00010, 0x7FE00008, 0x7FE00009})
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1a\x1c-\x1f\x7f]")  # ESC (1b) kept: ISO 2022
_LINE_CONTROL = re.compile(r"[\r\n\t\f]")
_AS = re.compile(r"^\d{3}[DWMY]$")
_DS = re.compile(r"^[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)?$")
_IS = re.compile(r"^[+-]?\d+$")
_CS = re.compile(r"^[A-Z0-9 _]*$")
_SEX = {"M": "M", "F": "F", "O": "O", "MALE": "M", "FEMALE": "F", "OTHER": "O"}


@dataclass(frozen=True)
class AttributeFix:
    """One change made to a copied attribute."""

    keyword: str
    problem: str
    action: str  # "repaired" | "emptied" | "removed" | "decoded"
    value: str = ""
    """The value written instead (for "repaired" / "decoded")."""

    def text(self) -> str:
        done = f"{self.action} to {self.value!r}" if self.action in ("repaired", "decoded") else self.action
        return f"{self.keyword}: {self.problem}; {done}"


def _valid_date(text: str) -> bool:
    try:
        _dt.datetime.strptime(text, "%Y%m%d")
    except ValueError:
        return False
    return True


def _valid_time(text: str) -> bool:
    m = re.fullmatch(r"(\d{2})(\d{2})?(\d{2})?(\.\d{1,6})?", text)
    if not m or (m.group(4) and not m.group(3)):
        return False
    hh, mm, ss = int(m.group(1)), int(m.group(2) or 0), int(m.group(3) or 0)
    return hh < 24 and mm < 60 and ss < 61


def _check_value(vr: str, keyword: str, text: str) -> tuple[str | None, str]:
    """``(repaired value or None, problem)`` for one value; problem "" when valid."""
    limit = MAX_LENGTH.get(vr)
    if vr == "AS":
        return (None, f"{text!r} is not an age (nnnD/W/M/Y)") if not _AS.match(text) else (text, "")
    if vr == "DA":
        if _valid_date(text):
            return text, ""
        retired = text.replace(".", "")
        if re.fullmatch(r"\d{4}\.\d{2}\.\d{2}", text) and _valid_date(retired):
            return retired, "retired date form YYYY.MM.DD"
        return None, f"{text!r} is not a date (YYYYMMDD)"
    if vr == "TM":
        if _valid_time(text):
            return text, ""
        retired = text.replace(":", "")
        if ":" in text and _valid_time(retired):
            return retired, "retired time form HH:MM:SS"
        return None, f"{text!r} is not a time (HHMMSS.FFFFFF)"
    if vr in ("DS", "IS"):
        pattern = _DS if vr == "DS" else _IS
        ok = bool(pattern.match(text.strip())) and len(text) <= limit
        return (text.strip(), "") if ok else (None, f"{text!r} is not a {'decimal' if vr == 'DS' else 'integer'} string")
    if vr == "CS":
        if keyword == "PatientSex":
            sex = _SEX.get(text.strip().upper())
            if sex is None:
                return None, f"{text!r} is not M, F or O"
            return sex, "" if sex == text else f"{text!r} is not M, F or O"
        if _CS.match(text) and len(text) <= limit:
            return text, ""
        upper = re.sub(r"[^A-Z0-9 _]", "_", text.upper())[:limit]
        return upper, f"{text!r} has characters or length a code string does not allow"
    if vr == "PN":
        cleaned = _CONTROL.sub("", _LINE_CONTROL.sub(" ", text))
        groups = cleaned.split("=")
        problem = "control characters" if cleaned != text else ""
        if len(groups) > 3:
            groups = groups[:3]
            problem = problem or "more than three component groups"
        fixed = []
        for group in groups:
            parts = group.split("^")
            if len(parts) > 5:
                parts = [*parts[:4], " ".join(p for p in parts[4:] if p)]
                problem = problem or "more than five name components"
            fixed.append("^".join(parts))
        return "=".join(fixed), problem
    # LO, SH, ST, LT (length is clipped in the built SEG, see operators.dicom.seg.sop)
    allowed = _CONTROL if vr in ("ST", "LT") else re.compile(f"{_CONTROL.pattern}|{_LINE_CONTROL.pattern}")
    cleaned = allowed.sub(" ", text)
    return cleaned, "" if cleaned == text else "control characters"


def _decode(raw: bytes, charset_known: bool) -> tuple[str, bool]:
    """Text of raw bytes; ``True`` when it was non-ASCII text without a character set."""
    if charset_known or raw.isascii():
        return raw.decode("latin-1"), False
    try:
        return raw.decode("utf-8"), True
    except UnicodeDecodeError:
        return raw.decode("latin-1"), True  # the usual legacy charset of European scanners


def _element_texts(elem: DataElement | RawDataElement, charset_known: bool) -> tuple[list[str], bool]:
    if isinstance(elem, RawDataElement):
        raw = bytes(elem.value or b"").rstrip(b"\x00 ")
        text, undeclared = _decode(raw, charset_known)
        return ([v.strip() for v in text.split("\\")] if text else []), undeclared
    value = elem.value
    if value is None or value == "":
        return [], False
    values = list(value) if isinstance(value, pydicom.multival.MultiValue) else [value]
    texts = [str(v).strip() if elem.VR != "PN" else str(v) for v in values]
    return texts, not charset_known and not all(t.isascii() for t in texts)


def sanitised_copy(ds: pydicom.Dataset) -> tuple[pydicom.Dataset, list[AttributeFix]]:
    """A metadata copy of ``ds`` (no pixel data) whose copied attributes fit their VR.

    Parameters
    ----------
    ds
        A source image instance (as read; raw elements are checked before pydicom converts
        them, so a value pydicom cannot even convert is handled too).

    Returns
    -------
    copy
        New dataset sharing the unchanged elements with ``ds`` (do not modify them in place);
        ``file_meta`` shared. When non-ASCII text was found without SpecificCharacterSet,
        the copy declares ``ISO_IR 192`` (UTF-8) and holds the decoded text.
    fixes
        What was changed, in tag order.
    """
    charset_known = bool(ds.get("SpecificCharacterSet"))
    out = pydicom.Dataset()
    if hasattr(ds, "file_meta"):
        out.file_meta = ds.file_meta
    fixes: list[AttributeFix] = []
    undeclared_text = False
    for tag in sorted(pydicom.tag.Tag(t) for t in ds.keys()):
        if tag in PIXEL_DATA_TAGS:
            continue
        elem = ds.get_item(tag)
        vr = elem.VR
        keyword = pydicom.datadict.keyword_for_tag(tag) or ""
        if vr not in MAX_LENGTH or keyword in _PROTECTED or not keyword or tag.is_private:
            out[tag] = elem
            continue
        texts, undeclared = _element_texts(elem, charset_known)
        undeclared_text |= undeclared
        new_values: list[str] = []
        problems: list[str] = []
        drop = False
        for text in texts:
            value, problem = _check_value(vr, keyword, text)
            if problem:
                problems.append(problem)
            if value is None:
                drop = True
                break
            new_values.append(value)
        if drop:
            action = "emptied" if keyword in _TYPE2 else "removed"
            fixes.append(AttributeFix(keyword, problems[-1], action))
            if action == "emptied":
                out.add_new(tag, vr, "")
            continue
        if problems or undeclared:
            value = new_values[0] if len(new_values) == 1 else new_values
            fixes.append(AttributeFix(keyword, problems[0] if problems else "non-ASCII text without SpecificCharacterSet",
                                      "repaired" if problems else "decoded", "\\".join(new_values)))
            out.add_new(tag, vr, value if new_values else "")
        else:
            out[tag] = elem
    if undeclared_text:
        out.SpecificCharacterSet = "ISO_IR 192"
        fixes.append(AttributeFix("SpecificCharacterSet", "absent while text is not ASCII", "repaired", "ISO_IR 192"))
    return out, fixes


def fixes_text(fixes: Iterable[AttributeFix]) -> list[str]:
    """One line per fix (unique), for the log and the report."""
    return list(dict.fromkeys(f.text() for f in fixes))
