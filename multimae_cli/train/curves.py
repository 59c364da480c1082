"""`curves.png`: a run's loss curves (total and per modality), learning rate and validation metrics, drawn from
`metrics.jsonl` with OpenCV (no plotting library needed), one panel each."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np

from ..io import write_image

WIDTH, PANEL, MARGIN = 960, 280, (70, 20, 30, 40)  # left, right, top, bottom
COLOURS = [(31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189), (140, 86, 75),
           (227, 119, 194), (127, 127, 127), (188, 189, 34), (23, 190, 207)]  # tab10, RGB


def read_series(path: Path) -> dict[str, list[tuple[int, float]]]:
    """`metrics.jsonl` as `{key: [(step, value), ...]}`, numeric values only (a half-written line skipped)."""
    series: dict[str, list[tuple[int, float]]] = {}
    for line in path.read_text().splitlines() if path.is_file() else []:
        try:
            record = json.loads(line)
        except ValueError:
            continue
        for key, value in record.items():
            if key != "step" and isinstance(value, int | float) and math.isfinite(value):
                series.setdefault(key, []).append((int(record.get("step", 0)), float(value)))
    return series


def panels(series: dict[str, list[tuple[int, float]]]) -> list[tuple[str, dict[str, list[tuple[int, float]]]]]:
    """What goes on which panel: losses, learning rate, then validation and held-out metrics (2+ points each)."""
    groups = [("loss", {k: v for k, v in series.items() if k == "loss" or k.startswith("loss/")}),
              ("learning rate", {k: v for k, v in series.items() if k == "lr"}),
              ("validation", {k: v for k, v in series.items() if k.startswith(("val/", "heldout/"))})]
    return [(title, lines) for title, lines in groups if any(len(points) > 1 for points in lines.values())]


def draw_curves(metrics: Path, out: Path) -> Path | None:
    """Write `out` (PNG) from `metrics` (`metrics.jsonl`); None when there is nothing to draw (fewer than two
    logged steps)."""
    import cv2

    chosen = panels(read_series(metrics))
    if not chosen:
        return None
    canvas = np.full((PANEL * len(chosen), WIDTH, 3), 255, np.uint8)
    steps = [step for _, lines in chosen for points in lines.values() for step, _ in points]
    x_range = (min(steps), max(max(steps), min(steps) + 1))
    for row, (title, lines) in enumerate(chosen):
        _panel(canvas, row * PANEL, title, lines, x_range, cv2)
    write_image(out, canvas)
    return out


def _panel(canvas: np.ndarray, top: int, title: str, lines: dict, x_range: tuple[int, int], cv2) -> None:
    left, right, pad_top, bottom = MARGIN
    x0, x1, y0, y1 = left, WIDTH - right, top + pad_top, top + PANEL - bottom
    values = [v for points in lines.values() for _, v in points]
    low, high = min(values), max(values)
    if high - low < 1e-12:
        low, high = low - 0.5, high + 0.5
    font, grey = cv2.FONT_HERSHEY_SIMPLEX, (90, 90, 90)

    def x_of(step: float) -> int:
        return round(x0 + (step - x_range[0]) / (x_range[1] - x_range[0]) * (x1 - x0))

    def y_of(value: float) -> int:
        return round(y1 - (value - low) / (high - low) * (y1 - y0))

    cv2.rectangle(canvas, (x0, y0), (x1, y1), (200, 200, 200), 1)
    for fraction in (0.0, 0.5, 1.0):
        value, step = low + fraction * (high - low), x_range[0] + fraction * (x_range[1] - x_range[0])
        cv2.putText(canvas, f"{value:.3g}", (4, y_of(value) + 4), font, 0.4, grey, 1, cv2.LINE_AA)
        cv2.putText(canvas, f"{step:.0f}", (x_of(step) - 12, y1 + 16), font, 0.4, grey, 1, cv2.LINE_AA)
    cv2.putText(canvas, title, (x0, y0 - 8), font, 0.5, (0, 0, 0), 1, cv2.LINE_AA)
    cv2.putText(canvas, "step", (x1 - 30, y1 + 32), font, 0.4, grey, 1, cv2.LINE_AA)
    for index, (name, points) in enumerate(sorted(lines.items())):
        colour = COLOURS[index % len(COLOURS)]
        polyline = np.array([(x_of(s), y_of(v)) for s, v in points], np.int32)
        cv2.polylines(canvas, [polyline], False, colour, 2 if name in ("loss", "lr") else 1, cv2.LINE_AA)
        label_y = y0 + 16 + 16 * index
        cv2.line(canvas, (x1 - 190, label_y - 4), (x1 - 170, label_y - 4), colour, 2)
        cv2.putText(canvas, f"{name} {points[-1][1]:.4g}", (x1 - 165, label_y), font, 0.4, (0, 0, 0), 1,
                    cv2.LINE_AA)
