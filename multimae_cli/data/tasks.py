"""Fine-tuning samples: a task's inputs and its target from synthetic scenes or a multi-modal folder.

Inputs go through the shared crop/flip (the loop normalises them on the device, `to_device`); the target keeps
its file units (metres after `prepare_target`, class ids, unit vectors) and, for evaluation, its own resolution.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from ..config import FinetuneConfig
from ..errors import InputError
from ..plugin.task import Task
from .datasets import SyntheticDataset, open_dataset
from .folder import declared_classes as listed_classes
from .folder import epoch_and_index
from .transforms import MultiModalTransform, to_tensor

TARGET = "target"


class TaskDataset:
    """Samples `{input: tensor, ..., "target": tensor}` from a multi-modal source.

    Training: one shared crop/flip, the target resampled by its modality's rules at full resolution and kept
    in file units. Evaluation: inputs resized to the model size, the target as read (its own resolution).
    Classification targets are the index of the sample's class folder (the first part of its key).
    """

    def __init__(self, source, inputs: list[str], task: Task, modalities: dict, size: tuple[int, int],
                 train: bool, crop_scale: tuple[float, float] = (0.2, 1.0), hflip: float = 0.5,
                 classes: list[str] | None = None, seed: int = 0, num_classes: int | None = None,
                 reduce_zero_label: bool = False) -> None:
        self.source, self.inputs, self.task, self.train, self.seed = source, inputs, task, train, seed
        self.classes, self.num_classes, self.reduce_zero_label = classes, num_classes, reduce_zero_label
        self.input_modalities = {name: modalities[name] for name in inputs}
        transformed = dict(self.input_modalities)
        self.target_modality = None
        if task.target is not None:
            self.target_modality = replace(modalities[task.target], stride=1)
            if train:
                transformed[TARGET] = self.target_modality
        self.transform = MultiModalTransform(transformed, size, train=train, scale=crop_scale, hflip=hflip)

    def __len__(self) -> int:
        return len(self.source)

    def _check_labels(self, labels: np.ndarray, index: int) -> None:
        """Label ids must be classes (or 255, ignored); with `reduce_zero_label` ids run one higher."""
        limit = self.num_classes + (1 if self.reduce_zero_label else 0)
        bad = labels[(labels >= limit) & (labels != 255)]
        if bad.size:
            where = getattr(self.source, "index", None)
            name = where.files[self.task.target][where.keys[index]] if where is not None else f"sample {index}"
            raise InputError(f"{name}: label {int(bad.max())} outside the {self.num_classes} classes of task "
                             f"{self.task.name!r} (ids 0-{limit - 1}, 255 ignored; set num_classes?)")

    def __getitem__(self, item: int | tuple[int, int]) -> dict[str, torch.Tensor]:
        epoch, index = epoch_and_index(item)
        raw = self.source.read(index)
        sample = {name: raw[name] for name in self.inputs}
        if self.task.target is not None and self.train:
            sample[TARGET] = raw[self.task.target]
        if self.target_modality is not None and self.target_modality.kind == "labels" and self.num_classes:
            self._check_labels(raw[self.task.target], index)
        out = self.transform(sample, np.random.default_rng([self.seed, epoch, index]))
        if self.task.target is None:
            out[TARGET] = torch.tensor(self.classes.index(self.source.key(index).split("/")[0]))
        elif not self.train:
            out[TARGET] = to_tensor(raw[self.task.target], self.target_modality)
        return out


def class_names(source) -> list[str]:
    """Class folders of a folder dataset (the first part of every sample key), sorted."""
    if not hasattr(source, "key"):
        raise InputError("classification reads class folders: give a folder dataset (--data DIR holding "
                         "DIR/<split>/<modality>/<class>/<name>.<ext>) or its shards; synthetic scenes have no classes")
    names = sorted({key.split("/")[0] for key in map(source.key, range(len(source))) if "/" in key})
    if len(names) < 2:
        raise InputError(f"{source.root}: classification needs samples in class folders "
                         f"(<modality>/<class>/<name>), found {len(names)} class(es)")
    return names


def source_modalities(modalities: dict, task: Task, inputs: list[str]) -> dict:
    """What a task's sample source reads. A label target may hold ids up to 255 (ADE20K style: 255 is ignored):
    the task checks them against its own classes, not against the class count of the pretraining modality."""
    out = dict(modalities)
    target = out.get(task.target) if task.target else None
    if target is not None and target.kind == "labels" and task.target not in inputs:
        out[task.target] = target.with_channels(max(target.channels, 256))
    return out


def build_source(config: FinetuneConfig, modalities: dict, split: str, train: bool):
    """The raw sample source of a split: synthetic scenes (a split is its own scene stream) or a folder."""
    data = config.data
    if data.source == "synthetic":
        from .synthetic.io import split_seed

        size = data.render_size or max(config_size(config))
        length = data.synthetic_scenes if train else data.val_scenes
        return SyntheticDataset(modalities, length, size, seed=split_seed(config.seed, split))
    return open_dataset(data.path, modalities, split=split, skip_bad=data.skip_bad, seed=config.seed)


def config_size(config: FinetuneConfig) -> tuple[int, int]:
    size = config.image_size or config.model.get("image_size", 224)
    return (size, size) if isinstance(size, int) else tuple(size)


def depth_scale(config: FinetuneConfig) -> float:
    """File units per metre: the config's, else the folder's `dataset.json`, else 1 (synthetic: metres)."""
    if config.depth_scale is not None:
        return config.depth_scale
    if config.data.source == "folder":
        import json

        info = Path(config.data.path) / "dataset.json"
        if info.is_file():
            return float(json.loads(info.read_text()).get("depth_scale", 1.0))
    return 1.0


def declared_classes(config: FinetuneConfig) -> int | None:
    """The label classes a dataset declares: the synthetic scenes' list, or `classes` in a folder's
    `dataset.json`."""
    if config.data.source == "synthetic":
        from .synthetic.scenes import CLASSES

        return len(CLASSES)
    return listed_classes(Path(config.data.path))


def prepare_target(task: Task, target, scale: float, reduce_zero_label: bool):
    """File-space target(s) -> what loss and metrics take."""
    if isinstance(target, list):
        return [prepare_target(task, t, scale, reduce_zero_label) for t in target]
    if task.prepare_target is not None:
        target = task.prepare_target(target, scale)
    if reduce_zero_label:  # ADE20K style: 0 is "other" and ignored, classes shift down by one
        target = torch.where(target == 0, torch.full_like(target, 255), target - 1)
    return target
