"""Application settings: paths from the MAP contract, behaviour from ``app.yaml`` / env.

Precedence (highest first):

* paths: command line (``-i/-o/-m/-w``), then the ``HOLOSCAN_*`` environment variables
  (both resolved by the SDK's ``AppContext``);
* behaviour (engine, selection rules, seed, thresholds): ``BRATS_*`` environment variables,
  then the ``brats:`` section of ``app.yaml``, then the defaults below.

``app.yaml`` is the file ``monai-deploy package -c`` ships as ``/var/holoscan/app.yaml``
(``HOLOSCAN_CONFIG_PATH`` in the MAP). It is read through the SDK's config mechanism
(``Fragment.config(path)`` + ``Fragment.kwargs("brats")``) when the application passes
itself to :meth:`AppSettings.from_context`, else with PyYAML (same file, same section).
Where no ``HOLOSCAN_CONFIG_PATH`` is set, ``<app folder>/app.yaml`` and then the repository's
``app.yaml`` are used. A relative ``selection_rules`` in ``app.yaml`` is relative to the
app folder (the rules file ships inside it).
"""
from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from engines.model.cascade import PostProcessing
from operators.spatial.methods import AUTO, BrainExtraction, RegistrationBackend

APP_DIR = Path(__file__).resolve().parent

CONFIG_SECTION = "brats"
"""The section of ``app.yaml`` holding the app's own settings."""

DEFAULTS: dict[str, Any] = {
    "engine": "auto",
    "selection_rules": "modality_rules.json",
    "seed": 0,
    # Remote inference (``-t`` / TRITON_SERVER_NETLOC): upper bound of one request to the
    # Triton server, seconds (queueing on the server included); never waits longer.
    "triton_timeout_s": 300,
    "thresholds": {
        # Post-processing of the cascade (Wang et al.): whole-tumour components of at most
        # this many voxels are dropped (the largest is always kept) ...
        "wt_component_voxels": PostProcessing.wt_component_voxels,
        # ... and an enhancing-tumour label with fewer voxels than this (but > 0) is dropped.
        "min_enhancing_voxels": PostProcessing.min_enhancing_voxels,
    },
    # Brain extraction of a study that is not already skull-stripped
    # (operators.spatial.skull_stripped decides): "hd-bet" (HD-BET, fast mode on a CPU,
    # accurate mode on a CUDA GPU; the template method if HD-BET fails at run time) or
    # "template" (MNI152 template registration only).
    "brain_extraction": "hd-bet",
    # Rigid registration backend: "auto" (PyTorch on a CUDA GPU, else SimpleITK on the CPU),
    # "simpleitk", "torch-cuda" or "torch-cpu" (operators.spatial.registration_torch).
    "registration": "auto",
    "missing": {
        # A region (WT / TC / ET) whose expected held-out Dice with the sequences found is below
        # 0.70 is not written into the SEG (listed in report.json with why); a study with no
        # region at the bar is refused (exit 2). true: write every region, flagged (research).
        "write_unreliable_regions": False,
    },
    "send": {
        # After a run, C-STORE the SEG and the SR to this PACS: "AE_TITLE@host:port" ("" = off).
        "dimse": "",
        # Upper bound of every wait of the send (connect, association, each response), seconds.
        "timeout_s": 30,
    },
}
#: Sections of app.yaml's ``brats:`` that are mappings of their own.
NESTED_SECTIONS = ("thresholds", "missing", "send")

#: ``BRATS_*`` environment variable -> (section key, key inside a nested section or None).
ENV_OVERRIDES: dict[str, tuple[str, str | None]] = {
    "BRATS_ENGINE": ("engine", None),
    "BRATS_SELECTION_RULES": ("selection_rules", None),
    "BRATS_SEED": ("seed", None),
    "BRATS_TRITON_TIMEOUT_S": ("triton_timeout_s", None),
    "BRATS_WT_COMPONENT_VOXELS": ("thresholds", "wt_component_voxels"),
    "BRATS_MIN_ENHANCING_VOXELS": ("thresholds", "min_enhancing_voxels"),
    "BRATS_BRAIN_EXTRACTION": ("brain_extraction", None),
    "BRATS_REGISTRATION": ("registration", None),
    "BRATS_MISSING_WRITE_UNRELIABLE_REGIONS": ("missing", "write_unreliable_regions"),
    "BRATS_SEND_DIMSE": ("send", "dimse"),
    "BRATS_SEND_TIMEOUT_S": ("send", "timeout_s"),
}

REGISTRATION_BACKENDS: tuple[str, ...] = (AUTO, *RegistrationBackend)
"""Values of ``brats.registration`` / ``BRATS_REGISTRATION``."""

