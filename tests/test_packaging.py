"""The MAP build context: ``bash package.sh --context-only DIR`` runs holoscan-cli's packager
up to (not including) its ``docker build`` call; these tests check what it wrote."""
from __future__ import annotations

import ast
import importlib.metadata
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.conftest import REPO_ROOT

MANIFEST = REPO_ROOT / "packaging" / "holoscan-cli-4.2.0-artifacts.json"
APP_ROOT = "/opt/holoscan/app"
MODELS_ROOT = "/opt/holoscan/models"
LOCAL_PACKAGES = {"app", "operators", "engines"}

# Import name -> distribution in the image where the venv's answer is not the image's
# (CUDA builds) or the module is not installed here (GPU-only runtimes).
IMAGE_DISTRIBUTION = {
    "onnxruntime": "onnxruntime-gpu",
    "tensorrt": "tensorrt-cu13",
    "holoscan": "holoscan-cu13",
    "cuda": "cuda-python",
    "pycuda": "pycuda",
}
# Modules only the Triton server provides: engines/serving/triton_python_model.py is the template of
# the server's model.py (run by Triton's Python backend, never imported in the MAP).
SERVER_SIDE_MODULES = {"triton_python_backend_utils"}


def build_context(models_dir: Path, dest: Path) -> subprocess.CompletedProcess:
    """``bash package.sh -m MODELS --context-only DEST`` (build cache kept under ``dest``)."""
    return subprocess.run(
        ["bash", str(REPO_ROOT / "package.sh"), "-m", str(models_dir), "--context-only", str(dest / "context"),
         "--", "--build-cache", str(dest / "build-cache")],
        cwd=dest, capture_output=True, text=True, timeout=600,
    )


