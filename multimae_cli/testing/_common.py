"""What the conformance checks share: one-line failures, the tiny model's sizes and the sample makers."""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ..plugin.modality import Modality
from ..plugin.registry import Registry, get_registry
from ..plugin.task import Task
from ..plugin.teacher import Teacher

INTERPOLATIONS = ("nearest", "linear", "cubic", "area")
IMAGE_SIZE = 32  # the tiny model's input size: 2 x 2 tokens of 16 px
PATCH_SIZE = 16
DIM = 64
SAMPLE_SIZE = (48, 64)  # file-space samples: not square, so a transposed array is caught


def _fail(what: str, problem: str) -> None:
    raise AssertionError(f"{what}: {problem}")


def _check(condition: bool, what: str, problem: str) -> None:
    if not condition:
        _fail(what, problem)


def _call(what: str, step: str, function: Callable[..., Any], *args: Any) -> Any:
    """`function(*args)`, turning an exception into one line that says which step of the plugin raised."""
    try:
        return function(*args)
    except AssertionError:
        raise
    except Exception as exc:
        _fail(what, f"{step} raised {type(exc).__name__}: {exc}")


def registered_modality(name: str, registry: Registry | None = None) -> Modality:
    """The modality `name` as discovered through the entry points (what `multimae` itself would use)."""
    modalities = (registry or get_registry()).modalities()
    _check(name in modalities, f"modality {name!r}",
           f"not registered (registered: {', '.join(sorted(modalities)) or 'none'}); is the plugin installed?")
    return modalities[name]


def registered_task(name: str, registry: Registry | None = None) -> Task:
    """The task `name` as discovered through the entry points."""
    tasks = (registry or get_registry()).tasks()
    _check(name in tasks, f"task {name!r}",
           f"not registered (registered: {', '.join(sorted(tasks)) or 'none'}); is the plugin installed?")
    return tasks[name]


def registered_teacher(name: str, registry: Registry | None = None) -> Teacher:
    """The teacher `name` as discovered through the entry points."""
    teachers = (registry or get_registry()).teachers()
    _check(name in teachers, f"teacher {name!r}",
           f"not registered (registered: {', '.join(sorted(teachers)) or 'none'}); is the plugin installed?")
    return teachers[name]


def _check_layout(modality: Modality, what: str, array: np.ndarray, name: str) -> None:
    """The file-space layout the transforms take: (H, W) labels or single channels, else (H, W, C)."""
    if modality.kind == "labels":
        _check(array.ndim == 2 and array.dtype.kind in "iu", what,
               f"{name} must be an (H, W) integer label map, got {array.dtype} of shape {array.shape}")
        _check(array.size == 0 or 0 <= array.min() <= array.max() < modality.channels, what,
               f"{name} holds class ids outside [0, {modality.channels - 1}]")
        return
    fits = (array.ndim == 2 and modality.channels == 1) or (array.ndim == 3 and array.shape[2] == modality.channels)
    _check(fits, what, f"{name} has shape {array.shape}, expected (H, W, {modality.channels})"
                       + (" or (H, W)" if modality.channels == 1 else "") + f" for channels={modality.channels}")


def _check_grads(module: nn.Module, what: str, name: str) -> None:
    trainable = [(key, p) for key, p in module.named_parameters() if p.requires_grad]
    _check(bool(trainable), what, f"its {name} has no trainable parameter")
    for key, parameter in trainable:
        _check(parameter.grad is None or bool(torch.isfinite(parameter.grad).all()), what,
               f"its {name}'s {key} gets a NaN or inf gradient")
    _check(any(p.grad is not None and bool(p.grad.abs().sum() > 0) for _, p in trainable), what,
           f"no gradient reaches its {name} in a training step")


# ---------------------------------------------------------------- samples


def _pattern(channels: int, height: int, width: int, seed: int) -> torch.Tensor:
    """A smooth, left-right asymmetric model-space pattern (C, H, W) in about [-2, 2]."""
    generator = torch.Generator().manual_seed(seed)
    rows = torch.linspace(-1, 1, height).view(1, -1, 1)
    cols = torch.linspace(-1, 1, width).view(1, 1, -1)
    phase = torch.rand(channels, 1, 1, generator=generator) * 6.28
    waves = torch.sin(3 * cols + 2 * rows + phase) + 0.5 * torch.cos(5 * rows * cols + phase)
    return waves + 0.7 * cols + 0.05 * torch.randn(channels, height, width, generator=generator)


def _labels(classes: int, height: int, width: int, seed: int) -> torch.Tensor:
    """(H, W) int64 class ids in blocks, every class id reachable, asymmetric."""
    generator = torch.Generator().manual_seed(seed)
    rows = torch.arange(height).view(-1, 1) // 3
    cols = torch.arange(width).view(1, -1) // 4
    return (rows * 7 + cols * cols + torch.randint(0, classes, (1,), generator=generator)) % classes


def file_array(modality: Modality, value: torch.Tensor) -> np.ndarray:
    """A model-space (C, H, W) tensor (labels: (H, W) ids) as the array the modality's `write` takes, exactly
    as `multimae predict` makes it."""
    if modality.kind == "labels":
        return value.numpy()
    array = modality.denormalize(value.unsqueeze(0).clone())[0].float().numpy()
    return array[0] if array.shape[0] == 1 else array.transpose(1, 2, 0)


def make_sample(modality: Modality, size: tuple[int, int] = SAMPLE_SIZE, seed: int = 0,
                folder: Path | None = None) -> np.ndarray:
    """A file-space sample (what the modality's `read` returns) at `size` / stride: a model-space pattern
    denormalised, written with the plugin's writer and read back (without a writer or reader: not stored)."""
    height, width = size[0] // modality.stride, size[1] // modality.stride
    what = f"modality {modality.name!r}"
    if modality.kind == "labels":
        value = _labels(modality.channels, height, width, seed)
    else:
        value = _pattern(modality.channels, height, width, seed)
    array = _call(what, "denormalize", file_array, modality, value)
    if modality.write is None or modality.read is None:
        return array
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(folder or tmp) / f"sample-{seed}{modality.extensions[0]}"
        _call(what, f"write of a denormalised prediction to {path.name}", modality.write, path, array)
        return _call(what, f"read of {path.name}", modality.read, path)
