"""The synthetic-scene dataset (no disk), loaders and batch collation."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import torch

from ..config import workers_setting
from ..errors import ConfigError
from ..plugin.modality import Modality
from .folder import FolderDataset, epoch_and_index
from .shards import ShardDataset, is_shards, read_index
from .synthetic.scenes import render_scene


class SyntheticDataset:
    """`length` procedural scenes rendered on the fly at `render_size`, for the requested modalities.

    Scene `i` is the same for every epoch (a fixed training set); the augmentation draws from
    `(seed, epoch, i)`, the item being `i` (epoch 0) or `(epoch, i)` (`epoch_and_index`).
    """

    def __init__(self, modalities: Mapping[str, Modality], length: int, render_size: int | tuple[int, int],
                 transform=None, seed: int = 0) -> None:
        available = {"rgb", "depth", "normals", "semseg"}
        unknown = [name for name in modalities if name not in available]
        if unknown:
            from ..errors import InputError

            raise InputError(f"synthetic scenes have no {', '.join(unknown)} "
                             f"(they render {', '.join(sorted(available))})")
        self.modalities = dict(modalities)
        self.length, self.render_size, self.transform = length, render_size, transform
        self.seed = seed

    def __len__(self) -> int:
        return self.length

    def read(self, index: int) -> dict[str, np.ndarray]:
        scene = render_scene(self.seed, index, self.render_size)
        return {name: scene[name] for name in self.modalities}

    def __getitem__(self, item: int | tuple[int, int]):
        epoch, index = epoch_and_index(item)
        sample = self.read(index)
        if self.transform is None:
            return sample
        return self.transform(sample, np.random.default_rng([self.seed, epoch, index]))


def open_dataset(path: str | Path, modalities: Mapping[str, Modality], split: str = "train", transform=None,
                 skip_bad: bool = False, seed: int = 0) -> FolderDataset | ShardDataset:
    """A split of the dataset at `path`: a shard folder (`multimae data shard`) or a multi-modal folder."""
    kind = ShardDataset if is_shards(path) else FolderDataset
    return kind(path, modalities, split=split, transform=transform, skip_bad=skip_bad, seed=seed)


def has_split(path: str | Path, split: str) -> bool:
    return split in read_index(path)["splits"] if is_shards(path) else (Path(path) / split).is_dir()


def collate(samples: Sequence[Mapping[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """Stack a list of `{modality: tensor}` samples into one batch dict. In a DataLoader worker each batch is
    stacked straight into shared memory (as torch's default collate does), saving a copy on its way out."""
    in_worker = torch.utils.data.get_worker_info() is not None
    batch = {}
    for name in samples[0]:
        tensors = [sample[name] for sample in samples]
        out = None
        if in_worker:
            first = tensors[0]
            storage = first._typed_storage()._new_shared(len(tensors) * first.numel(), device=first.device)
            out = first.new(storage).resize_(len(tensors), *first.shape)
        batch[name] = torch.stack(tensors, out=out)
    return batch


class Loader(torch.utils.data.DataLoader):
    """A DataLoader whose worker processes run OpenCV on one thread each: the workers already use every core,
    OpenCV's own pool in each would oversubscribe them.

    Forked workers inherit the setting, made in this process around their start and then restored:
    `cv2.setNumThreads` in a forked worker whose parent had already run OpenCV's thread pool waits forever for
    threads that do not exist in the child (a loader started in a process that had already run a pretraining,
    whose previews used OpenCV, hung so). Workers started fresh (the spawn method, macOS's default) set it
    themselves.
    """

    def __init__(self, *args, **kwargs) -> None:
        kwargs.setdefault("worker_init_fn", _one_opencv_thread)
        # Its own generator: each new iterator draws the workers' base seed from it, not from the global RNG,
        # whose state a resumed run has just restored for the model's randomness (drop path): a draw there made
        # a resumed fine-tuning differ from the run never stopped
        kwargs.setdefault("generator", torch.Generator().manual_seed(0))
        super().__init__(*args, **kwargs)

    def __iter__(self):
        if self.num_workers == 0:
            return super().__iter__()
        import cv2

        threads = cv2.getNumThreads()
        cv2.setNumThreads(1)
        try:
            return super().__iter__()
        finally:
            cv2.setNumThreads(threads)


def _one_opencv_thread(_worker_id: int) -> None:
    """In a worker that did not inherit the setting (a spawned one): it has no inherited pool, so this is safe."""
    import cv2

    if cv2.getNumThreads() != 1:
        cv2.setNumThreads(1)


def loader_workers(setting: int | str) -> int:
    """DataLoader processes for a `workers` setting (`config.workers_setting`). `auto`: the CPUs this process
    may use (its affinity), shared among the torchrun processes of this machine, less one for the training
    loop; at least 2, at most 16. A GPU step outruns a couple of workers many times over (docs/performance.md)."""
    try:
        setting = workers_setting(setting)
    except ValueError as exc:
        raise ConfigError(f"workers: {exc}") from None
    if setting != "auto":
        return setting
    return min(16, max(2, cpus_per_process() - 1))


def cpus_per_process() -> int:
    """The CPUs this process may run on (its affinity: a container's, `taskset`'s or the scheduler's limit),
    shared among the torchrun processes of this machine; at least 1."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return max(1, cpus // max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1"))))


def make_loader(dataset, batch_size: int, *, sampler=None, shuffle: bool = True, workers: int = 0, seed: int = 0,
                drop_last: bool = True, pin_memory: bool = False) -> torch.utils.data.DataLoader:
    """A DataLoader with the given sampler, else a DistributedSampler when torch.distributed is initialised,
    else a seeded order."""
    import torch.distributed as dist
    from torch.utils.data import DistributedSampler, RandomSampler, SequentialSampler

    if sampler is None and dist.is_available() and dist.is_initialized():
        sampler = DistributedSampler(dataset, shuffle=shuffle, seed=seed, drop_last=drop_last)
    elif sampler is None:
        sampler = RandomSampler(dataset, generator=torch.Generator().manual_seed(seed)) if shuffle \
            else SequentialSampler(dataset)
    return Loader(dataset, batch_size=batch_size, sampler=sampler, num_workers=workers, collate_fn=collate,
                  drop_last=drop_last, pin_memory=pin_memory, persistent_workers=workers > 0,
                  generator=torch.Generator().manual_seed(seed))
