"""Evaluation of fine-tuned models: metric sums over a whole split, each rank a disjoint shard, all-reduced.

Metrics are computed at the labels' own resolution (predictions are resized to them), so the result does not
depend on the batch size or the number of processes.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from ..config import FinetuneConfig
from ..data.datasets import loader_workers
from ..data.tasks import TARGET, TaskDataset, build_source, class_names, prepare_target, source_modalities
from ..data.transforms import to_device
from ..errors import InputError
from ..plugin.factory import resolve_modalities
from ..plugin.registry import get_registry
from ..plugin.task import Task
from .distributed import DistInfo
from .runtime import launch, resolve_precision


def eval_collate(samples):
    """Stack inputs; targets of different sizes (labels at their own resolution) stay a list."""
    batch = {name: torch.stack([s[name] for s in samples]) for name in samples[0] if name != TARGET}
    targets = [s[TARGET] for s in samples]
    same = all(t.shape == targets[0].shape for t in targets)
    batch[TARGET] = torch.stack(targets) if same else targets
    return batch


@torch.no_grad()
def evaluate(model, task: Task, loader, modalities: dict, num_outputs: int, device: torch.device, dtype, scale: float,
             reduce_zero_label: bool, progress: Callable[[int], None] | None = None) -> dict[str, float]:
    """The task's metrics over the whole loader (all ranks' shards summed); `modalities` normalise the inputs;
    `progress(samples)` after each batch."""
    metrics = task.metrics(num_outputs)
    was_training = model.training
    model.eval()
    for batch in loader:
        inputs = to_device({k: v for k, v in batch.items() if k != TARGET}, modalities, device, non_blocking=True)
        with torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
            pred = model(inputs).float()
        target = prepare_target(task, batch[TARGET], scale, reduce_zero_label)
        if isinstance(target, list):
            for i, one in enumerate(target):
                metrics.update(pred[i:i + 1], one[None].to(device))
        else:
            metrics.update(pred, target.to(device))
        if progress:
            progress(len(pred))
    model.train(was_training)
    metrics.sync()
    return metrics.compute()


def shard(length: int, info: DistInfo) -> list[int]:
    """This rank's disjoint share of an evaluation set (every sample counted exactly once overall)."""
    return list(range(info.rank, length, info.world))


def eval_loader(dataset, batch_size: int, info: DistInfo, workers: int):
    from torch.utils.data import Subset

    from ..data.datasets import Loader

    return Loader(Subset(dataset, shard(len(dataset), info)), batch_size=batch_size, shuffle=False,
                  num_workers=workers, collate_fn=eval_collate)


def evaluate_checkpoint(checkpoint: str | Path, data: str | Path | None = None, split: str = "val",
                        batch_size: int = 16, device: str = "auto", workers: int | str = "auto",
                        synthetic_scenes: int = 64, seed: int = 0,
                        progress: Callable[[int, int], None] | None = None) -> dict[str, Any]:
    """Metrics of a fine-tuned checkpoint on a split of a folder dataset (or `synthetic_scenes` scenes of the
    split's synthetic stream when `data` is None), accumulated over the whole split; correct under torchrun
    (shards summed). `progress(samples, total)` after each batch of this rank's share."""
    from ..config import DataConfig
    from ..formats.load import load_task_model

    processes = loader_workers(workers)

    def body(torch_device: torch.device, info: DistInfo) -> dict[str, Any]:
        model = load_task_model(checkpoint).to(torch_device)
        task = get_registry().task(model.task_info["task"])
        inputs = list(model.config.inputs)
        modalities = resolve_modalities(model.config, names=[*inputs, *([task.target] if task.target else [])])
        source_config = DataConfig(source="folder", path=str(data)) if data else \
            DataConfig(val_scenes=synthetic_scenes)
        config = FinetuneConfig(task=task.name, data=source_config, seed=seed,
                                image_size=tuple(model.config.image_size))
        source = build_source(config, source_modalities(modalities, task, inputs), split, train=False)
        classes = model.task_info.get("classes")
        if task.kind == "classification":
            found = class_names(source)
            if found != classes:
                raise InputError(f"{data}: class folders {found} differ from the checkpoint's {classes}")
        dataset = TaskDataset(source, inputs, task, modalities, tuple(model.config.image_size), train=False,
                              classes=classes, seed=seed, num_classes=model.task_info["num_outputs"],
                              reduce_zero_label=model.task_info["reduce_zero_label"])
        loader = eval_loader(dataset, batch_size, info, processes)
        share = len(shard(len(dataset), info))
        metrics = evaluate(model, task, loader, dataset.input_modalities, model.task_info["num_outputs"], torch_device,
                           resolve_precision("auto", torch_device), model.task_info["depth_scale"],
                           model.task_info["reduce_zero_label"],
                           (lambda done: progress(done, share)) if progress else None)
        return {"checkpoint": str(checkpoint), "task": task.name, "split": split, "samples": len(dataset),
                "metrics": metrics}

    return launch(device, body)


@torch.no_grad()
def constant_baseline(task: Task, dataset: TaskDataset, num_outputs: int, scale: float = 1.0,
                      reduce_zero_label: bool = False) -> dict[str, float]:
    """Metrics of the best constant guess, chosen with the evaluation set's own labels (so at least as strong
    as one chosen on training data): its mean depth / mean normal, or its most frequent class everywhere.
    A fine-tuned model should beat it."""
    targets = [prepare_target(task, dataset[i][TARGET], scale, reduce_zero_label) for i in range(len(dataset))]
    metrics = task.metrics(num_outputs)
    if task.kind == "classification":
        counts = torch.bincount(torch.stack(targets), minlength=num_outputs)
        logits = torch.nn.functional.one_hot(counts.argmax(), num_outputs).float()
        for target in targets:
            metrics.update(logits[None], target[None])
        return metrics.compute()
    if targets[0].is_floating_point():
        values = torch.cat([t.flatten(1) if t.ndim == 3 else t.flatten()[None] for t in targets], dim=1)
        valid = torch.isfinite(values).all(0) & (values.norm(dim=0) > 0)
        constant = values[:, valid].mean(dim=1)
        for target in targets:
            shape = target.shape if target.ndim == 3 else (1, *target.shape)
            metrics.update(constant.view(-1, 1, 1).expand(shape)[None], target.view(shape)[None])
        return metrics.compute()
    labels = torch.cat([t.flatten() for t in targets])
    majority = torch.bincount(labels[labels != 255], minlength=num_outputs).argmax()
    for target in targets:
        metrics.update(torch.full_like(target, int(majority))[None], target[None])
    return metrics.compute()
