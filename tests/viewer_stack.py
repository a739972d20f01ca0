"""The browser viewer stack for tests: OHIF's prebuilt viewer and Orthanc's DICOMweb behind nginx.

Helper module (not collected by pytest), used by ``tests/test_viewer_ohif.py``. Everything is
installed by ``bash scripts/bootstrap.sh --viewer`` (Debian: ``orthanc-dicomweb``, ``nginx-light``,
``chromium``; npm: ``@ohif/app`` unpacked under the git-ignored ``.viewer/``; PyPI:
``requirements-viewer.txt``). A missing piece fails with a message naming its package -- no skip.

One origin, ``http://127.0.0.1:<free port>``, served by an nginx started for the test:

* ``/dicom-web/`` -> Orthanc's DICOMweb plugin (``proxy_pass``, the ``Host`` header kept, so
  the plugin writes BulkDataURIs on the proxy's origin);
* ``/app-config.js`` -> the configuration written here (data source ``dicomweb`` on the proxy);
* everything else -> OHIF's ``dist/`` (``try_files ... /index.html``: its client-side routes).

Every answer carries ``Cross-Origin-Opener-Policy: same-origin`` and
``Cross-Origin-Embedder-Policy: require-corp`` so that the page is cross-origin isolated and
OHIF (cornerstone3D) gets ``SharedArrayBuffer``.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from benchmarks.local_process import free_port, stop

REPO_ROOT = Path(__file__).resolve().parents[1]
BOOTSTRAP = REPO_ROOT / "scripts" / "bootstrap.sh"
INSTALL_HINT = "run `bash scripts/bootstrap.sh --viewer` (test.sh does when the viewer test is selected)"
NGINX = "/usr/sbin/nginx"
CHROMIUM = "/usr/bin/chromium"
MIME_TYPES = "/etc/nginx/mime.types"


class ViewerStackError(RuntimeError):
    """A piece of the viewer stack is missing or did not start."""


def ohif_version() -> str:
    """The pinned ``@ohif/app`` version (``OHIF_VERSION`` in ``scripts/bootstrap.sh``)."""
    match = re.search(r'^OHIF_VERSION="([^"]+)"', BOOTSTRAP.read_text(), re.MULTILINE)
    if not match:
        raise ViewerStackError(f"OHIF_VERSION not found in {BOOTSTRAP}")
    return match.group(1)


def ohif_dist() -> Path:
    """OHIF's unpacked ``dist/`` folder (``.viewer/ohif-app-<version>/dist``).

    Raises
    ------
    ViewerStackError
        Naming the npm package and the install command when it is not there.
    """
    version = ohif_version()
    dist = REPO_ROOT / ".viewer" / f"ohif-app-{version}" / "dist"
    if not (dist / "index.html").is_file():
        raise ViewerStackError(f"OHIF viewer (npm @ohif/app@{version}) not found at {dist}: {INSTALL_HINT}")
    return dist


def require_executable(path: str, package: str) -> str:
    """``path`` if it is an executable file, else :class:`ViewerStackError` naming the Debian package."""
    if not (os.path.isfile(path) and os.access(path, os.X_OK)):
        raise ViewerStackError(f"{path} not found: install the Debian package `{package}` ({INSTALL_HINT})")
    return path


def app_config_js(origin: str, dicomweb_path: str = "/dicom-web") -> str:
    """OHIF's ``app-config.js``: one ``dicomweb`` data source, Orthanc behind the proxy.

    Parameters
    ----------
    origin : str
        ``http://127.0.0.1:<port>``, the proxy's origin (OHIF and DICOMweb on one origin).
    dicomweb_path : str
        The proxy path of Orthanc's DICOMweb root.

    Returns
    -------
    str
        JavaScript setting ``window.config``.
    """
    root = origin + dicomweb_path
    source = {
        "namespace": "@ohif/extension-default.dataSourcesModule.dicomweb",
        "sourceName": "orthanc",
        "configuration": {
            "friendlyName": "Orthanc (viewer test)",
            "name": "orthanc",
            "wadoUriRoot": origin + "/wado",
            "qidoRoot": root,
            "wadoRoot": root,
            "qidoSupportsIncludeField": False,
            "supportsReject": False,
            "imageRendering": "wadors",
            "thumbnailRendering": "wadors",
            "enableStudyLazyLoad": True,
            "supportsFuzzyMatching": False,
            "supportsWildcard": True,
            "staticWado": False,
            "singlepart": "bulkdata,video",
            "bulkDataURI": {"enabled": True},
            "omitQuotationForMultipartRequest": True,
        },
    }
    config = {
        "routerBasename": "/",
        "extensions": [],
        "modes": [],
        "customizationService": {},
        "showStudyList": True,
        "investigationalUseDialog": {"option": "never"},  # its banner would cover the image
        "maxNumberOfWebWorkers": 1,
        "showWarningMessageForCrossOrigin": False,
        "showCPUFallbackMessage": True,
        "showLoadingIndicator": True,
        "strictZSpacingForVolumeViewport": True,
        "maxNumRequests": {"interaction": 100, "thumbnail": 5, "prefetch": 10},
        "showErrorDetails": "always",
        "defaultDataSourceName": "orthanc",
        "dataSources": [source],
    }
    return "window.config = " + json.dumps(config, indent=2) + ";\n"


def nginx_conf(workdir: Path, port: int, dist: Path, orthanc_http_port: int) -> str:
    """The nginx configuration of the one-origin proxy (see the module docstring)."""
    user = "user root;\n" if os.geteuid() == 0 else ""  # workers must read the repo's .viewer/
    tmp = workdir / "tmp"
    return f"""{user}worker_processes 1;
