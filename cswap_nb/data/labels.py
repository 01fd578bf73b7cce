"""Label conventions shared by the data sets and the core."""
from __future__ import annotations

IGNORE_INDEX = 255
"""Label of pixels that belong to no class in segmentation masks; scores, metrics and losses skip them
(Cityscapes' convention and the ``ignore_index`` of PyTorch's losses as this project uses them)."""
