"""Entry point: ``python -m app -i <dicom dir> -o <output dir> -m <models dir>`` or
``python3 <app folder>`` with the ``HOLOSCAN_*`` environment variables (MAP contract)."""
import sys
from pathlib import Path

if __package__ in (None, ""):
    # Run as ``python app`` / ``python3 <app folder>``: Python has put the folder itself first
    # on sys.path, where ``app`` would be app.py; its parent must come first so that ``app`` is
    # the package (app/__init__.py then makes operators/ and engines/ importable).
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from app.main import main  # type: ignore[no-redef]
else:
    from .main import main

if __name__ == "__main__":
    sys.exit(main(sys.argv))
