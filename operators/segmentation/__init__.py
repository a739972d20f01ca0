"""The segmentation stage: the cascade on the model grid, the missing-sequence plan (:mod:`.segment`)."""
