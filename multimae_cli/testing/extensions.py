"""Conformance checks of what else a plugin may add: tasks, teachers, and the plugin module itself."""

from __future__ import annotations

import math
import subprocess
import sys
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import torch

from ..config import ModelConfig
from ..data.tasks import prepare_target
from ..plugin import protocols
from ..plugin.factory import build_task_model
from ..plugin.modality import Modality
from ..plugin.registry import PluginInfo, Registry, get_registry
from ..plugin.task import Task
from ..plugin.teacher import Teacher, TeacherRequest
from ._common import DIM, PATCH_SIZE, _call, _check, _check_grads, _check_layout, _fail, make_sample


def check_task(task: Task, num_outputs: int | None = None, *, inputs: Sequence[str] = ("rgb",),
               registry: Registry | None = None) -> None:
    """Every head gives the task's output shape, every loss a finite scalar with gradient to the head, and the
    metrics (the `protocols.Metric` contract) report their main value. Targets go through the engine's own
    preparation, as a batch (training) and one sample at a time (previews, evaluation at full resolution), which
    must agree; so must the metrics fed per batch and per sample. Heads sit on a tiny rgb encoder (4 blocks: DPT
    reads several layers)."""
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

        raw = torch.stack([to_tensor(array, target) for array in files])
        labels = _call(what, "prepare_target of a batch", prepare_target, task, raw, 1000.0, False)
        for i in range(len(raw)):
            alone = _call(what, "prepare_target of one sample", prepare_target, task, raw[i], 1000.0, False)
            _check(isinstance(alone, torch.Tensor) and alone.shape == labels[i].shape and
                   bool(torch.equal(alone, labels[i])), what,
                   f"prepare_target of one sample {tuple(raw[i].shape)} differs from its row of a batch "
                   f"{tuple(raw.shape)}: it must work on both (batches in training, one sample in previews)")
    expected = (2, num_outputs) if task.kind == "classification" else (2, num_outputs, size, size)
    from ..plugin.factory import create_model

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
        lacking = protocols.missing(metrics, protocols.Metric)
        _check(not lacking, what, f"its metrics lack {', '.join(lacking)} (see multimae_cli.protocols.Metric; "
                                  f"subclass multimae_cli.Metric)")
        _check(isinstance(metrics.higher_is_better, bool), what, "metrics.higher_is_better must be True or False")
        _call(what, "metrics update", metrics.update, prediction.detach(), labels)
        _call(what, "metrics sync", metrics.sync)
        report = _call(what, "metrics compute", metrics.compute)
        _check(isinstance(report, Mapping) and metrics.main in report, what,
               f"metrics report {sorted(report) if isinstance(report, Mapping) else report!r} lacks their main "
               f"value {metrics.main!r}")
        one_by_one = task.metrics(num_outputs)
        for i in range(len(labels)):
            _call(what, "metrics update", one_by_one.update, prediction.detach()[i:i + 1], labels[i:i + 1])
        single = one_by_one.compute()[metrics.main]
        _check(math.isclose(single, report[metrics.main], rel_tol=1e-6, abs_tol=1e-9) or
               (math.isnan(single) and math.isnan(report[metrics.main])), what,
               f"metric {metrics.main!r} is {report[metrics.main]} over a batch but {single} over its samples one "
               f"at a time: keep sums, not batch averages (see multimae_cli.Metric)")


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
            for index, label in enumerate(labels[:2]):
                path = Path(tmp) / f"label{index}{modality.extensions[0]}"
                _call(what, f"the {modality.name!r} writer on its label", modality.write, path, label)
                back = _call(what, f"the {modality.name!r} reader on its label", modality.read, path)
                _check_kept(modality, what, label, back)


def _check_kept(modality: Modality, what: str, label: np.ndarray, back: np.ndarray) -> None:
    """A label survives the modality's file format: values in the range and type the files hold (a teacher
    returning 0-1 floats for an 8-bit modality would write black labels)."""
    label64, back64 = label.astype(np.float64), np.asarray(back).astype(np.float64)
    if label64.shape != back64.shape:
        _fail(what, f"a {label.shape} label of {modality.name!r} reads back from its file as {back64.shape}")
    span = max(float(np.abs(label64).max(initial=0)), 1e-6)
    error = float(np.abs(back64 - label64).max(initial=0))
    exact = modality.kind == "labels" or label.dtype.kind in "iub"
    if error > (0.0 if exact else 0.02 * span):
        hint = ""
        if label.dtype.kind == "f" and np.asarray(back).dtype.kind in "iu" and label64.max(initial=0) <= 1.0:
            hint = (f": its labels are floats in [0, 1] but {modality.name!r} files hold "
                    f"{np.asarray(back).dtype} values (0-{np.iinfo(np.asarray(back).dtype).max}); scale them")
        _fail(what, f"a label of {modality.name!r} does not survive its file format (values up to "
                    f"{label64.max(initial=0):.4g}, read back off by up to {error:.4g}){hint}")


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
