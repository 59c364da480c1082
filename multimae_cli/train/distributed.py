"""torch.distributed under torchrun: process group, ranks, a resumable sampler, metric averaging.

Launch with `torchrun --nproc_per_node=N -m multimae_cli pretrain ...`; without torchrun everything runs as one
process. gloo on CPU, nccl on GPU.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def setup(device_type: str) -> DistInfo:
    """Join the process group torchrun describes in the environment (no-op for a single process)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return DistInfo()
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device_type == "cuda" else "gloo")
    return DistInfo(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")))


def teardown() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def average(values: dict[str, float], info: DistInfo, device: torch.device) -> dict[str, float]:
    """Mean of each value over all ranks."""
    if info.world == 1 or not values:
        return values
    tensor = torch.tensor(list(values.values()), dtype=torch.float64, device=device)
    dist.all_reduce(tensor)
    return dict(zip(values, (tensor / info.world).tolist(), strict=True))


class EpochSampler(torch.utils.data.Sampler[int]):
    """Sample order as a pure function of (seed, epoch), resumable at any batch.

    Each global batch of `world * batch_size` samples is split in contiguous per-rank chunks, so rank r sees
    the same samples, in the same batch positions, as rows [r*B, (r+1)*B) of a single process's global batch.
    """

    def __init__(self, length: int, batch_size: int, info: DistInfo, seed: int, shuffle: bool = True) -> None:
        self.length, self.batch_size, self.info, self.seed, self.shuffle = length, batch_size, info, seed, shuffle
        self.epoch, self.start_batch = 0, 0
        if self.batches_per_epoch == 0:
            from ..errors import InputError

            raise InputError(f"the dataset has {length} samples, fewer than one global batch of "
                             f"{batch_size * info.world}")

    @property
    def batches_per_epoch(self) -> int:
        return self.length // (self.batch_size * self.info.world)

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        self.epoch, self.start_batch = epoch, start_batch

    def __iter__(self):
        if self.shuffle:
            order = torch.randperm(self.length, generator=torch.Generator().manual_seed(self.seed + self.epoch))
        else:
            order = torch.arange(self.length)
        global_batch = self.batch_size * self.info.world
        for batch in range(self.start_batch, self.batches_per_epoch):
            start = batch * global_batch + self.info.rank * self.batch_size
            yield from order[start:start + self.batch_size].tolist()

    def __len__(self) -> int:
        return (self.batches_per_epoch - self.start_batch) * self.batch_size


def batches_from(position: int, loader: Iterable, sampler: EpochSampler, dataset) -> Iterator:
    """The loader's batches from batch `position` of the run on, epoch after epoch without end: the sampler and
    dataset learn each epoch (and where in it to start), so a resumed run continues exactly."""
    epoch, start = divmod(position, sampler.batches_per_epoch)
    while True:
        sampler.set_epoch(epoch, start)
        dataset.set_epoch(epoch)
        yield from loader
        epoch, start = epoch + 1, 0