BRAIN_EXTRACTION_METHODS: tuple[BrainExtraction, ...] = tuple(BrainExtraction)
"""Values of ``brats.brain_extraction`` / ``BRATS_BRAIN_EXTRACTION``."""

ENGINE_CACHE_DIRNAME = "engine-cache"
"""Sub-folder of the work dir (``HOLOSCAN_WORKDIR``) for engines built on the target GPU."""


class SettingsError(ValueError):
    """``app.yaml`` or a ``BRATS_*`` variable is invalid (one-line message)."""


def find_config_file() -> Path | None:
    """The ``app.yaml`` in force: ``$HOLOSCAN_CONFIG_PATH``, else the app folder's, else the repo's.

    A ``HOLOSCAN_CONFIG_PATH`` that names no file is an error, not a silent fallback.
    """
    env = os.environ.get("HOLOSCAN_CONFIG_PATH")
    if env:
        path = Path(env)
        if not path.is_file():
            raise SettingsError(f"HOLOSCAN_CONFIG_PATH={env} is not a file")
        return path
    for candidate in (APP_DIR / "app.yaml", APP_DIR.parent / "app.yaml"):
        if candidate.is_file():
            return candidate
    return None


def read_config_section(path: Path | None, fragment: Any = None) -> dict[str, Any]:
    """The ``brats:`` section of ``path`` (empty when there is no file or no section).

    With ``fragment`` (a Holoscan ``Application``/``Fragment``) the SDK reads the file:
    ``fragment.config(path)`` then ``fragment.kwargs("brats")``.
    """
    if path is None:
        return {}
    if fragment is not None:
        fragment.config(str(path))
        if CONFIG_SECTION not in set(fragment.config_keys()):
            return {}
        section = fragment.kwargs(CONFIG_SECTION)
    else:
        import yaml

        try:
            data = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as exc:
            raise SettingsError(f"{path} is not valid YAML: {' '.join(str(exc).split())}") from exc
        section = data.get(CONFIG_SECTION) or {}
    if not isinstance(section, dict):
        raise SettingsError(f"{path}: '{CONFIG_SECTION}' must be a mapping")
    return dict(section)


def _merge(section: dict[str, Any], origin: str) -> dict[str, Any]:
    merged = {**DEFAULTS, **{k: dict(DEFAULTS[k]) for k in NESTED_SECTIONS}}
    for key, value in section.items():
        if key not in DEFAULTS:
            raise SettingsError(f"{origin}: unknown setting '{CONFIG_SECTION}.{key}' (known: {', '.join(DEFAULTS)})")
        if key in NESTED_SECTIONS:
            if not isinstance(value, dict):
                raise SettingsError(f"{origin}: '{CONFIG_SECTION}.{key}' must be a mapping")
            for tkey, tvalue in value.items():
                if tkey not in DEFAULTS[key]:
                    what = "threshold" if key == "thresholds" else f"'{key}' setting"
                    raise SettingsError(f"{origin}: unknown {what} '{tkey}' (known: {', '.join(DEFAULTS[key])})")
                merged[key][tkey] = tvalue
        else:
            merged[key] = value
    return merged


def _as_int(value: Any, what: str, minimum: int = 0) -> int:
    try:
        number = int(str(value).strip())
    except ValueError:
        raise SettingsError(f"{what} must be an integer, got {value!r}") from None
    if number < minimum:
        raise SettingsError(f"{what} must be >= {minimum}, got {number}")
    return number


def _as_bool(value: Any, what: str) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("true", "yes", "on", "1"):
        return True
    if text in ("false", "no", "off", "0", ""):
        return False
    raise SettingsError(f"{what} must be true or false, got {value!r}")


def _resolve_model_dir(path: Path) -> Path:
    """The model folder: ``path`` itself, or its only sub-folder holding a ``manifest.json``.

    ``monai-deploy package -m <models folder>`` puts each model in its own sub-folder of
    ``/opt/holoscan/models`` (``HOLOSCAN_MODEL_PATH``); ``-m`` on a workstation names the
    model folder itself. Both work.
    """
    if (path / "manifest.json").is_file() or not path.is_dir():
        return path
    subfolders = [p for p in sorted(path.iterdir()) if (p / "manifest.json").is_file()]
    return subfolders[0] if len(subfolders) == 1 else path


