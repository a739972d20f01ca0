"""A real Orthanc PACS on loopback for tests, plus a pynetdicom C-STORE client.

Helper module (not collected by pytest). Requires the Debian package ``orthanc``
(``/usr/sbin/Orthanc``); there is deliberately **no skip** when it is missing: the test fails
with a message naming the package, because CI's bootstrap installs it.

Usage in a test module::

    from tests.orthanc import orthanc_fixture

    orthanc = orthanc_fixture(scope="module")     # a pytest fixture yielding OrthancServer

    def test_x(orthanc):
        statuses = c_store(files, orthanc.host, orthanc.dicom_port, orthanc.aet)
        orthanc.get_json("/studies")

or directly ``with run_orthanc() as server: ...``.

Each server gets: free HTTP and DICOM ports on 127.0.0.1, a temporary storage/index folder,
its own AE title, no authentication, remote access off, and no plugins unless asked
(``run_orthanc(plugins=[DICOMWEB_PLUGIN], extra_config={"DicomWeb": {...}})``: the Debian
package ``orthanc-dicomweb`` installs the DICOMweb plugin under ``/usr/share/orthanc/plugins/``).
Start-up waits for ``GET /system`` to answer; shutdown sends SIGTERM and waits (SIGKILL after a
timeout).
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from benchmarks.local_process import free_port, stop

__all__ = [
    "DICOMWEB_APT_PACKAGE",
    "DICOMWEB_PLUGIN",
    "ORTHANC_APT_PACKAGE",
    "OrthancNotInstalledError",
    "OrthancServer",
    "OrthancStartupError",
    "c_store",
    "find_orthanc",
    "orthanc_fixture",
    "run_orthanc",
]

ORTHANC_APT_PACKAGE = "orthanc"
DEFAULT_ORTHANC_BINARY = "/usr/sbin/Orthanc"
DICOMWEB_APT_PACKAGE = "orthanc-dicomweb"
#: Where Debian's ``orthanc-dicomweb`` (1.7 in bookworm) puts the DICOMweb plugin.
DICOMWEB_PLUGIN = "/usr/share/orthanc/plugins/libOrthancDicomWeb.so"

#: Storage SOP classes offered by :func:`c_store`.
STORAGE_SOP_CLASSES: dict[str, str] = {
    "MR Image Storage": "1.2.840.10008.5.1.4.1.1.4",
    "Enhanced MR Image Storage": "1.2.840.10008.5.1.4.1.1.4.1",
    "Comprehensive 3D SR Storage": "1.2.840.10008.5.1.4.1.1.88.34",
    "Segmentation Storage": "1.2.840.10008.5.1.4.1.1.66.4",
}


class OrthancNotInstalledError(RuntimeError):
    """The Orthanc executable is missing."""


class OrthancStartupError(RuntimeError):
    """Orthanc did not become ready (exited, or ``/system`` did not answer in time)."""


def find_orthanc() -> str:
    """Path of the Orthanc executable (``$ORTHANC_BIN``, ``/usr/sbin/Orthanc`` or PATH).

    Raises
    ------
    OrthancNotInstalledError
        With a message naming the apt package.
    """
    candidates = [os.environ.get("ORTHANC_BIN"), DEFAULT_ORTHANC_BINARY, shutil.which("Orthanc")]
    for c in candidates:
        if c and os.path.isfile(c) and os.access(c, os.X_OK):
            return c
    raise OrthancNotInstalledError(
        f"Orthanc not found ({DEFAULT_ORTHANC_BINARY}, $ORTHANC_BIN, PATH). Install the "
        f"Debian package: `apt-get install -y {ORTHANC_APT_PACKAGE}` (the project's bootstrap "
        "script does this on CI). PACS tests do not skip without it."
    )


@dataclass
class OrthancServer:
    """A running Orthanc instance.

    Attributes
    ----------
    host : str
        Loopback address it listens on.
    http_port, dicom_port : int
        REST API port and DICOM (C-STORE SCP) port.
    aet : str
        Orthanc's own AE title.
    workdir : Path
        Temporary folder with ``config.json``, ``storage/`` and ``orthanc.log``.
    process : subprocess.Popen
        The Orthanc process.
    version : str
        ``Version`` from ``/system``.
    startup_s : float
        Seconds from launch until ``/system`` answered.
    """

    host: str
    http_port: int
    dicom_port: int
    aet: str
    workdir: Path
    process: subprocess.Popen[bytes]
    version: str = ""
    startup_s: float = 0.0
    system: dict[str, Any] = field(default_factory=dict)

    @property
    def url(self) -> str:
        """Base URL of the REST API."""
        return f"http://{self.host}:{self.http_port}"

    def get(self, path: str, timeout_s: float = 30.0, accept: str | None = None) -> bytes:
        """GET ``path`` from the REST API and return the body (raises on HTTP errors)."""
        req = urllib.request.Request(self.url + path)
        if accept:
            req.add_header("Accept", accept)
        with urllib.request.urlopen(req, timeout=timeout_s) as resp:
            return resp.read()

    def get_json(self, path: str, timeout_s: float = 30.0) -> Any:
        """GET ``path`` and decode JSON."""
        return json.loads(self.get(path, timeout_s=timeout_s))

    def log_tail(self, n_chars: int = 4000) -> str:
        """Last characters of Orthanc's stdout/stderr log."""
        log = self.workdir / "orthanc.log"
        return log.read_text(errors="replace")[-n_chars:] if log.exists() else ""


