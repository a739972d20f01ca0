"""The output folder: names never come from DICOM text; a discarded run leaves nothing; an
earlier run's outputs are set aside unchanged before a new run."""
from __future__ import annotations

import os
from pathlib import Path

import pytest


def test_output_names_never_come_from_dicom_text(tmp_path: Path) -> None:
    from operators.outputs.staging import OutputStaging

    staging = OutputStaging(tmp_path / "out")
    for bad in ("../../etc/passwd", "a/b.dcm", "/etc/passwd", ".hidden", ".."):
        with pytest.raises(ValueError):
            staging.path(bad)
    staging.discard()
    assert list((tmp_path / "out").iterdir()) == []


def test_staging_discard_removes_files_already_published(tmp_path: Path) -> None:
    from operators.outputs.staging import OutputStaging

    staging = OutputStaging(tmp_path / "out")
    staging.path("segmentation.dcm").write_bytes(b"x")
    staging.publish()
    assert (tmp_path / "out" / "segmentation.dcm").exists()
    staging.discard()  # a failure after publishing (report not written)
    assert list((tmp_path / "out").iterdir()) == []




def test_earlier_outputs_are_set_aside_unchanged_and_other_files_kept(tmp_path: Path) -> None:
    from operators.outputs.staging import RUN_OUTPUT_NAMES, set_aside_earlier_outputs

    out = tmp_path / "out"
    out.mkdir()
    assert set_aside_earlier_outputs(out) is None  # nothing there: nothing moved
    contents = {name: f"earlier {name}".encode() for name in RUN_OUTPUT_NAMES}
    for name, data in contents.items():
        (out / name).write_bytes(data)
    (out / "notes.txt").write_text("a user's file")
    first = set_aside_earlier_outputs(out)
    assert first is not None and first.parent == out and first.name.startswith("earlier-run-")
    assert {p.name: p.read_bytes() for p in first.iterdir()} == contents
    assert sorted(p.name for p in out.iterdir()) == sorted([first.name, "notes.txt"])
    # A second earlier run with the same time stamp gets its own folder (nothing overwritten).
    newest = max(p.stat().st_mtime for p in first.iterdir())  # renames keep mtimes
    (out / "report.json").write_bytes(b"second")
    os.utime(out / "report.json", (newest, newest))
    second = set_aside_earlier_outputs(out)
    assert second is not None and second != first and second.name.startswith(first.name)
    assert (second / "report.json").read_bytes() == b"second"
    assert (first / "report.json").read_bytes() == contents["report.json"]