def behaviour_settings(fragment: Any = None) -> dict[str, Any]:
    """Engine, rules path, seed and thresholds after ``app.yaml`` and ``BRATS_*`` overrides."""
    config_path = find_config_file()
    merged = _merge(read_config_section(config_path, fragment), str(config_path))
    env_set: set[str] = set()
    for var, (key, tkey) in ENV_OVERRIDES.items():
        if var in os.environ:
            env_set.add(key if tkey is None else f"{key}.{tkey}")
            if tkey is None:
                merged[key] = os.environ[var]
            else:
                merged[key][tkey] = os.environ[var]
    rules = Path(str(merged["selection_rules"]))
    if not rules.is_absolute() and "selection_rules" not in env_set:
        rules = APP_DIR / rules  # app.yaml / default: relative to the app folder
    engine = str(merged["engine"]).strip()
    if not engine:
        raise SettingsError("engine must not be empty (use 'auto')")
    thresholds, send = merged["thresholds"], merged["send"]
    brain_extraction = str(merged["brain_extraction"]).strip().lower()
    if brain_extraction not in BRAIN_EXTRACTION_METHODS:
        raise SettingsError(f"brain_extraction must be one of {', '.join(BRAIN_EXTRACTION_METHODS)}, "
                            f"got {merged['brain_extraction']!r}")
    registration = str(merged["registration"]).strip().lower()
    if registration not in REGISTRATION_BACKENDS:
        raise SettingsError(f"registration must be one of {', '.join(REGISTRATION_BACKENDS)}, "
                            f"got {merged['registration']!r}")
    send_dimse = str(send["dimse"] or "").strip()
    if send_dimse:
        from operators.outputs.send import parse_destination

        try:
            send_dimse = parse_destination(send_dimse).text()
        except ValueError as exc:
            raise SettingsError(f"send.dimse: {exc}") from None
    return {
        "config_path": config_path,
        "rules_path": rules,
        "engine": engine,
        "seed": _as_int(merged["seed"], "seed"),
        "triton_timeout_s": _as_int(merged["triton_timeout_s"], "triton_timeout_s", minimum=1),
        "wt_component_voxels": _as_int(thresholds["wt_component_voxels"], "thresholds.wt_component_voxels"),
        "min_enhancing_voxels": _as_int(thresholds["min_enhancing_voxels"], "thresholds.min_enhancing_voxels"),
        "brain_extraction": BrainExtraction(brain_extraction),
        "registration": registration,
        "send_dimse": send_dimse,
        "send_timeout_s": _as_int(send["timeout_s"], "send.timeout_s", minimum=1),
        "write_unreliable_regions": _as_bool(merged["missing"]["write_unreliable_regions"],
                                             "missing.write_unreliable_regions"),
    }


@dataclass(frozen=True)
class AppSettings:
    input_dir: Path
    output_dir: Path
    model_dir: Path
    work_dir: Path
    rules_path: Path
    engine: str
    seed: int
    triton_server: str
    triton_timeout_s: int = DEFAULTS["triton_timeout_s"]
    wt_component_voxels: int = DEFAULTS["thresholds"]["wt_component_voxels"]
    min_enhancing_voxels: int = DEFAULTS["thresholds"]["min_enhancing_voxels"]
    send_dimse: str = ""
    send_timeout_s: int = DEFAULTS["send"]["timeout_s"]
    brain_extraction: BrainExtraction = BrainExtraction(DEFAULTS["brain_extraction"])
    registration: str = DEFAULTS["registration"]
    write_unreliable_regions: bool = DEFAULTS["missing"]["write_unreliable_regions"]
    config_path: Path | None = None

    @property
    def post_processing(self) -> PostProcessing:
        """The cascade's size rules from ``brats.thresholds``."""
        return PostProcessing(self.wt_component_voxels, self.min_enhancing_voxels)

    @property
    def engine_cache_dir(self) -> Path:
        """Where engines built on this GPU are kept (``<HOLOSCAN_WORKDIR>/engine-cache``)."""
        return self.work_dir / ENGINE_CACHE_DIRNAME

    @classmethod
    def from_context(cls, app_context: Any, fragment: Any = None) -> "AppSettings":
        """Settings for one run. Pass the application as ``fragment`` to read ``app.yaml``
        through the SDK (``Application.config`` / ``kwargs``)."""
        work = app_context.workdir or os.environ.get("HOLOSCAN_WORKDIR") or ""
        output_dir = Path(app_context.output_path).resolve()
        behaviour = behaviour_settings(fragment)
        return cls(
            input_dir=Path(app_context.input_path).resolve(),
            output_dir=output_dir,
            model_dir=_resolve_model_dir(Path(app_context.model_path).resolve()),
            work_dir=Path(work).resolve() if work else output_dir.parent / ".brats_workdir",
            triton_server=app_context.triton_server_netloc or "",
            **behaviour,
        )

    def describe(self) -> dict[str, str]:
        return {k: str(v) for k, v in asdict(self).items()}
