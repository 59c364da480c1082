"""torch.distributed under torchrun: process group, ranks, a resumable sampler, metric averaging.

Launch with `torchrun --nproc_per_node=N -m multimae_cli pretrain ...`; without torchrun everything runs as one
process. gloo on CPU, nccl on GPU.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
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


class EpochSampler(torch.utils.data.Sampler[tuple[int, int]]):
    """`(epoch, index)` items, epoch after epoch without end, from a start batch of the run on; the order of an
    epoch is a pure function of (seed, epoch), so a resumed run continues exactly.

    One loader iterator serves the whole run: the workers' prefetch queue never drains at an epoch boundary (a
    new iterator per epoch stalled the GPU while every worker built its first batch again), and the epoch reaches
    the workers with each index (see `epoch_and_index`). Each global batch of `world * batch_size` samples is split
    in contiguous per-rank chunks, so rank r sees the same samples, in the same batch positions, as rows
    [r*B, (r+1)*B) of a single process's global batch.
    """

    def __init__(self, length: int, batch_size: int, info: DistInfo, seed: int, shuffle: bool = True) -> None:
        self.length, self.batch_size, self.info, self.seed, self.shuffle = length, batch_size, info, seed, shuffle
        self.start = 0
        if self.batches_per_epoch == 0:
            from ..errors import InputError

            raise InputError(f"the dataset has {length} samples, fewer than one global batch of "
                             f"{batch_size * info.world}")

    @property
    def batches_per_epoch(self) -> int:
        return self.length // (self.batch_size * self.info.world)

    def start_at(self, position: int) -> None:
        """Begin at global batch `position` of the run (counted over all epochs)."""
        self.start = position

    def __iter__(self) -> Iterator[tuple[int, int]]:
        epoch, first = divmod(self.start, self.batches_per_epoch)
        global_batch = self.batch_size * self.info.world
        while True:
            if self.shuffle:
                order = torch.randperm(self.length, generator=torch.Generator().manual_seed(self.seed + epoch))
            else:
                order = torch.arange(self.length)
            for batch in range(first, self.batches_per_epoch):
                start = batch * global_batch + self.info.rank * self.batch_size
                yield from ((epoch, index) for index in order[start:start + self.batch_size].tolist())
            epoch, first = epoch + 1, 0