daemon off;
pid {workdir}/nginx.pid;
error_log {workdir}/error.log info;
events {{ worker_connections 512; }}
http {{
  include {MIME_TYPES};
  types {{ application/wasm wasm; }}
  default_type application/octet-stream;
  access_log {workdir}/access.log;
  client_body_temp_path {tmp}/body;
  proxy_temp_path {tmp}/proxy;
  fastcgi_temp_path {tmp}/fastcgi;
  uwsgi_temp_path {tmp}/uwsgi;
  scgi_temp_path {tmp}/scgi;
  client_max_body_size 512m;
  server {{
    listen 127.0.0.1:{port};
    server_name localhost;
    add_header Cross-Origin-Opener-Policy same-origin always;
    add_header Cross-Origin-Embedder-Policy require-corp always;
    add_header Cross-Origin-Resource-Policy same-origin always;
    location /dicom-web/ {{
      proxy_pass http://127.0.0.1:{orthanc_http_port}/dicom-web/;
      proxy_set_header Host $http_host;
      proxy_http_version 1.1;
      proxy_read_timeout 120s;
    }}
    location /wado {{
      proxy_pass http://127.0.0.1:{orthanc_http_port}/wado;
      proxy_set_header Host $http_host;
    }}
    location = /app-config.js {{
      alias {workdir}/app-config.js;
      add_header Cache-Control no-store always;
      add_header Cross-Origin-Opener-Policy same-origin always;
      add_header Cross-Origin-Embedder-Policy require-corp always;
      add_header Cross-Origin-Resource-Policy same-origin always;
    }}
    location / {{
      root {dist};
      try_files $uri $uri/ /index.html;
    }}
  }}
}}
"""


@dataclass
class ViewerProxy:
    """A running nginx serving OHIF and proxying Orthanc's DICOMweb.

    Attributes
    ----------
    origin : str
        ``http://127.0.0.1:<port>``.
    workdir : Path
        Its configuration, ``app-config.js`` and logs.
    process : subprocess.Popen
        The nginx master process.
    """

    origin: str
    workdir: Path
    process: subprocess.Popen[bytes]

    def log_tail(self, n_chars: int = 3000) -> str:
        """The end of nginx's error log."""
        log = self.workdir / "error.log"
        return log.read_text(errors="replace")[-n_chars:] if log.exists() else ""


@contextmanager
def run_viewer_proxy(orthanc_http_port: int, startup_timeout_s: float = 20.0) -> Iterator[ViewerProxy]:
    """Start nginx on a free loopback port in front of OHIF's ``dist/`` and Orthanc.

    Parameters
    ----------
    orthanc_http_port : int
        Orthanc's HTTP port on 127.0.0.1 (with the DICOMweb plugin's root at ``/dicom-web/``).
    startup_timeout_s : float
        How long to wait for ``GET /`` to answer.

    Yields
    ------
    ViewerProxy
        The ready proxy.

    Raises
    ------
    ViewerStackError
        nginx or OHIF missing, or nginx not answering in time (with its error log).
    """
    nginx = require_executable(NGINX, "nginx-light")
    if not os.path.isfile(MIME_TYPES):
        raise ViewerStackError(f"{MIME_TYPES} not found: install the Debian package `nginx-light` ({INSTALL_HINT})")
    dist = ohif_dist()
    workdir = Path(tempfile.mkdtemp(prefix="viewer-proxy-"))
    os.chmod(workdir, 0o755)
    (workdir / "tmp").mkdir()
    port = free_port()
    origin = f"http://127.0.0.1:{port}"
    (workdir / "app-config.js").write_text(app_config_js(origin))
    conf = workdir / "nginx.conf"
    conf.write_text(nginx_conf(workdir, port, dist, orthanc_http_port))
    log = open(workdir / "nginx.out", "ab")  # noqa: SIM115 - closed below
    proc = subprocess.Popen([nginx, "-c", str(conf), "-p", str(workdir)], stdout=log, stderr=subprocess.STDOUT,
                            stdin=subprocess.DEVNULL)
    log.close()
    proxy = ViewerProxy(origin, workdir, proc)
    try:
        t0 = time.monotonic()
        while True:
            if proc.poll() is not None:
                raise ViewerStackError(f"nginx exited with code {proc.returncode}: "
                                       f"{(workdir / 'nginx.out').read_text(errors='replace')[-2000:]} {proxy.log_tail()}")
            try:
                with urllib.request.urlopen(origin + "/app-config.js", timeout=2) as resp:
                    if resp.status == 200:
                        break
            except (urllib.error.URLError, OSError):
                pass
            if time.monotonic() - t0 > startup_timeout_s:
                raise ViewerStackError(f"nginx did not answer on {origin} within {startup_timeout_s:.0f} s: {proxy.log_tail()}")
            time.sleep(0.1)
        yield proxy
    finally:
        stop(proc)
        shutil.rmtree(workdir, ignore_errors=True)