def _write_config(workdir: Path, http_port: int, dicom_port: int, aet: str,
                  plugins: Sequence[str] = (), extra_config: Mapping[str, Any] | None = None) -> Path:
    config: dict[str, Any] = {
        "Name": f"pytest-{aet}",
        "StorageDirectory": str(workdir / "storage"),
        "IndexDirectory": str(workdir / "storage"),
        "StorageCompression": False,
        "HttpServerEnabled": True,
        "HttpPort": http_port,
        "RemoteAccessAllowed": False,  # loopback only
        "AuthenticationEnabled": False,
        "RegisteredUsers": {},
        "DicomServerEnabled": True,
        "DicomAet": aet,
        "DicomPort": dicom_port,
        "DicomCheckCalledAet": True,
        "DicomAlwaysAllowStore": True,
        "DicomCheckModalityHost": False,
        "DicomModalities": {},
        "Plugins": list(plugins),
        "HttpsVerifyPeers": False,
        "ConcurrentJobs": 1,
        "StableAge": 1,
        "SaveJobs": False,
        "OverwriteInstances": False,
        "DefaultEncoding": "Utf8",
    }
    config.update(extra_config or {})
    path = workdir / "config.json"
    path.write_text(json.dumps(config, indent=2))
    return path


def _wait_ready(server: OrthancServer, timeout_s: float) -> None:
    t0 = time.monotonic()
    last_err: Exception | None = None
    while time.monotonic() - t0 < timeout_s:
        rc = server.process.poll()
        if rc is not None:
            raise OrthancStartupError(
                f"Orthanc exited with code {rc} during start-up (ports http={server.http_port},"
                f" dicom={server.dicom_port}). Log tail:\n{server.log_tail()}"
            )
        try:
            server.system = server.get_json("/system", timeout_s=2.0)
            server.version = str(server.system.get("Version", ""))
            return
        except (urllib.error.URLError, ConnectionError, OSError, ValueError) as exc:
            last_err = exc
            time.sleep(0.1)
    raise OrthancStartupError(
        f"Orthanc did not answer GET {server.url}/system within {timeout_s:.0f} s "
        f"(last error: {last_err!r}). Log tail:\n{server.log_tail()}"
    )


