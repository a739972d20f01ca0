"""Remote inference engine: the cascade's networks served by a Triton Inference Server.

The cascade (:mod:`engines.model.cascade`) calls :meth:`TritonEngine.run` per batch exactly as it
calls a local engine; each call is one Triton request holding the whole batch ``(N, 4, D, H,
W)``, so the batch statistics the networks normalise with are those of the protocol's batch.
The repository is written by :mod:`engines.serving.triton_repository` (one model per network).

Address (the MONAI Deploy SDK's ``-t`` / ``TRITON_SERVER_NETLOC``)
    ``host:port`` or ``http://host:port``: Triton's HTTP/REST endpoint (port 8000 by default,
    as the SDK's own Triton client uses); ``grpc://host:port``: the gRPC endpoint (8001).

Before use (:meth:`prepare`) the engine checks that the server is live and ready, that every
network is ready, and that the ONNX file each model serves has the SHA-256 recorded in the
local model folder's ``manifest.json`` (config parameter ``onnx_sha256``): a server serving
other weights is refused. Every call has a bounded time: ``connect_timeout_s`` for connecting
and health checks, ``timeout_s`` for one inference. A server that is down, does not answer
in time or fails a request raises :class:`TritonUnavailableError` / :class:`TritonModelError`
with a one-line message; nothing hangs.
"""
from __future__ import annotations

import json
import logging
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import numpy as np

from engines.runtimes.base import INPUT_NAME, OUTPUT_NAME, InferenceEngine

log = logging.getLogger(__name__)

DEFAULT_TIMEOUT_S = 300.0
DEFAULT_CONNECT_TIMEOUT_S = 10.0


class TritonError(RuntimeError):
    """Base class of the remote-inference errors (one-line messages)."""


class TritonUnavailableError(TritonError):
    """The server cannot be reached, is not ready, or did not answer in time."""


class TritonModelError(TritonError):
    """A model is missing, not ready, serves other weights, or failed a request."""


def parse_address(address: str) -> tuple[str, str]:
    """``(protocol, "host:port")`` of a Triton address.

    ``host:port`` and ``http://host:port`` -> HTTP; ``grpc://host:port`` -> gRPC. A missing
    port is Triton's default (8000 HTTP, 8001 gRPC).
    """
    text = address.strip()
    if not text:
        raise ValueError("empty Triton server address")
    if "://" not in text:
        text = "http://" + text
    parts = urlsplit(text)
    if parts.scheme not in ("http", "grpc") or not parts.hostname:
        raise ValueError(f"Triton address must be host:port, http://host:port or grpc://host:port, got {address!r}")
    port = parts.port or (8000 if parts.scheme == "http" else 8001)
    host = parts.hostname if ":" not in parts.hostname else f"[{parts.hostname}]"
    return parts.scheme, f"{host}:{port}"


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text[:300]