@pytest.fixture(scope="module")
def context(models_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    work = tmp_path_factory.mktemp("map-context")
    proc = build_context(models_dir, work)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    return work / "context"


def _json(path: Path) -> dict:
    return json.loads(path.read_text())


def dockerfile_env(dockerfile: Path) -> dict[str, str]:
    env = {}
    for line in dockerfile.read_text().splitlines():
        m = re.match(r"^ENV (\w+)=(\S*)\s*$", line)
        if m:
            env[m.group(1)] = m.group(2)
    return env


def normalise(dist: str) -> str:
    return re.sub(r"[-_.]+", "-", dist).lower()


def requirement_names(path: Path) -> dict[str, str]:
    """name -> full line, for every requirement line of ``path``."""
    names = {}
    for raw in path.read_text().splitlines():
        line = raw.split("#", 1)[0].strip()
        if line:
            names[normalise(re.split(r"[<>=!~;\[ ]", line, maxsplit=1)[0])] = line
    return names


def imported_modules(folder: Path) -> dict[str, set[str]]:
    """Every absolute import in ``folder``'s Python files (any depth, also inside functions):
    module name -> files importing it; standard library and the app's own packages left out."""
    found: dict[str, set[str]] = {}
    for path in sorted(folder.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if isinstance(node, ast.Import):
                modules = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                modules = [node.module]
            else:
                continue
            for module in modules:
                top = module.split(".")[0]
                if top not in sys.stdlib_module_names and top not in LOCAL_PACKAGES:
                    found.setdefault(module, set()).add(str(path.relative_to(folder)))
    return found


def distribution_of(module: str) -> str | None:
    top = module.split(".")[0]
    if top == "monai":
        return "monai-deploy-app-sdk" if module.startswith("monai.deploy") else "monai"
    if top in IMAGE_DISTRIBUTION:
        return IMAGE_DISTRIBUTION[top]
    dists = importlib.metadata.packages_distributions().get(top, [])
    return normalise(dists[0]) if len(set(dists)) == 1 else None


# -- the context ------------------------------------------------------------------------


def test_context_has_what_the_dockerfile_copies(context: Path) -> None:
    for name in ("Dockerfile", "map/app.json", "map/pkg.json", "app.config", "pip/requirements.txt", "tools",
                 "app/__main__.py", "models"):
        assert (context / name).exists(), f"{name} missing from the build context"
    dockerfile = (context / "Dockerfile").read_text()
    assert f"COPY ./app {APP_ROOT}" in dockerfile
    assert re.search(rf"^COPY ./models\s+{MODELS_ROOT}\s*$", dockerfile, re.M)
    assert "COPY ./app.config /var/holoscan/app.yaml" in dockerfile
    assert 'ENTRYPOINT ["/var/holoscan/tools"]' in dockerfile
    # The recorded (not run) docker build: this context, this Dockerfile, x86_64.
    build = _json(context / "docker-build.json")["build"]
    assert Path(build["context_path"]) == context.resolve()
    assert Path(build["file"]) == (context / "Dockerfile").resolve()
    assert build["platforms"] == ["linux/amd64"]
    assert build["tags"] == ["brats-seg-map-x64-workstation-dgpu-linux-amd64:0.1.0"]


def test_entry_point_runs_the_app_folder(context: Path) -> None:
    app_json = _json(context / "map" / "app.json")
    assert json.loads(app_json["command"]) == ["python3", APP_ROOT]
    assert app_json["sdk"] == "monai-deploy"
    assert app_json["sdkVersion"] == importlib.metadata.version("monai-deploy-app-sdk")
    assert app_json["workingDirectory"] == "/var/holoscan"
    assert app_json["input"]["formats"] == ["file"] and app_json["output"]["formats"] == ["file"]


def test_base_image_comes_from_the_shipped_release_manifest(context: Path) -> None:
    manifest = _json(MANIFEST)
    holoscan_version = importlib.metadata.version("holoscan-cu13")
    assert list(manifest) == [holoscan_version]
    base = manifest[holoscan_version]["holoscan"]["base-images"]["dgpu"]
    assert "cuda:13." in base  # CUDA 13 like holoscan-cu13 and tensorrt-cu13
    assert f"FROM {base} AS base" in (context / "Dockerfile").read_text()
    assert f"LABEL org.nvidia.holoscan=\"{holoscan_version}\"" in (context / "Dockerfile").read_text()


def test_models_are_mapped_to_opt_holoscan_models(context: Path, models_dir: Path) -> None:
    pkg = _json(context / "map" / "pkg.json")
    assert pkg["applicationRoot"] == APP_ROOT
    assert pkg["modelRoot"] == MODELS_ROOT
    assert pkg["models"] == {models_dir.name: f"{MODELS_ROOT}/{models_dir.name}"}
    copied = context / "models" / models_dir.name
    assert sorted(p.name for p in copied.iterdir()) == sorted(p.name for p in models_dir.iterdir())
    assert (copied / "manifest.json").read_bytes() == (models_dir / "manifest.json").read_bytes()
    # The packager nests the model one level down; the app finds it from HOLOSCAN_MODEL_PATH.
    from app.settings import _resolve_model_dir

    assert _resolve_model_dir(context / "models") == copied


def test_environment_variables_of_the_map_contract(context: Path) -> None:
    env = dockerfile_env(context / "Dockerfile")
    expected = {
        "HOLOSCAN_INPUT_PATH": "/var/holoscan/input",
        "HOLOSCAN_OUTPUT_PATH": "/var/holoscan/output",
        "HOLOSCAN_MODEL_PATH": MODELS_ROOT,
        "HOLOSCAN_WORKDIR": "/var/holoscan",
        "HOLOSCAN_APPLICATION": APP_ROOT,
        "HOLOSCAN_CONFIG_PATH": "/var/holoscan/app.yaml",
        "HOLOSCAN_APP_MANIFEST_PATH": "/etc/holoscan/app.json",
        "HOLOSCAN_PKG_MANIFEST_PATH": "/etc/holoscan/pkg.json",
        "HOLOSCAN_LOGS_PATH": "/var/holoscan/logs",
    }
    assert {k: env.get(k) for k in expected} == expected
    app_env = _json(context / "map" / "app.json")["environment"]
    assert set(expected) <= set(app_env)
    assert app_env["HOLOSCAN_MODEL_PATH"] == MODELS_ROOT and app_env["HOLOSCAN_WORKDIR"] == "/var/holoscan"


def test_resources_and_config_come_from_app_yaml(context: Path) -> None:
    config = yaml.safe_load((REPO_ROOT / "app.yaml").read_text())
    resources = _json(context / "map" / "pkg.json")["resources"]
    assert resources == config["resources"]
    assert {"cpu", "gpu", "memory", "gpuMemory"} <= set(resources)
    assert re.fullmatch(r"\d+(Mi|Gi)", resources["memory"]) and re.fullmatch(r"\d+(Mi|Gi)", resources["gpuMemory"])
    # The whole app.yaml (with the app's `brats` settings) is the MAP's HOLOSCAN_CONFIG_PATH file.
    assert (context / "app.config").read_bytes() == (REPO_ROOT / "app.yaml").read_bytes()
    assert set(yaml.safe_load((context / "app.config").read_text())["brats"]) >= {"engine", "selection_rules", "seed"}


def test_app_folder_is_self_contained(context: Path) -> None:
    app = context / "app"
    shipped = sorted(str(p.relative_to(app)) for p in app.rglob("*.py"))
    expected = sorted(
        [str(p.relative_to(REPO_ROOT / "app")) for p in (REPO_ROOT / "app").glob("*.py")]
        + [str(p.relative_to(REPO_ROOT)) for pkg in ("operators", "engines") for p in (REPO_ROOT / pkg).rglob("*.py")
           if "__pycache__" not in p.parts]
    )
    assert shipped == expected
    assert (app / "modality_rules.json").read_bytes() == (REPO_ROOT / "app" / "modality_rules.json").read_bytes()
    assert not list(app.rglob("__pycache__")), "compiled files leaked into the image's app folder"
    assert (app / "requirements.txt").read_bytes() == (REPO_ROOT / "requirements-map.txt").read_bytes()


def test_image_requirements_cover_every_import(context: Path) -> None:
    requirements = requirement_names(context / "pip" / "requirements.txt")
    assert requirements == requirement_names(REPO_ROOT / "requirements-map.txt")
    unpinned = [line for line in requirements.values() if "==" not in line]
    assert unpinned == [], f"unpinned image requirements: {unpinned}"
    unknown, missing = [], []
    for module, files in sorted(imported_modules(context / "app").items()):
        if module in SERVER_SIDE_MODULES:
            assert {Path(f).name for f in files} == {"triton_python_model.py"}, files
            continue
        dist = distribution_of(module)
        if dist is None:
            unknown.append(f"{module} ({sorted(files)[0]})")
        elif normalise(dist) not in requirements:
            missing.append(f"{dist} for 'import {module}' in {sorted(files)[0]}")
    assert unknown == [], f"cannot tell which distribution provides: {unknown} (add it to IMAGE_DISTRIBUTION)"
    assert missing == [], f"requirements-map.txt lacks: {missing}"


def test_image_has_the_tensorrt_builder_and_one_onnxruntime() -> None:
    requirements = requirement_names(REPO_ROOT / "requirements-map.txt")
    assert "tensorrt-cu13" in requirements  # full runtime with the builder, not tensorrt-lean
    assert not any(name.startswith("tensorrt-lean") for name in requirements)
    # onnxruntime and onnxruntime-gpu both install the `onnxruntime` module: only the GPU one.
    assert "onnxruntime-gpu" in requirements and "onnxruntime" not in requirements
    pins = requirement_names(REPO_ROOT / "requirements.txt")
    for name in ("monai-deploy-app-sdk", "holoscan-cu13", "torch", "numpy", "pydicom", "highdicom", "simpleitk"):
        assert requirements[name] == pins[name], f"{name}: image pin differs from requirements.txt"


def test_import_scan_sees_lazy_imports(tmp_path: Path) -> None:
    """The requirement check must also see imports inside functions (engines load lazily)."""
    (tmp_path / "m.py").write_text("import os\nfrom app import x\ndef f():\n    import tensorrt as trt\n")
    assert set(imported_modules(tmp_path)) == {"tensorrt"}
    assert distribution_of("monai.deploy.core") == "monai-deploy-app-sdk"
    assert distribution_of("monai.metrics") == "monai"


def test_package_without_docker_fails_with_one_line(models_dir: Path, tmp_path: Path) -> None:
    if shutil.which("docker") and subprocess.run(["docker", "info"], capture_output=True).returncode == 0:
        pytest.skip("a Docker daemon is reachable here: package.sh would really build the image")
    proc = subprocess.run(["bash", str(REPO_ROOT / "package.sh"), "-m", str(models_dir)],
                          cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("package.sh: error: no Docker daemon reachable"), proc.stderr[-2000:]
