"""Conformance checks of what else a plugin may add: tasks, teachers, and the plugin module itself."""

from __future__ import annotations

import subprocess
import sys
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import torch

from ..config import ModelConfig
from ..modality import Modality
from ..registry import PluginInfo, Registry, get_registry
from ..task import Task, build_task_model
from ..teacher import Teacher, TeacherRequest
from ._common import DIM, PATCH_SIZE, _call, _check, _check_grads, _check_layout, make_sample


def check_task(task: Task, num_outputs: int | None = None, *, inputs: Sequence[str] = ("rgb",),
               registry: Registry | None = None) -> None:
    """Every head gives the task's output shape, every loss a finite scalar with gradient to the head, the
    metrics report their main value. Heads sit on a tiny rgb encoder (4 blocks: DPT reads several layers)."""
    registry = registry or get_registry()
    what = f"task {task.name!r}"
    _check(task.kind in ("classification", "dense"), what, f"kind must be 'classification' or 'dense', got "
                                                           f"{task.kind!r}")
    _check(bool(task.heads) and bool(task.losses), what, "needs at least one head and one loss")
    target = registry.modality(task.target) if task.target else None
    _check(task.kind == "classification" or target is not None, what, "a dense task needs a target modality")
    if num_outputs is None:
        num_outputs = task.num_outputs or (target.channels if target is not None else 5)
    size = 32
    generator = torch.Generator().manual_seed(0)
    images = {name: torch.randn(2, registry.modality(name).channels, size, size, generator=generator)
              for name in inputs}
    if target is None:
        labels = torch.randint(0, num_outputs, (2,), generator=generator)
    else:
        files = [make_sample(target, (size * target.stride,) * 2, seed) for seed in range(2)]  # at image size
        from ..data.transforms import to_tensor

        labels = torch.stack([to_tensor(array, target) for array in files])
        if task.prepare_target is not None:
            labels = _call(what, "prepare_target", task.prepare_target, labels, 1000.0)
    expected = (2, num_outputs) if task.kind == "classification" else (2, num_outputs, size, size)
    from ..factory import create_model

    for head in task.heads:
        config = ModelConfig(inputs=tuple(inputs), outputs=(), image_size=size, patch_size=PATCH_SIZE, dim=DIM,
                             depth=4, num_heads=2, num_encoded_tokens=len(inputs) * 4)
        torch.manual_seed(0)
        model = _call(what, f"head {head!r}", build_task_model, create_model(config, registry), task, head,
                      num_outputs)
        prediction = _call(what, f"head {head!r} forward", model, images)
        _check(tuple(prediction.shape) == expected, what,
               f"head {head!r} returned shape {tuple(prediction.shape)}, expected {expected}")
        for name, factory in task.losses.items():
            model.zero_grad()
            criterion = _call(what, f"loss {name!r} factory", factory, {})
            loss = _call(what, f"loss {name!r}", criterion, prediction, labels)
            _check(isinstance(loss, torch.Tensor) and loss.ndim == 0 and bool(torch.isfinite(loss)), what,
                   f"loss {name!r} with head {head!r} is not a finite scalar: {loss}")
            loss.backward(retain_graph=True)
            _check_grads(model.head, what, f"head {head!r} (loss {name!r})")
        metrics = _call(what, "metrics factory", task.metrics, num_outputs)
        _call(what, "metrics update", metrics.update, prediction.detach(), labels)
        report = _call(what, "metrics compute", metrics.compute)
        _check(isinstance(report, Mapping) and metrics.main in report, what,
               f"metrics report {sorted(report) if isinstance(report, Mapping) else report!r} lacks their main "
               f"value {metrics.main!r}")


# ---------------------------------------------------------------- teachers


def check_teacher(teacher: Teacher, modality: Modality | str, arg: str | None = None,
                  options: Mapping[str, str] | None = None, *, registry: Registry | None = None) -> None:
    """The teacher loads for `modality` on the CPU, labels samples of two sizes in one call, and each label
    has its sample's size and the modality's layout, and survives the modality's write/read."""
    registry = registry or get_registry()
    if isinstance(modality, str):
        modality = registry.modality(modality)
    what = f"teacher {teacher.name!r}"
    _check(teacher.can_make(modality.name), what, f"cannot make {modality.name!r} (it makes "
                                                  f"{', '.join(teacher.produces)})")
    request = TeacherRequest(modality, arg, dict(options or {}), device="cpu")
    labeler = _call(what, "load", teacher.load, request)
    _check(callable(getattr(labeler, "label", None)), what, "load must return a Labeler")
    sizes = [(48, 64), (40, 40), (48, 64)]
    samples = [{name: make_sample(registry.modality(name), size, seed) for name in teacher.needs}
               for seed, size in enumerate(sizes)]
    labels = _call(what, "label", labeler.label, samples)
    _check(isinstance(labels, list) and len(labels) == len(samples), what,
           f"label must return one array per sample ({len(samples)}), got "
           f"{len(labels) if isinstance(labels, list) else type(labels).__name__}")
    for size, label in zip(sizes, labels, strict=True):
        _check(isinstance(label, np.ndarray), what, f"a label must be a numpy array, got {type(label).__name__}")
        expected = (size[0] // modality.stride, size[1] // modality.stride)
        _check(label.shape[:2] == expected, what, f"a label for a {size[0]}x{size[1]} sample has shape "
                                                  f"{label.shape}, expected {expected} first")
        _check_layout(modality, what, label, f"a label of {modality.name!r}")
    if modality.write is not None and modality.read is not None:
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / f"label{modality.extensions[0]}"
            _call(what, f"the {modality.name!r} writer on its label", modality.write, path, labels[0])
            _call(what, f"the {modality.name!r} reader on its label", modality.read, path)


# ---------------------------------------------------------------- plugin modules


def check_plugin(module: str) -> PluginInfo:
    """Import `module` in a fresh interpreter (it must not import torch: `multimae --help` stays fast),
    register it like an entry point would, and check its hooks register without error. Returns its info."""
    code = f"import sys, {module}; sys.exit(3 if 'torch' in sys.modules else 0)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    _check(result.returncode != 3, f"plugin {module!r}",
           "importing it imports torch: import torch inside the factories that need it")
    _check(result.returncode == 0, f"plugin {module!r}", f"does not import: {result.stderr.strip().splitlines()[-1:]}")
    from importlib import import_module

    registry = Registry()
    registry.register(import_module(module), name=module)
    info = registry.plugins[module]
    _check(info.error is None, f"plugin {module!r}", info.error or "")
    registry.modalities()
    registry.tasks()
    registry.teachers()
    _check(info.error is None, f"plugin {module!r}", info.error or "")
    return info
