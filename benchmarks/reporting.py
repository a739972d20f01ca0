"""What every benchmark writes: ``<name>.json`` (the numbers) and ``<name>.md`` (the table a person
reads), side by side in its output folder, and the table printed."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

__all__ = ["find_key", "write_result"]


def write_result(out_dir: Path, name: str, result: dict[str, Any], markdown: str) -> None:
    """Write ``out_dir/name.json`` and ``out_dir/name.md`` (creating the folder) and print the table."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / f"{name}.json").write_text(json.dumps(result, indent=2) + "\n")
    (out_dir / f"{name}.md").write_text(markdown)
    print(markdown)


def find_key(obj: Any, key: str) -> Any:
    """The first value under ``key`` anywhere in a nested JSON object (a report), depth first;
    None when absent."""
    if isinstance(obj, dict):
        if key in obj:
            return obj[key]
        obj = list(obj.values())
    if isinstance(obj, list):
        for v in obj:
            found = find_key(v, key)
            if found is not None:
                return found
    return None
