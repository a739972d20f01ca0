"""Generate the MAP build context of ``monai-deploy package`` without Docker.

Usage::

    python scripts/package_context.py --context DIR -- <monai-deploy package arguments>

Runs holoscan-cli's own packager (``holoscan_cli.packager.packager._package_application``)
with two substitutions: its temporary folder is ``DIR`` (kept), and the Docker calls
(``create_and_get_builder``, ``build_docker_image``, ``docker_export_tarball``) are replaced
by a recorder that writes the arguments the packager would have given ``docker buildx
build`` to ``DIR/docker-build.json``. Everything before the build is the packager's code:
argument parsing, the artifact manifest (``--source``), ``map/app.json``, ``map/pkg.json``,
the copies of the app, models and config, ``pip/requirements.txt`` and the ``Dockerfile``.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import sys
from pathlib import Path
from typing import Any


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    return str(value)


def generate_context(context_dir: Path, package_args: list[str]) -> dict[str, Any]:
    """Run the packager into ``context_dir``; return the recorded docker build arguments."""
    from holoscan_cli import __main__ as cli
    from holoscan_cli.packager import container_builder, packager

    context_dir.mkdir(parents=True, exist_ok=True)
    if any(context_dir.iterdir()):
        raise SystemExit(f"error: build context folder {context_dir} is not empty")
    # The SDK is detected from the program name: parse as the `monai-deploy` command does.
    args = cli.parse_args(["monai-deploy", "package", *package_args])
    if args.command != "package":
        raise SystemExit("error: expected 'package' arguments")
    cli.set_up_logging(args.log_level)

    recorded: dict[str, Any] = {}

    @contextlib.contextmanager
    def kept_dir(*_a: Any, **_k: Any):
        yield str(context_dir)

    def create_and_get_builder(name: str) -> str:
        recorded["builder"] = name
        return name

    def build_docker_image(**kwargs: Any) -> None:
        recorded["build"] = _jsonable(kwargs)

    def docker_export_tarball(file: str, tag: str) -> None:
        recorded["export_tarball"] = {"file": file, "tag": tag}

    originals = (
        packager.tempfile.TemporaryDirectory,
        container_builder.create_and_get_builder,
        container_builder.build_docker_image,
        container_builder.docker_export_tarball,
    )
    saved_argv0 = sys.argv[0]
    sys.argv[0] = "monai-deploy"  # detect_sdk() reads the program name, as the CLI does
    packager.tempfile.TemporaryDirectory = kept_dir  # type: ignore[assignment]
    container_builder.create_and_get_builder = create_and_get_builder
    container_builder.build_docker_image = build_docker_image
    container_builder.docker_export_tarball = docker_export_tarball
    try:
        packager._package_application(args)
    finally:
        sys.argv[0] = saved_argv0
        (
            packager.tempfile.TemporaryDirectory,
            container_builder.create_and_get_builder,
            container_builder.build_docker_image,
            container_builder.docker_export_tarball,
        ) = originals
    if "build" not in recorded:
        raise SystemExit("error: the packager stopped before its docker build call")
    (context_dir / "docker-build.json").write_text(json.dumps(recorded, indent=2) + "\n")
    return recorded


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--context", required=True, type=Path, help="folder to write the build context into")
    parser.add_argument("package_args", nargs=argparse.REMAINDER, help="-- then monai-deploy package arguments")
    ns = parser.parse_args(argv)
    rest = ns.package_args[1:] if ns.package_args[:1] == ["--"] else ns.package_args
    recorded = generate_context(ns.context.resolve(), rest)
    print(f"Build context: {ns.context} (docker build skipped; tags {recorded['build'].get('tags')})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
