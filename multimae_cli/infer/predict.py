"""Prediction on files: `multimae predict` as a Python function.

A pretraining checkpoint predicts across modalities through its decoders, as the official demo does: the
given inputs fully visible, the wanted outputs fully masked (or, with `mask_ratio`, the inputs partly masked
for reconstruction pictures). Images of any size and aspect are resized to a patch-aligned size of about the
model's pixel count, predicted, and mapped back to their own size before the modality plugins write them.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from ..errors import ConfigError, InputError, MultiMAEError
from ..io import atomic_write_bytes, write_image
from ..plugin.modality import Modality
from .inputs import list_images, read_sample
from .predictor import CLASSIFICATION, Predictor, find_checkpoint, top_classes

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")


def predict(
    images: Sequence[str | Path],
    out: str | Path,
    tasks: Sequence[str] | None = None,
    checkpoint: str | Path | None = None,
    extra_inputs: Mapping[str, str | Path] | None = None,
    colorize: bool = False,
    viz: str | Path | None = None,
    mask_ratio: float = 0.0,
    seed: int = 0,
    batch_size: int = 8,
    device: str = "auto",
    overwrite: bool = False,
    skip_bad: bool = False,
    progress: Callable[[int, int], None] | None = None,
) -> dict[str, Any]:
    """Predict `tasks` (default: every output not given as an input) for image files or folders of them.

    `out` is a file when one image and one task are given and it has an image suffix, else a folder that
    receives `<task>/<key>.png` (the dataset layout, so predictions can be trained on) and, with
    `colorize`, `<task>-color/<key>.png` for outputs whose file is not a picture already (depth). Existing
    files are kept unless `overwrite`.
    """
    tasks_given = list(tasks or [])
    if not 0.0 <= mask_ratio < 1.0:
        raise ConfigError(f"--mask-ratio must lie in [0, 1), got {mask_ratio}")
    if batch_size < 1:
        raise ConfigError(f"--batch-size must be at least 1, got {batch_size}")
    out, weights = Path(out), find_checkpoint(checkpoint)
    predictor = Predictor.from_checkpoint(weights, device)
    primary = predictor.config.inputs[0]
    extra = {name: Path(path) for name, path in (extra_inputs or {}).items()}
    listed = list_images(images, predictor.modalities[primary].extensions)
    single_file = out.suffix.lower() in IMAGE_SUFFIXES
    tasks = _tasks(predictor, primary, extra, tasks, mask_ratio)
    if single_file:
        tasks = _file_task(out, tasks, len(listed), explicit=bool(tasks_given))
    maps = [name for name in tasks if name != CLASSIFICATION]  # written as files by their modality
    pictured = [name for name in maps if colorize and _needs_picture(predictor.modalities[name])]
    targets = {key: _targets(out, key, maps, single_file, pictured) for key, _ in listed}
    _check_targets(out, targets, viz, overwrite, manifest=None if single_file else out / "predict.json")

    started = time.perf_counter()
    writer = _Writer(predictor, targets)
    skipped: list[str] = []
    pending: list[tuple[str, dict[str, Any]]] = []

    def flush() -> None:
        if pending:
            writer.write(predictor(pending, tasks, mask_ratio, seed, pictures=viz is not None))
            if progress:
                progress(len(pending), len(listed))
            pending.clear()

    for key, path in listed:
        try:
            sample = read_sample(predictor.modalities, primary, extra, key, path, single=len(listed) == 1)
        except MultiMAEError as exc:
            if not skip_bad:
                raise
            skipped.append(f"{exc}")
            if progress:
                progress(1, len(listed))
            continue
        shape = next(iter(sample.values())).shape[:2]
        if pending and (len(pending) >= batch_size or next(iter(pending[-1][1].values())).shape[:2] != shape):
            flush()
        pending.append((key, sample))
    flush()
    if viz is not None and writer.grid_rows:
        Path(viz).parent.mkdir(parents=True, exist_ok=True)
        _write_viz(Path(viz), writer.grid_rows, predictor.modalities)
    summary = {
        "checkpoint": str(weights), "tasks": tasks, "images": len(listed) - len(skipped),
        "skipped": len(skipped), "skipped_files": skipped, "outputs": writer.written,
        "seconds": round(time.perf_counter() - started, 3), "device": str(predictor.device),
        **({"classes": writer.classified} if writer.classified else {}),
    }
    if not single_file:
        legend = {name: _legend(predictor.modalities[name]) for name in maps
                  if predictor.modalities[name].kind == "labels"}
        manifest = {**summary, "inputs": [primary, *extra], "legend": legend, "mask_ratio": mask_ratio, "seed": seed}
        out.mkdir(exist_ok=True)
        atomic_write_bytes(out / "predict.json", json.dumps(manifest, indent=2).encode())
    return summary


def _tasks(predictor: Predictor, primary: str, extra: Mapping[str, Path], tasks: Sequence[str] | None,
           mask_ratio: float) -> list[str]:
    """The outputs to predict, checked against the checkpoint and the inputs given."""
    predictor.check_inputs([primary, *extra])
    if primary in extra:
        raise ConfigError(f"--input {primary}: the images given are already the {primary} input")
    tasks = list(tasks) if tasks else predictor.default_tasks([primary, *extra], mask_ratio > 0)
    if not tasks:
        raise ConfigError("nothing to predict: every output of this checkpoint is given as an input "
                          "(pass --task, or --mask-ratio for reconstructions)")
    predictor.check_tasks(tasks)
    if mask_ratio > 0 and predictor.task is not None:
        raise ConfigError("--mask-ratio: a fine-tuned checkpoint sees its inputs whole; masking is for "
                          "pretraining checkpoints")
    return tasks


def _file_task(out: Path, tasks: list[str], images: int, explicit: bool) -> list[str]:
    """`--out NAME.png` writes one file: one image, one output (`--task`, else the one the file's stem names, else
    the only one); anything else is one line saying what to pass."""
    if images != 1:
        raise ConfigError(f"--out {out}: names one file, but {images} images are given; give a folder")
    if CLASSIFICATION in tasks:
        raise ConfigError(f"--out {out}: a classification has no picture; give a folder (or --json)")
    if len(tasks) == 1:
        return tasks
    if not explicit and out.stem in tasks:
        return [out.stem]
    raise ConfigError(f"--out {out}: names one file, but this would write {', '.join(tasks)}; pass --task "
                      f"{tasks[0]} (or name the file after one: {tasks[0]}{out.suffix}), or give a folder")


class _Writer:
    """Writes each prediction where `targets` says (and its colour picture), keeping what was written, the
    classification results and the rows of the `--viz` grid."""

    def __init__(self, predictor: Predictor, targets: Mapping[str, Mapping[str, tuple[Path, Path | None]]]) -> None:
        self.predictor, self.targets = predictor, targets
        self.written: list[str] = []
        self.classified: dict[str, list[dict[str, Any]]] = {}
        self.grid_rows: list[list[tuple[str, Any]]] = []

    def write(self, results) -> None:
        modalities = self.predictor.modalities
        for result in results:
            for name, value in result.outputs.items():
                if name == CLASSIFICATION:
                    self.classified[result.key] = top_classes(value, self.predictor.task_info.get("classes"))
                    continue
                data_path, color_path = self.targets[result.key][name]
                data_path.parent.mkdir(parents=True, exist_ok=True)  # made as needed: a failed run leaves no folders
                modalities[name].write(data_path, self.predictor.file_array(name, value))
                self.written.append(str(data_path))
                if color_path is not None:
                    color_path.parent.mkdir(parents=True, exist_ok=True)
                    write_image(color_path, modalities[name].colorize(value))
                    self.written.append(str(color_path))
            if result.pictures:
                self.grid_rows.append(result.pictures)


def _needs_picture(modality: Modality) -> bool:
    """Whether `--colorize` adds anything: 3-channel files and palette PNGs are pictures already."""
    return modality.colorize is not None and modality.channels != 3 and not (
        modality.kind == "labels" and modality.channels <= 256)


def _targets(out: Path, key: str, tasks: Sequence[str], single_file: bool, pictured: Sequence[str]):
    """(data file, colour picture or None) per task."""
    if single_file:
        return {tasks[0]: (out, out.with_name(f"{out.stem}.color.png") if tasks[0] in pictured else None)}
    return {name: (out / name / f"{key}.png", out / f"{name}-color" / f"{key}.png" if name in pictured else None)
            for name in tasks}


def _check_targets(out: Path, targets: dict, viz, overwrite: bool, manifest: Path | None) -> None:
    """Refuse before any work (and before making any folder): a missing parent folder, or (without `overwrite`)
    a file that exists."""
    parent = out.parent
    if not parent.is_dir():
        raise InputError(f"--out {out}: folder {parent} does not exist")
    if viz is not None and not (Path(viz).parent.is_dir() or Path(viz).parent.resolve() == out.resolve()):
        raise InputError(f"--viz {viz}: folder {Path(viz).parent} does not exist")
    paths = [p for per_task in targets.values() for pair in per_task.values() for p in pair if p is not None]
    paths += [p for p in (Path(viz) if viz is not None else None, manifest) if p is not None]
    if not overwrite:
        existing = next((p for p in paths if p.exists()), None)
        if existing is not None:
            raise InputError(f"{existing}: already exists (pass --overwrite to replace it)")


def _legend(modality: Modality) -> list[dict[str, Any]]:
    """Each class id with the colour its pictures use (drawn by the plugin's `colorize`)."""
    import torch

    if modality.colorize is None:
        return []
    colors = modality.colorize(torch.arange(modality.channels).view(1, -1))[0]
    return [{"id": i, "color": [int(c) for c in colors[i]]} for i in range(modality.channels)]


def _write_viz(path: Path, rows: list[list[tuple[str, Any]]], modalities: Mapping[str, Modality]) -> None:
    from ..data.preview import preview_grid

    height, width = rows[0][0][1].shape[-2:]
    stride = modalities[rows[0][0][0]].stride
    height, width = height * stride, width * stride
    scale = max(1.0, 160 / max(height, width))
    write_image(path, preview_grid(rows, modalities, cell=(round(height * scale), round(width * scale)), titles=True))
