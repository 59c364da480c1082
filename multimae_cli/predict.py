"""Prediction on files: `multimae predict` as a Python function.

A pretraining checkpoint predicts across modalities through its decoders, as the official demo does: the
given inputs fully visible, the wanted outputs fully masked (or, with `mask_ratio`, the inputs partly masked
for reconstruction pictures). Images of any size and aspect are resized to a patch-aligned size of about the
model's pixel count, predicted, and mapped back to their own size before the modality plugins write them.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import CheckpointError, ConfigError, InputError, MultiMAEError
from .modality import Modality

CHECKPOINT_ENV = "MULTIMAE_CHECKPOINT"
CLASSIFICATION = "classification"
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")


def find_checkpoint(checkpoint: str | Path | None = None, runs_dir: str | Path = "runs") -> Path:
    """The weights file to predict with: `checkpoint` (a file, a checkpoint folder or a run folder), else
    `$MULTIMAE_CHECKPOINT`, else the newest checkpoint of any run under `runs_dir`."""
    source = checkpoint or os.environ.get(CHECKPOINT_ENV)
    if source:
        from .formats import checkpoint_file

        try:
            return checkpoint_file(source)
        except CheckpointError as exc:
            origin = "--checkpoint" if checkpoint else f"${CHECKPOINT_ENV}"
            raise CheckpointError(f"{exc} (from {origin})") from None
    found = sorted(Path(runs_dir).glob("*/*/model.safetensors"), key=lambda p: p.stat().st_mtime)
    found = [p for p in found if p.parent.name in ("last", "best")]
    if not found:
        raise CheckpointError(
            f"no checkpoint: pass --checkpoint FILE, set ${CHECKPOINT_ENV}, or make one under ./{runs_dir} with "
            "`multimae pretrain` (or convert official weights: `multimae import official FILE --out model.safetensors`)"
        )
    return found[-1]


def working_size(height: int, width: int, model_size: tuple[int, int], multiple: int) -> tuple[int, int]:
    """The image's aspect at about the model's pixel count, each side a multiple of the patch size."""
    scale = math.sqrt(model_size[0] * model_size[1] / (height * width))
    return (max(multiple, round(height * scale / multiple) * multiple),
            max(multiple, round(width * scale / multiple) * multiple))


@dataclass
class Prediction:
    """One image's predictions at its own size, in model space (what the decoders output): dense outputs
    (C, H, W) float, label outputs (H, W) class ids. `pictures` are the rows of the demo grid."""

    key: str
    outputs: dict[str, Any]
    pictures: list[tuple[str, Any]] = field(default_factory=list)


class Predictor:
    """A loaded model that maps file-space arrays (what plugins `read`) to predictions."""

    def __init__(self, model, device: str = "auto") -> None:
        from .factory import resolve_modalities
        from .train.pretrain import resolve_device

        self.device = resolve_device(device)
        self.model = model.to(self.device).eval()
        self.config = model.config
        self.task_info: dict[str, Any] | None = getattr(model, "task_info", None)
        self.task = None
        names = None
        if self.task_info is not None:  # a fine-tuned model: its head makes one output
            from .registry import get_registry

            self.task = get_registry().task(self.task_info["task"])
            names = [*self.config.inputs, *([self.task.target] if self.task.target else [])]
        self.modalities: dict[str, Modality] = resolve_modalities(self.config, names=names)

    @classmethod
    def from_checkpoint(cls, checkpoint: str | Path, device: str = "auto") -> Predictor:
        """A pretraining checkpoint (any format `load_model` reads) or a fine-tuned one (`multimae finetune`)."""
        from .formats import load_model, load_task_model, read_task_info

        if read_task_info(checkpoint) is not None:
            return cls(load_task_model(checkpoint), device)
        return cls(load_model(checkpoint), device)

    @property
    def tasks(self) -> list[str]:
        """Outputs this model can write: a fine-tuned model's task (its target modality, or `classification`);
        a pretraining model's outputs whose plugin has a writer (`norm_rgb`-style targets excluded)."""
        if self.task is not None:
            return [self.task.target or CLASSIFICATION]
        return [name for name in self.config.outputs if self.modalities[name].write is not None]

    def default_tasks(self, inputs: Sequence[str], masked: bool) -> list[str]:
        """Every writable output not given as an input; with masking, the inputs' reconstructions too."""
        if self.task is not None:
            return self.tasks
        return [name for name in self.tasks if masked or name not in inputs]

    def check_tasks(self, tasks: Sequence[str]) -> None:
        for name in tasks:
            if self.task is not None and name not in self.tasks:
                raise ConfigError(f"--task {name}: this fine-tuned checkpoint predicts {self.tasks[0]} only")
            if self.task is None and name not in self.config.outputs:
                raise ConfigError(f"--task {name}: this checkpoint cannot predict it "
                                  f"(it predicts: {', '.join(self.tasks) or 'nothing'})")
            if name not in self.tasks:
                raise ConfigError(f"--task {name}: the {name!r} plugin has no writer, so it cannot be saved")

    def check_inputs(self, names: Sequence[str]) -> None:
        unknown = [name for name in names if name not in self.config.inputs]
        if unknown:
            raise ConfigError(f"{', '.join(unknown)}: not an input of this checkpoint "
                              f"(inputs: {', '.join(self.config.inputs)})")

    def prepare(self, sample: Mapping[str, Any], size: tuple[int, int]) -> dict[str, Any]:
        """File-space arrays -> file-space tensors at `size` (each modality by its own resampling)."""
        from .data.transforms import resize, to_tensor

        out = {}
        for name, array in sample.items():
            modality = self.modalities[name]
            array = resize(array, (size[0] // modality.stride, size[1] // modality.stride), modality.interpolation)
            out[name] = to_tensor(array, modality)
        return out

    def __call__(self, samples: Sequence[tuple[str, Mapping[str, Any]]], tasks: Sequence[str],
                 mask_ratio: float = 0.0, seed: int = 0, pictures: bool = False) -> list[Prediction]:
        """Predict `tasks` for samples `(key, {modality: file-space array})` that share one size."""
        import torch
        import torch.nn.functional as F

        from .data.transforms import to_device

        height, width = next(iter(samples[0][1].values())).shape[:2]
        size = working_size(height, width, self.config.image_size, self.config.patch_size)
        prepared = [self.prepare(sample, size) for _, sample in samples]
        inputs = to_device({name: torch.stack([p[name] for p in prepared]) for name in prepared[0]}, self.modalities,
                           self.device)
        if self.task is not None:
            return self._predict_task(samples, inputs, (height, width), pictures)
        total = len(inputs) * (size[0] // self.config.patch_size) * (size[1] // self.config.patch_size)
        visible = max(1, round((1 - mask_ratio) * total))
        with torch.inference_mode(), torch.random.fork_rng(devices=[self.device] if self.device.type == "cuda" else []):
            torch.manual_seed(seed)
            encoded = self.model.encode(inputs, num_encoded_tokens=visible, mask_inputs=mask_ratio > 0)
            outputs = self.model.decode(encoded, tasks)
        results = []
        for i, (key, _) in enumerate(samples):
            predicted = {}
            for name, value in outputs.items():
                value = F.interpolate(value[i:i + 1].float(), size=(height, width), mode="bilinear",
                                      align_corners=False)[0]
                predicted[name] = value.argmax(0) if self.modalities[name].kind == "labels" else value
            row = []
            if pictures:
                row = [(name, inputs[name][i].cpu()) for name in inputs]
                if mask_ratio > 0:
                    drawn = [(f"masked {name}", self._masked_picture(name, inputs[name][i], encoded.masks[name][i],
                                                                     size)) for name in inputs]
                    row += [(title, picture) for title, picture in drawn if picture is not None]
                row += [(name, outputs[name][i].float().cpu()) for name in tasks]
            results.append(Prediction(key, {k: v.cpu() for k, v in predicted.items()}, row))
        return results

    def _predict_task(self, samples, inputs, size: tuple[int, int], pictures: bool) -> list[Prediction]:
        """A fine-tuned head's output per sample: class probabilities, or a map at the image's own size."""
        import torch
        import torch.nn.functional as F

        with torch.inference_mode():
            output = self.model(inputs).float()
        results = []
        for i, (key, _) in enumerate(samples):
            if self.task.target is None:
                results.append(Prediction(key, {CLASSIFICATION: output[i].softmax(0).cpu()}))
                continue
            value = F.interpolate(output[i:i + 1], size=size, mode="bilinear", align_corners=False)[0]
            name = self.task.target
            if self.modalities[name].kind == "labels":
                value = value.argmax(0)
            row = [(n, inputs[n][i].cpu()) for n in inputs] + [(name, output[i].cpu())] if pictures else []
            results.append(Prediction(key, {name: value.cpu()}, row))
        return results

    def _masked_picture(self, name: str, data, mask, size: tuple[int, int]):
        """The input drawn by its plugin, masked patches greyed out (None when it cannot be drawn)."""
        import numpy as np

        colorize = self.modalities[name].colorize
        if colorize is None:
            return None
        picture = colorize(data.cpu()).copy()
        grid = (size[0] // self.config.patch_size, size[1] // self.config.patch_size)
        masked = mask.view(grid).cpu().numpy().astype(bool)
        rows = np.arange(picture.shape[0]) * grid[0] // picture.shape[0]
        cols = np.arange(picture.shape[1]) * grid[1] // picture.shape[1]
        picture[masked[rows[:, None], cols[None, :]]] = 128
        return picture

    def file_array(self, name: str, value):
        """A model-space prediction as the array the modality's `write` takes."""
        modality = self.modalities[name]
        if self.task is not None:  # fine-tuned outputs are in the units loss and metrics saw
            if self.task.to_file is not None:
                return self.task.to_file(value, self.task_info)
            if modality.kind == "labels":
                ids = value.numpy()
                return ids + 1 if self.task_info.get("reduce_zero_label") else ids  # back to the files' ids
            array = value.float().numpy()
            return array[0] if array.shape[0] == 1 else array.transpose(1, 2, 0)
        if modality.kind == "labels":
            return value.numpy()
        array = modality.denormalize(value.unsqueeze(0))[0].float().numpy()
        return array[0] if array.shape[0] == 1 else array.transpose(1, 2, 0)


def list_images(paths: Sequence[str | Path], extensions: Sequence[str]) -> list[tuple[str, Path]]:
    """(key, file) for every given file and every matching file under given folders (key: relative path
    without extension, so outputs mirror the input tree)."""
    found: list[tuple[str, Path]] = []
    for entry in map(Path, paths):
        if entry.is_dir():
            files = sorted(p for p in entry.rglob("*") if p.is_file() and p.suffix.lower() in extensions
                           and not p.name.startswith("."))
            if not files:
                raise InputError(f"{entry}: no image files ({', '.join(extensions)}) in this folder")
            found += [(p.relative_to(entry).with_suffix("").as_posix(), p) for p in files]
        elif entry.is_file():
            found.append((entry.stem, entry))
        else:
            raise InputError(f"{entry}: no such file or folder")
    keys = [key for key, _ in found]
    if len(set(keys)) != len(keys):
        duplicate = next(key for key in keys if keys.count(key) > 1)
        raise InputError(f"{duplicate}: two inputs would write the same outputs; predict them separately")
    return found


def _extra_input(name: str, source: Path, key: str, single: bool, modality: Modality) -> Path:
    if source.is_file():
        if not single:
            raise InputError(f"--input {name}={source}: a single file pairs with a single image; give a folder")
        return source
    if source.is_dir():
        for extension in modality.extensions:
            candidate = source / f"{key}{extension}"
            if candidate.is_file():
                return candidate
        raise InputError(f"--input {name}={source}: no {name} file for {key!r} ({key}.{{"
                         f"{','.join(e.lstrip('.') for e in modality.extensions)}}})")
    raise InputError(f"--input {name}={source}: no such file or folder")


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
    if not 0.0 <= mask_ratio < 1.0:
        raise ConfigError(f"--mask-ratio must lie in [0, 1), got {mask_ratio}")
    if batch_size < 1:
        raise ConfigError(f"--batch-size must be at least 1, got {batch_size}")
    out = Path(out)
    weights = find_checkpoint(checkpoint)
    predictor = Predictor.from_checkpoint(weights, device)
    primary = predictor.config.inputs[0]
    extra = {name: Path(path) for name, path in (extra_inputs or {}).items()}
    predictor.check_inputs([primary, *extra])
    if primary in extra:
        raise ConfigError(f"--input {primary}: the images given are already the {primary} input")
    tasks = list(tasks) if tasks else predictor.default_tasks([primary, *extra], mask_ratio > 0)
    if not tasks:
        raise ConfigError("nothing to predict: every output of this checkpoint is given as an input "
                          "(pass --task, or --mask-ratio for reconstructions)")
    predictor.check_tasks(tasks)
    listed = list_images(images, predictor.modalities[primary].extensions)
    if mask_ratio > 0 and predictor.task is not None:
        raise ConfigError("--mask-ratio: a fine-tuned checkpoint sees its inputs whole; masking is for "
                          "pretraining checkpoints")
    maps = [name for name in tasks if name != CLASSIFICATION]  # written as files by their modality
    single_file = len(listed) == 1 and len(maps) == 1 == len(tasks) and out.suffix.lower() in IMAGE_SUFFIXES
    pictured = [name for name in maps if colorize and _needs_picture(predictor.modalities[name])]
    targets = {key: _targets(out, key, maps, single_file, pictured) for key, _ in listed}
    _check_targets(out, targets, viz, overwrite, manifest=None if single_file else out / "predict.json")
    if not single_file:
        out.mkdir(exist_ok=True)

    started = time.perf_counter()
    written: list[str] = []
    skipped: list[str] = []
    grid_rows: list[list[tuple[str, Any]]] = []
    pending: list[tuple[str, dict[str, Any]]] = []
    classified: dict[str, list[dict[str, Any]]] = {}

    def flush() -> None:
        if not pending:
            return
        for result in predictor(pending, tasks, mask_ratio, seed, pictures=viz is not None):
            for name, value in result.outputs.items():
                if name == CLASSIFICATION:
                    classified[result.key] = _top_classes(value, predictor.task_info.get("classes"))
                    continue
                data_path, color_path = targets[result.key][name]
                predictor.modalities[name].write(data_path, predictor.file_array(name, value))
                written.append(str(data_path))
                if color_path is not None:
                    from .io import write_image

                    write_image(color_path, predictor.modalities[name].colorize(value))
                    written.append(str(color_path))
            if result.pictures:
                grid_rows.append(result.pictures)
        if progress:
            progress(len(pending), len(listed))
        pending.clear()

    for key, path in listed:
        try:
            sample = {primary: predictor.modalities[primary].read(path)}
            for name, source in extra.items():
                sample[name] = predictor.modalities[name].read(
                    _extra_input(name, source, key, len(listed) == 1, predictor.modalities[name]))
            _check_sample(sample, path)
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
    if viz is not None and grid_rows:
        _write_viz(Path(viz), grid_rows, predictor.modalities)
    summary = {
        "checkpoint": str(weights), "tasks": tasks, "images": len(listed) - len(skipped),
        "skipped": len(skipped), "skipped_files": skipped, "outputs": written,
        "seconds": round(time.perf_counter() - started, 3), "device": str(predictor.device),
        **({"classes": classified} if classified else {}),
    }
    if not single_file:
        legend = {name: _legend(predictor.modalities[name]) for name in maps
                  if predictor.modalities[name].kind == "labels"}
        manifest = {**summary, "inputs": [primary, *extra], "legend": legend, "mask_ratio": mask_ratio, "seed": seed}
        from .io import atomic_write_bytes

        atomic_write_bytes(out / "predict.json", json.dumps(manifest, indent=2).encode())
    return summary


def _top_classes(probabilities, names: Sequence[str] | None, k: int = 5) -> list[dict[str, Any]]:
    """The `k` most probable classes, by name when the checkpoint knows the class folders."""
    values, indices = probabilities.topk(min(k, probabilities.numel()))
    return [{"class": names[i] if names else i, "probability": round(float(p), 6)}
            for p, i in zip(values.tolist(), indices.tolist(), strict=True)]


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
    """Refuse before any work: a missing parent folder, or (without `overwrite`) a file that exists."""
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
    for path in paths:
        path.parent.mkdir(parents=True, exist_ok=True)


def _check_sample(sample: Mapping[str, Any], path: Path) -> None:
    import numpy as np

    height, width = next(iter(sample.values())).shape[:2]
    for name, array in sample.items():
        if array.dtype.kind == "f" and not np.isfinite(array).all():
            raise InputError(f"{path}: {name} holds NaN or infinite values")
        h, w = array.shape[:2]
        if abs(h * width - w * height) > max(h, w):
            raise InputError(f"{path}: {name} is {h}x{w}, which does not have the image's aspect ({height}x{width})")


def _legend(modality: Modality) -> list[dict[str, Any]]:
    """Each class id with the colour its pictures use (drawn by the plugin's `colorize`)."""
    import torch

    if modality.colorize is None:
        return []
    colors = modality.colorize(torch.arange(modality.channels).view(1, -1))[0]
    return [{"id": i, "color": [int(c) for c in colors[i]]} for i in range(modality.channels)]


def _write_viz(path: Path, rows: list[list[tuple[str, Any]]], modalities: Mapping[str, Modality]) -> None:
    from .data.preview import preview_grid
    from .io import write_image

    height, width = rows[0][0][1].shape[-2:]
    stride = modalities[rows[0][0][0]].stride
    height, width = height * stride, width * stride
    scale = max(1.0, 160 / max(height, width))
    write_image(path, preview_grid(rows, modalities, cell=(round(height * scale), round(width * scale)), titles=True))
