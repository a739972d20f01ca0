"""The segmentation operator's work (``segment``) without Holoscan: typed errors."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from operators import errors


def test_degenerate_channel_on_the_model_grid_is_a_typed_error(models_dir: Path) -> None:
    """engines.model.cascade.preprocess raises ValueError on a channel without spread: mapped."""
    import logging
    from types import SimpleNamespace

    from operators.segmentation.segment import segment

    blank = SimpleNamespace(volumes=np.zeros((4, 8, 8, 8), dtype=np.float32), available=(True, False, False, False))
    with pytest.raises(errors.DegenerateIntensityError, match="model grid"):
        segment(blank, models_dir, "auto", 0, logging.getLogger("test"))
    constant = SimpleNamespace(volumes=np.full((4, 8, 8, 8), 7.0, dtype=np.float32), available=(True, True, False, False))
    with pytest.raises(errors.DegenerateIntensityError, match="spread"):
        segment(constant, models_dir, "auto", 0, logging.getLogger("test"))
