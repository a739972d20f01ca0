"""What the runner without Holoscan (``app.direct``) needs beyond the GPU image's packages.

The GPU machines have torch, numpy, scipy, scikit-image, Pillow and a few more
(``/work/.library/device/KINDS.md``), and receive at most 64 MiB with the repository. The
runner's import closure, less the standard library and the image's packages, must be exactly
the gap the README names ("From DICOM to SEG on a GPU"): SimpleITK (a 52.7 MB wheel: it does not
fit the carry, so the GPU check's phase 5 is skipped there), pydicom and highdicom (pure Python,
they travel as wheels) and the compressed-pixel decoders pydicom loads. A new dependency
outside the image fails this test; so does SimpleITK leaving the closure (then the README and
the GPU check's skip reason are out of date).
"""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

#: Top-level modules of the GPU image's packages that the runner's closure meets.
GPU_IMAGE_MODULES = {"numpy", "scipy", "PIL", "packaging", "typing_extensions", "requests", "urllib3", "idna",
                     "certifi", "charset_normalizer", "tqdm", "torch", "yaml", "skimage", "matplotlib"}
#: The gap, with what each is.
KNOWN_GAP = {
    "SimpleITK": "52.7 MB wheel: does not fit the 64 MiB carry",
    "pydicom": "pure Python wheel: travels",
    "highdicom": "pure Python wheel: travels",
    "pylibjpeg": "pydicom's decoder plug-in host (pure Python)",
    "openjpeg": "JPEG 2000 decoder (native wheel)",
    "libjpeg": "JPEG decoder (native wheel)",
    "jpeg_ls": "JPEG-LS codec, highdicom's (native wheel)",
    "brotli": "requests' optional decoder (requests works without it)",
}


def test_the_runner_needs_beyond_the_gpu_image_exactly_the_named_gap() -> None:
    script = ("import json, sys, app.direct\n"
              "print(json.dumps(sorted({m.split('.')[0] for m in sys.modules})))")
    proc = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    tops = set(json.loads(proc.stdout.strip().splitlines()[-1]))
    ours = {"app", "operators", "engines"}
    outside = {m for m in tops - set(sys.stdlib_module_names) - ours - GPU_IMAGE_MODULES
               if not m.startswith("_") and m not in ("cython_runtime",) and not m.startswith("swig_runtime")}
    assert outside <= set(KNOWN_GAP), f"not in the GPU image and not named in the README: {sorted(outside - set(KNOWN_GAP))}"
    assert {"SimpleITK", "pydicom", "highdicom"} <= outside  # the README's statement of the gap holds
    assert not {"holoscan", "monai"} & tops  # neither the scheduler nor the Deploy SDK
