"""Picture grids: one row per sample, one column per modality, each drawn by its plugin's `colorize`."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import torch

from ..modality import Modality
from .transforms import resize


def preview_grid(rows: Sequence[Sequence[tuple[str, torch.Tensor]]], modalities: Mapping[str, Modality],
                 cell: tuple[int, int] | None = None, gap: int = 2) -> np.ndarray:
    """A uint8 (H, W, 3) grid of model-space tensors (what `normalize` returns or a model predicts), each
    given as (modality name, tensor) and drawn by that modality's `colorize`; others are left out."""
    pictures = []
    for row in rows:
        line = []
        for name, tensor in row:
            colorize = modalities[name].colorize
            if colorize is None:
                continue
            picture = colorize(tensor.detach().float() if tensor.is_floating_point() else tensor.detach())
            line.append(picture)
        pictures.append(line)
    height = cell[0] if cell else max(p.shape[0] for line in pictures for p in line)
    width = cell[1] if cell else max(p.shape[1] for line in pictures for p in line)
    columns = max(len(line) for line in pictures)
    grid = np.full((len(pictures) * (height + gap) - gap, columns * (width + gap) - gap, 3), 255, np.uint8)
    for r, line in enumerate(pictures):
        for c, picture in enumerate(line):
            y, x = r * (height + gap), c * (width + gap)
            grid[y:y + height, x:x + width] = resize(picture, (height, width), "nearest")
    return grid