class TritonEngine(InferenceEngine):
    """Runs the networks on a Triton server through ``tritonclient`` (HTTP or gRPC).

    Parameters
    ----------
    model_dir
        The local model folder (``manifest.json``): the served models' ``onnx_sha256`` must
        match it. ``None`` skips that check (not for clinical use).
    weights_dir
        Unused (common factory signature).
    url
        Server address, see the module docstring.
    timeout_s
        Upper bound of one inference request (queueing on the server included).
    connect_timeout_s
        Upper bound of connecting and of each health / metadata call.
    """

    name = "triton"

    def __init__(
        self,
        model_dir: Path | None = None,
        weights_dir: Path | None = None,
        url: str = "",
        timeout_s: float = DEFAULT_TIMEOUT_S,
        connect_timeout_s: float = DEFAULT_CONNECT_TIMEOUT_S,
    ) -> None:
        self.address = url
        self.protocol, self.netloc = parse_address(url)
        self.timeout_s = float(timeout_s)
        self.connect_timeout_s = float(connect_timeout_s)
        self.model_dir = Path(model_dir) if model_dir is not None else None
        self._manifest: dict[str, Any] | None = None
        if self.model_dir is not None and (self.model_dir / "manifest.json").is_file():
            self._manifest = json.loads((self.model_dir / "manifest.json").read_text())
        self._clients: dict[str, Any] = {}
        self._server: dict[str, Any] = {}
        self._models: dict[str, dict[str, Any]] = {}
        self.calls = 0
        self.seconds_in_calls = 0.0

    # ------------------------------------------------------------------ client plumbing

    @property
    def url(self) -> str:
        """``http://host:port`` or ``grpc://host:port``."""
        return f"{self.protocol}://{self.netloc}"

    def _connect(self, control: bool) -> Any:
        """The client; with HTTP two of them: control calls time out after
        ``connect_timeout_s``, inferences after ``timeout_s`` (gRPC: per-call deadlines)."""
        key = "control" if control and self.protocol == "http" else "infer"
        if key not in self._clients:
            if self.protocol == "http":
                import tritonclient.http as httpclient

                self._clients[key] = httpclient.InferenceServerClient(
                    self.netloc, connection_timeout=self.connect_timeout_s,
                    network_timeout=self.connect_timeout_s if control else self.timeout_s,
                )
            else:
                import tritonclient.grpc as grpcclient

                self._clients[key] = grpcclient.InferenceServerClient(self.netloc)
        return self._clients[key]

    def _call(self, what: str, fn: str, *args: Any, timeout: float | None = None, **kwargs: Any) -> Any:
        """Call a client method with a bounded time; errors become one-line Triton errors."""
        from tritonclient.utils import InferenceServerException

        client = self._connect(control=timeout is None)
        if self.protocol == "grpc":
            kwargs["client_timeout"] = timeout or self.connect_timeout_s
        t0 = time.perf_counter()
        try:
            return getattr(client, fn)(*args, **kwargs)
        except InferenceServerException as exc:
            status = str(exc.status() or "")
            text = _one_line(exc)
            elapsed = time.perf_counter() - t0
            if "DEADLINE" in status.upper() or "deadline" in text.lower() or "timed out" in text.lower():
                raise TritonUnavailableError(
                    f"Triton server at {self.url} did not answer {what} within {elapsed:.0f} s ({text})"
                ) from None
            if "UNAVAILABLE" in status.upper() or "failed to connect" in text.lower() or "connection" in text.lower():
                raise TritonUnavailableError(f"Triton server at {self.url} unreachable for {what}: {text}") from None
            raise TritonModelError(f"Triton server at {self.url}: {what} failed: {text}") from None
        except TimeoutError as exc:  # gevent / socket timeouts of the HTTP client
            raise TritonUnavailableError(
                f"Triton server at {self.url} did not answer {what} within {time.perf_counter() - t0:.0f} s"
                f" ({type(exc).__name__})"
            ) from None
        except OSError as exc:  # refused, reset, unreachable host, DNS
            raise TritonUnavailableError(
                f"Triton server at {self.url} unreachable for {what}: {type(exc).__name__}: {_one_line(exc)}"
            ) from None
        except Exception as exc:  # noqa: BLE001 - gevent.Timeout and client-library oddities
            name = type(exc).__name__
            if "Timeout" in name:
                raise TritonUnavailableError(
                    f"Triton server at {self.url} did not answer {what} within {time.perf_counter() - t0:.0f} s ({name})"
                ) from None
            raise TritonUnavailableError(f"Triton server at {self.url}: {what} failed: {name}: {_one_line(exc)}") from None

    def _call_json(self, what: str, fn: str, *args: Any) -> dict[str, Any]:
        """A metadata / config / statistics call answered as a dict by both clients (HTTP
        returns JSON; the gRPC client converts its protobuf reply with ``as_json=True``)."""
        return self._call(what, fn, *args, **({"as_json": True} if self.protocol == "grpc" else {}))

    # ------------------------------------------------------------------ InferenceEngine

    def check_server(self) -> dict[str, Any]:
        """Live + ready check and server metadata (version); cached after the first success."""
        if self._server:
            return self._server
        t0 = time.perf_counter()
        if not self._call("a liveness check", "is_server_live"):
            raise TritonUnavailableError(f"Triton server at {self.url} is not live")
        if not self._call("a readiness check", "is_server_ready"):
            raise TritonUnavailableError(f"Triton server at {self.url} is live but not ready (models still loading?)")
        meta = self._call_json("the server metadata", "get_server_metadata")
        self._server = {"name": meta.get("name", ""), "version": meta.get("version", "")}
        log.info("Triton server %s: %s %s, ready (%.2f s)", self.url, self._server["name"], self._server["version"],
                 time.perf_counter() - t0)
        return self._server

    def _model_facts(self, network: str) -> dict[str, Any]:
        if not self._call(f"the readiness of model {network}", "is_model_ready", network):
            raise TritonModelError(f"model {network} is not ready on the Triton server at {self.url}")
        meta = self._call_json(f"the metadata of model {network}", "get_model_metadata", network)
        config = self._call_json(f"the config of model {network}", "get_model_config", network)
        if self.protocol == "grpc":
            config = config.get("config", {})  # gRPC wraps the config in a response message
        params = {k: (v or {}).get("string_value", "") for k, v in (config.get("parameters") or {}).items()}
        facts = {
            "versions": [str(v) for v in meta.get("versions", [])],
            "platform": meta.get("platform") or config.get("backend") or config.get("platform", ""),
            "onnx_sha256": params.get("onnx_sha256", ""),
            "server_runtime": params.get("runtime", ""),
            "max_batch_size": int(config.get("max_batch_size", 0) or 0),
            "dynamic_batching": "dynamic_batching" in config,
        }
        if self._manifest is not None:
            want = self._manifest["networks"][network]["sha256"][f"{network}.onnx"]
            if facts["onnx_sha256"] != want:
                raise TritonModelError(
                    f"model {network} on the Triton server at {self.url} serves ONNX sha256 "
                    f"{facts['onnx_sha256'][:12] or '(none)'}..., the model folder has {want[:12]}...: "
                    "regenerate the server's repository from this model folder"
                )
        return facts

    def prepare(self, networks: Sequence[str]) -> None:
        """Check the server and each network (ready, same weights); idempotent."""
        t0 = time.perf_counter()
        self.check_server()
        todo = [n for n in networks if n not in self._models]
        for n in todo:
            self._models[n] = self._model_facts(n)
        if todo:
            log.info("Triton models ready at %s: %s (%.2f s)", self.url,
                     {n: self._models[n]["versions"] for n in todo}, time.perf_counter() - t0)

    def run(self, network: str, batch: np.ndarray) -> np.ndarray:
        batch = self.check_batch(batch)
        if network not in self._models:
            self.prepare([network])
        facts = self._models[network]
        if facts["max_batch_size"] and batch.shape[0] > facts["max_batch_size"]:
            raise TritonModelError(f"batch of {batch.shape[0]} > max_batch_size {facts['max_batch_size']} of {network}")
        t0 = time.perf_counter()
        if self.protocol == "http":
            import tritonclient.http as client_mod

            binary = {"binary_data": True}  # raw tensor bytes, not JSON lists
        else:
            import tritonclient.grpc as client_mod  # type: ignore[no-redef]

            binary = {}  # gRPC always sends raw bytes
        inp = client_mod.InferInput(INPUT_NAME, list(batch.shape), "FP32")
        inp.set_data_from_numpy(batch, **binary)
        outputs = [client_mod.InferRequestedOutput(OUTPUT_NAME, **binary)]
        result = self._call(f"an inference of {network} {list(batch.shape)}", "infer", network, [inp],
                            outputs=outputs, timeout=self.timeout_s)
        y = result.as_numpy(OUTPUT_NAME)
        want = (batch.shape[0], 2, batch.shape[2] - 8, *batch.shape[3:])
        if y is None or tuple(y.shape) != want or y.dtype != np.float32:
            got = None if y is None else (tuple(y.shape), str(y.dtype))
            raise TritonModelError(f"model {network} on {self.url} returned {got}, expected float32 {want}")
        dt = time.perf_counter() - t0
        self.calls += 1
        self.seconds_in_calls += dt
        log.debug("triton %s %s: %.3f s", network, list(batch.shape), dt)
        return np.ascontiguousarray(y)

    def statistics(self, networks: Sequence[str] | None = None) -> dict[str, dict[str, int]]:
        """Per model, from Triton's statistics extension: ``requests`` (answered),
        ``executions`` (``execute`` calls; fewer than requests = the dynamic batcher handed
        several requests to one call) and ``inference_count`` (batch elements)."""
        out: dict[str, dict[str, int]] = {}
        for n in networks or list(self._models):
            stats = self._call_json(f"the statistics of {n}", "get_inference_statistics", n)
            m = stats["model_stats"][0]
            out[n] = {
                "requests": int(m.get("inference_stats", {}).get("success", {}).get("count", 0)),
                "executions": int(m.get("execution_count", 0)),
                "inference_count": int(m.get("inference_count", 0)),
            }
        return out

    def describe(self) -> dict[str, Any]:
        return {
            "runtime": "triton",
            "inference": "remote",
            "server": self.url,
            "protocol": self.protocol,
            "server_name": self._server.get("name", ""),
            "server_version": self._server.get("version", ""),
            "models": {n: {k: f[k] for k in ("versions", "platform", "onnx_sha256", "server_runtime", "dynamic_batching")}
                       for n, f in sorted(self._models.items())},
            "device": "remote",
            "precision": "fp32",
            "timeout_s": self.timeout_s,
            "connect_timeout_s": self.connect_timeout_s,
            "calls": self.calls,
            "seconds_in_calls": round(self.seconds_in_calls, 3),
        }
