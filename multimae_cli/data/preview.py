"""Picture grids: one row per sample, one column per modality, each drawn by its plugin's `colorize`."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from ..plugin.modality import Modality
from .transforms import resize


def preview_grid(rows: Sequence[Sequence[tuple]], modalities: Mapping[str, Modality],
                 cell: tuple[int, int] | None = None, gap: int = 2, titles: bool = False) -> np.ndarray:
    """A uint8 (H, W, 3) grid of model-space tensors (what `normalize` returns or a model predicts), each
    given as (name, tensor) or (name, tensor, title) and drawn by `modalities[name].colorize`; others are left
    out. A uint8 (H, W, 3) array instead of a tensor is a picture drawn already. `titles` writes the first row's
    titles (else names) above the columns."""
    pictures, names = [], []
    for row in rows:
        line = []
        for name, tensor, *title in row:
            if isinstance(tensor, np.ndarray):
                picture = tensor
            elif modalities[name].colorize is None:
                continue
            else:
                picture = modalities[name].colorize(tensor.detach().float() if tensor.is_floating_point()
                                                    else tensor.detach())
            line.append(picture)
            if len(pictures) == 0:
                names.append(title[0] if title else name)
        pictures.append(line)
    height = cell[0] if cell else max(p.shape[0] for line in pictures for p in line)
    width = cell[1] if cell else max(p.shape[1] for line in pictures for p in line)
    columns = max(len(line) for line in pictures)
    grid = np.full((len(pictures) * (height + gap) - gap, columns * (width + gap) - gap, 3), 255, np.uint8)
    for r, line in enumerate(pictures):
        for c, picture in enumerate(line):
            y, x = r * (height + gap), c * (width + gap)
            grid[y:y + height, x:x + width] = resize(picture, (height, width), "nearest")
    return np.concatenate([_header(names, width, gap, grid.shape[1]), grid]) if titles else grid


def _header(names: Sequence[str], width: int, gap: int, total: int) -> np.ndarray:
    """A white strip with each column's name in black, scaled to fit the column."""
    import cv2

    strip = np.full((22, total, 3), 255, np.uint8)
    for c, name in enumerate(names):
        scale = min(0.5, 0.9 * width / max(1, cv2.getTextSize(name, cv2.FONT_HERSHEY_SIMPLEX, 1.0, 1)[0][0]))
        cv2.putText(strip, name, (c * (width + gap) + 3, 15), cv2.FONT_HERSHEY_SIMPLEX, scale, (0, 0, 0), 1,
                    cv2.LINE_AA)
    return strip
