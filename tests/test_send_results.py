"""Sending the results to a PACS (C-STORE, opt-in): against a real Orthanc on loopback, an
association it refuses, a port nothing listens on and a server that never answers; through
the app: exit 0 and the SEG + SR in the PACS, or exit 6 with every local output kept."""
from __future__ import annotations

import json
import socket
import threading
import time
from pathlib import Path

import pydicom
import pytest

from operators.outputs.send import Destination, ResultsNotSentError, parse_destination, send_c_store
from tests.app_runner import run_app
from tests.orthanc import orthanc_fixture

orthanc = orthanc_fixture(scope="module", aet="PACS_SEND")


@pytest.fixture(scope="module")
def real_seg_files(shared_dir: Path) -> list[Path]:
    """A DICOM-SEG written by another tool (highdicom's test data) and its CT source."""
    folder = shared_dir / "data" / "dicom-seg-reference" / "highdicom"
    return [folder / "ct_image.dcm", folder / "seg_image_ct_binary.dcm"]


def test_destinations_parse_or_refuse() -> None:
    assert parse_destination(" ORTHANC@pacs.example:4242 ") == Destination("ORTHANC", "pacs.example", 4242)
    assert parse_destination("MY AE@127.0.0.1:104").text() == "MY AE@127.0.0.1:104"
    for bad in ("pacs:4242", "ORTHANC@pacs", "A_TITLE_LONGER_THAN_16@h:1", "X@h:70000", "X@h:port"):
        with pytest.raises(ValueError):
            parse_destination(bad)


def test_c_store_into_orthanc(orthanc, real_seg_files: list[Path]) -> None:
    statuses = send_c_store(real_seg_files, Destination(orthanc.aet, orthanc.host, orthanc.dicom_port), timeout_s=20)
    assert statuses == [0, 0]
    stored = {orthanc.get_json(f"/instances/{i}")["MainDicomTags"]["SOPInstanceUID"] for i in orthanc.get_json("/instances")}
    assert {str(pydicom.dcmread(f).SOPInstanceUID) for f in real_seg_files} <= stored


def test_refused_association_is_one_clear_error(orthanc, real_seg_files: list[Path]) -> None:
    t0 = time.monotonic()
    with pytest.raises(ResultsNotSentError, match="association rejected") as info:
        send_c_store(real_seg_files, Destination("NOT_THE_PACS", orthanc.host, orthanc.dicom_port), timeout_s=20)
    assert "\n" not in str(info.value) and time.monotonic() - t0 < 20


def test_nothing_listening_fails_fast(real_seg_files: list[Path]) -> None:
    from benchmarks.local_process import free_port

    t0 = time.monotonic()
    with pytest.raises(ResultsNotSentError, match="no association"):
        send_c_store(real_seg_files, Destination("PACS", "127.0.0.1", free_port()), timeout_s=5)
    assert time.monotonic() - t0 < 10


def test_server_that_never_answers_is_bounded_by_the_timeout(real_seg_files: list[Path]) -> None:
    """A socket that accepts the connection and then stays silent: the association request
    gets no answer, and the send gives up after the timeout instead of hanging."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    held: list[socket.socket] = []
    threading.Thread(target=lambda: held.append(server.accept()[0]), daemon=True).start()
    t0 = time.monotonic()
    try:
        with pytest.raises(ResultsNotSentError):
            send_c_store(real_seg_files, Destination("PACS", "127.0.0.1", server.getsockname()[1]), timeout_s=3)
        assert 2.5 < time.monotonic() - t0 < 15
    finally:
        for s in held:
            s.close()
        server.close()


@pytest.fixture(scope="module")
def sending_run(orthanc, small_study: Path, models_dir: Path, tmp_path_factory: pytest.TempPathFactory):
    """The app run with ``BRATS_SEND_DIMSE`` pointing at the real Orthanc."""
    dest = f"{orthanc.aet}@{orthanc.host}:{orthanc.dicom_port}"
    return run_app(small_study, tmp_path_factory.mktemp("out"), models_dir, env={"BRATS_SEND_DIMSE": dest}), dest


@pytest.mark.slow  # a whole app run (~55 s); C-STORE into the real Orthanc, its refusals and timeouts stay in the default run
def test_app_sends_its_seg_and_sr_to_the_pacs(orthanc, sending_run) -> None:
    run, dest = sending_run
    assert run.returncode == 0, run.log[-3000:]
    send = run.report["send"]
    assert (send["status"], send["destination"], send["files"]) == ("ok", dest, ["segmentation.dcm", "volumes_sr.dcm"])
    stored = {orthanc.get_json(f"/instances/{i}")["MainDicomTags"]["SOPInstanceUID"] for i in orthanc.get_json("/instances")}
    result = run.report["result"]
    assert {result["seg_sop_instance_uid"], result["sr_sop_instance_uid"]} <= stored


@pytest.mark.slow  # on the app run above (its fixture)
def test_failed_send_returns_6_records_it_and_keeps_the_outputs(sending_run, tmp_path: Path) -> None:
    """The app's send step on published outputs (the run above), towards a port nothing listens on."""
    import shutil
    from types import SimpleNamespace

    from app.main import send_results
    from benchmarks.local_process import free_port

    run, _ = sending_run
    out = tmp_path / "out"
    shutil.copytree(run.output_dir, out)
    before = {p.name: p.read_bytes() for p in out.iterdir() if p.name != "report.json"}
    dest = f"PACS@127.0.0.1:{free_port()}"
    settings = SimpleNamespace(send_dimse=dest, send_timeout_s=5, output_dir=out)
    assert send_results(SimpleNamespace(settings=settings)) == 6
    assert {p.name: p.read_bytes() for p in out.iterdir() if p.name != "report.json"} == before
    report = json.loads((out / "report.json").read_text())
    assert report["status"] == "ok" and report["send"]["status"] == "failed"
    assert report["send"]["error"].startswith(f"send_failed: results not sent to {dest}")
    assert "\n" not in report["send"]["error"]


@pytest.mark.slow  # a whole app run (~45 s); the send step itself is tested just above in the default run
def test_app_send_failure_exits_6_and_keeps_the_outputs(small_study: Path, models_dir: Path, tmp_path: Path) -> None:
    from benchmarks.local_process import free_port

    run = run_app(small_study, tmp_path / "out", models_dir,
                  env={"BRATS_SEND_DIMSE": f"PACS@127.0.0.1:{free_port()}", "BRATS_SEND_TIMEOUT_S": "5"})
    assert run.returncode == 6, run.log[-3000:]
    assert run.files() == ["overlay.png", "report.json", "segmentation.dcm", "volumes_sr.dcm"]
    report = run.report
    assert report["status"] == "ok" and report["send"]["status"] == "failed"
    assert report["send"]["error"].startswith("send_failed: results not sent to PACS@127.0.0.1:")
    assert [ln for ln in run.log.splitlines() if "- send_failed:" in ln]