@contextmanager
def run_orthanc(
    aet: str = "ORTHANC_TEST",
    startup_timeout_s: float = 60.0,
    binary: str | None = None,
    keep_workdir: bool = False,
    plugins: Sequence[str] = (),
    extra_config: Mapping[str, Any] | None = None,
) -> Iterator[OrthancServer]:
    """Start a real Orthanc on loopback; stop it (and delete its storage) on exit.

    Parameters
    ----------
    aet : str
        Orthanc's AE title (called AE of C-STORE), at most 16 characters.
    startup_timeout_s : float
        How long to wait for ``GET /system``.
    binary : str, optional
        Orthanc executable; default :func:`find_orthanc`.
    keep_workdir : bool
        Keep the temporary folder (config, storage, log) for debugging.
    plugins : sequence of str
        Plugin shared libraries to load (e.g. :data:`DICOMWEB_PLUGIN`); a missing one raises
        :class:`OrthancNotInstalledError` naming its Debian package.
    extra_config : mapping, optional
        Top-level configuration entries added to (or replacing) the defaults, e.g.
        ``{"DicomWeb": {"Enable": True, "Root": "/dicom-web/"}}``.

    Yields
    ------
    OrthancServer
        The ready server.

    Raises
    ------
    OrthancNotInstalledError
        If Orthanc is not installed.
    OrthancStartupError
        If it does not become ready; the message holds the end of its log.
    """
    exe = binary or find_orthanc()
    for plugin in plugins:
        if not os.path.isfile(plugin):
            package = DICOMWEB_APT_PACKAGE if plugin == DICOMWEB_PLUGIN else "the plugin's package"
            raise OrthancNotInstalledError(
                f"Orthanc plugin {plugin} not found: install the Debian package `{package}` "
                "(`bash scripts/bootstrap.sh --viewer` does)."
            )
    if not (1 <= len(aet) <= 16):
        raise ValueError(f"AE title must be 1..16 characters: {aet!r}")
    workdir = Path(tempfile.mkdtemp(prefix="orthanc-test-"))
    server: OrthancServer | None = None
    try:
        (workdir / "storage").mkdir()
        # Ports are picked free, then released and handed to Orthanc: another process could
        # grab one in between. Retry a couple of times on such an early exit.
        for attempt in range(3):
            http_port, dicom_port = free_port(), free_port()
            while dicom_port == http_port:
                dicom_port = free_port()
            config = _write_config(workdir, http_port, dicom_port, aet, plugins, extra_config)
            log = open(workdir / "orthanc.log", "ab")  # noqa: SIM115 - closed below
            t0 = time.monotonic()
            proc = subprocess.Popen(
                [exe, str(config)],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                cwd=workdir,
            )
            log.close()
            server = OrthancServer("127.0.0.1", http_port, dicom_port, aet, workdir, proc)
            try:
                _wait_ready(server, startup_timeout_s)
            except OrthancStartupError:
                stop(proc)
                if attempt < 2 and proc.returncode not in (None, 0) and \
                        time.monotonic() - t0 < startup_timeout_s:
                    continue
                raise
            server.startup_s = time.monotonic() - t0
            break
        assert server is not None
        yield server
    finally:
        if server is not None:
            stop(server.process)
        if not keep_workdir:
            shutil.rmtree(workdir, ignore_errors=True)


def orthanc_fixture(scope: str = "module", aet: str = "ORTHANC_TEST") -> Callable[..., Any]:
    """Make a pytest fixture that yields a running :class:`OrthancServer`.

    Parameters
    ----------
    scope : str
        pytest fixture scope (``"function"``, ``"module"``, ``"session"``).
    aet : str
        Orthanc's AE title.

    Returns
    -------
    callable
        A pytest fixture; assign it to a module-level name, e.g. ``orthanc = orthanc_fixture()``.
    """

    @pytest.fixture(scope=scope)  # type: ignore[misc]
    def _orthanc() -> Iterator[OrthancServer]:
        with run_orthanc(aet=aet) as server:
            yield server

    return _orthanc


def c_store(
    files: Sequence[str | Path],
    host: str,
    port: int,
    aet: str,
    calling_aet: str = "PYTEST_SCU",
    timeout_s: float = 60.0,
) -> list[int]:
    """Send files to a Storage SCP with C-STORE (pynetdicom), one association for all.

    Presentation contexts: :data:`STORAGE_SOP_CLASSES` (MR, Enhanced MR, Segmentation,
    Comprehensive 3D SR), each with Explicit VR Little Endian and Implicit VR Little Endian. Files are
    sent as stored (their own transfer syntax must be one of these).

    Parameters
    ----------
    files : sequence of str or Path
        DICOM Part 10 files.
    host, port : str, int
        Address of the SCP.
    aet : str
        Called AE title (the SCP's).
    calling_aet : str
        Our AE title.
    timeout_s : float
        Association / DIMSE / network timeouts.

    Returns
    -------
    list of int
        The C-STORE response Status per file, in order (0x0000 = success); -1 if no
        response came back for that file.

    Raises
    ------
    ConnectionError
        If the association is rejected or aborted.
    """
    import pydicom
    from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian
    from pynetdicom import AE
    ae = AE(ae_title=calling_aet)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = timeout_s
    for sop in STORAGE_SOP_CLASSES.values():
        ae.add_requested_context(sop, [ExplicitVRLittleEndian, ImplicitVRLittleEndian])
    assoc = ae.associate(host, port, ae_title=aet)
    if not assoc.is_established:
        raise ConnectionError(
            f"association with {aet}@{host}:{port} failed "
            f"(rejected={assoc.is_rejected}, aborted={assoc.is_aborted})"
        )
    statuses: list[int] = []
    try:
        for f in files:
            ds = pydicom.dcmread(f)
            status = assoc.send_c_store(ds)
            statuses.append(int(status.Status) if status and "Status" in status else -1)
    finally:
        if assoc.is_established:
            assoc.release()
    return statuses
