"""Sharded datasets: a multi-modal folder packed into tar shards (the webdataset layout), read without unpacking.

The layout (`shard_writer.py` writes it): each split as `<split>-NNNNNN.tar` files, each sample's files side by
side as `<index>.<modality><suffix>` (their original bytes), beside `<split>-NNNNNN.json` (each sample's key and
byte offset), `index.json` (splits, shards, sample counts, modalities) and the folder's `dataset.json`.

`ShardDataset` is a `FolderDataset` over shards: item `i` is the folder's sample `i`, read at its offset, with the
same augmentation (a function of seed, epoch, index). `ShardSampler` gives training its streaming order: each
epoch the shards are shuffled by (seed, epoch) and cut into one run of consecutive shards per rank, and each
rank's samples pass through a shuffle buffer seeded by (seed, epoch, rank), so reads stay within a window of a
few shards. The order is a pure function of the seed, computed from the index alone: a resumed run starts at its
batch without reading what came before, and the order does not depend on the number of loader workers.
"""

from __future__ import annotations

import bisect
import json
import os
import random
from collections import OrderedDict
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import InputError
from ..plugin.modality import Modality
from .folder import augmented_item, frame_problems, read_checked

INDEX = "index.json"
FORMAT = "multimae-shards"
BLOCK = 512
OPEN_SHARDS = 64  # descriptors a process keeps open (a window of a few shards is what streaming reads)


def is_shards(path: str | Path | None) -> bool:
    """Whether `path` is a folder written by `shard_writer.write_shards`."""
    return path is not None and (Path(path) / INDEX).is_file()


def read_index(root: str | Path) -> dict[str, Any]:
    path = Path(root) / INDEX
    try:
        index = json.loads(path.read_text())
    except FileNotFoundError:
        raise InputError(f"{path}: no such file (not a shard folder: make one with `multimae data shard`)") from None
    except ValueError as exc:
        raise InputError(f"{path}: not JSON ({exc})") from None
    if not isinstance(index, dict) or index.get("format") != FORMAT or not isinstance(index.get("splits"), dict):
        raise InputError(f"{path}: not a multimae shard index (format {FORMAT!r})")
    return index


# ---------------------------------------------------------------------------------------------- reading


class ShardDataset:
    """The samples of one split of a shard folder, indexable like `FolderDataset` (same items, same keys in the
    same order, same augmentation). Each process opens the shards it reads once and keeps them open."""

    def __init__(self, root: str | Path, modalities: Mapping[str, Modality], split: str = "train",
                 transform=None, skip_bad: bool = False, seed: int = 0) -> None:
        self.root, self.modalities = Path(root), dict(modalities)
        index = read_index(self.root)
        if split not in index["splits"]:
            raise InputError(f"{self.root / INDEX}: no split {split!r} (splits: {', '.join(index['splits'])})")
        missing = [name for name in self.modalities if name not in index["modalities"]]
        if missing:
            raise InputError(f"{self.root / INDEX}: the shards hold no {', '.join(missing)} (they hold "
                             f"{', '.join(index['modalities'])})")
        self.split, self.stored = split, len(index["modalities"])
        self.shards = index["splits"][split]["shards"]
        self.firsts = [shard["first"] for shard in self.shards]
        self.length = index["splits"][split]["samples"]
        classes = (index.get("dataset") or {}).get("classes")
        self.classes = len(classes) if isinstance(classes, list) else None
        self.transform, self.skip_bad, self.seed, self.skipped = transform, skip_bad, seed, 0
        if not self.length:
            raise InputError(f"{self.root / INDEX}: split {split!r} has no samples")
        self._sidecars: dict[int, dict[str, list]] = {}
        self._fds: OrderedDict[int, int] = OrderedDict()  # shard -> descriptor, this process's (see _descriptor)
        self._pid = os.getpid()

    def __len__(self) -> int:
        return self.length

    def __getstate__(self) -> dict[str, Any]:  # loader workers open their own files
        return {**self.__dict__, "_fds": OrderedDict()}

    def close(self) -> None:
        """Close the shards this process opened."""
        if self._pid == os.getpid():
            for fd in self._fds.values():
                os.close(fd)
        self._fds.clear()

    def locate(self, index: int) -> tuple[int, int]:
        """(shard number, position in the shard) of sample `index`."""
        shard = bisect.bisect_right(self.firsts, index) - 1
        return shard, index - self.firsts[shard]

    def key(self, index: int) -> str:
        shard, position = self.locate(index)
        return self._sidecar(shard)["keys"][position]

    def _sidecar(self, shard: int) -> dict[str, list]:
        if shard not in self._sidecars:
            path = (self.root / self.shards[shard]["file"]).with_suffix(".json")
            try:
                self._sidecars[shard] = json.loads(path.read_text())
            except (OSError, ValueError) as exc:
                raise InputError(f"{path}: unreadable shard index ({exc})") from None
        return self._sidecars[shard]

    def _descriptor(self, shard: int) -> int:
        """An open descriptor of `shard`, opened by this process (a forked loader worker shares its parent's
        descriptors and file positions, so it opens its own), at most OPEN_SHARDS at a time."""
        if self._pid != os.getpid():
            self._fds, self._pid = OrderedDict(), os.getpid()
        if shard in self._fds:
            self._fds.move_to_end(shard)
            return self._fds[shard]
        path = self.root / self.shards[shard]["file"]
        try:
            self._fds[shard] = os.open(path, os.O_RDONLY)
        except OSError as exc:
            raise InputError(f"{path}: cannot open ({exc.strerror})") from None
        if len(self._fds) > OPEN_SHARDS:
            os.close(self._fds.popitem(last=False)[1])
        return self._fds[shard]

    def members(self, index: int) -> dict[str, tuple[str, bytes]]:
        """The stored files of sample `index`: modality -> (suffix, bytes), as written. One positioned read of
        the sample's bytes (safe across threads and processes)."""
        shard, position = self.locate(index)
        offsets = self._sidecar(shard)["offsets"]
        end = offsets[position + 1] if position + 1 < len(offsets) else self.shards[shard]["bytes"] - 2 * BLOCK
        data = os.pread(self._descriptor(shard), end - offsets[position], offsets[position])
        out, at, stem = {}, 0, f"{index:09d}."
        for _ in range(self.stored):
            name, size = _member_header(data[at:at + BLOCK])
            if not name.startswith(stem) or size < 0 or at + BLOCK + size > len(data):
                raise InputError(f"{self.root / self.shards[shard]['file']}: damaged shard (sample {index} should "
                                 f"be at byte {offsets[position] + at})")
            modality, suffix = name[len(stem):], ""
            if modality not in self.modalities:  # the stored name is "<modality><suffix>"; modalities have no dot
                modality, dot, rest = modality.partition(".")
                suffix = dot + rest
            if modality in self.modalities:
                out[modality] = (suffix, data[at + BLOCK:at + BLOCK + size])
            at += BLOCK + size + -size % BLOCK
        return out

    def read(self, index: int) -> dict[str, np.ndarray]:
        """Sample `index` decoded by the plugins (`read_checked` of each member's bytes)."""
        sample, shapes = {}, {}
        shard = f"{self.root}/{self.shards[self.locate(index)[0]]['file']}: {self.key(index)}"
        for name, (suffix, data) in self.members(index).items():
            modality, member = self.modalities[name], f"{shard} {name}{suffix}"
            try:
                sample[name] = read_checked(Path(f"{name}{suffix}"), modality, self.classes, data)
            except InputError as exc:
                raise InputError(f"{member}: {str(exc).split(': ', 1)[-1]}") from None
            shapes[name] = (member, sample[name].shape[:2])
        problems = frame_problems(shapes)
        if problems:
            raise InputError(problems[0])
        return sample

    def __getitem__(self, item: int | tuple[int, int]):
        return augmented_item(self, item)


def _member_header(header: bytes) -> tuple[str, int]:
    """(name, size) of a ustar header as `_ShardWriter` writes them; size -1 when it is not one (tarfile's own
    parser checks more and costs a tenth of a sample's decoding)."""
    if len(header) != BLOCK or header[257:262] != b"ustar":
        return "", -1
    try:
        return header[:100].rstrip(b"\0").decode(), int(header[124:136].rstrip(b"\0 ") or b"0", 8)
    except (UnicodeDecodeError, ValueError):
        return "", -1


# ---------------------------------------------------------------------------------------------- order


class ShardSampler(torch.utils.data.Sampler[tuple[int, int]]):
    """`(epoch, index)` items in streaming order, epoch after epoch, from a start batch of the run on (the
    interface of `EpochSampler`). Each epoch: shards permuted by (seed, epoch) into one stream of samples, cut
    into `world` equal slices (rank r reads a run of consecutive shards); a rank's slice passes a shuffle buffer
    of `buffer` samples seeded by (seed, epoch, rank). Every rank takes `len // (batch * world)` batches; the
    samples past the last whole global batch wait for a later epoch (another shard order)."""

    def __init__(self, dataset: ShardDataset, batch_size: int, rank: int, world: int, seed: int,
                 buffer: int) -> None:
        self.batch_size, self.rank, self.world, self.seed, self.buffer = batch_size, rank, world, seed, max(1, buffer)
        self.counts = [shard["samples"] for shard in dataset.shards]
        self.firsts = dataset.firsts
        self.start = 0
        if self.batches_per_epoch == 0:
            raise InputError(f"the dataset has {sum(self.counts)} samples, fewer than one global batch of "
                             f"{batch_size * world}")

    @property
    def batches_per_epoch(self) -> int:
        return sum(self.counts) // (self.batch_size * self.world)

    def start_at(self, position: int) -> None:
        """Begin at global batch `position` of the run (counted over all epochs)."""
        self.start = position

    def epoch_order(self, epoch: int) -> list[int]:
        """This rank's samples of `epoch`, in order (a pure function of seed, epoch and rank): the epoch's shards
        in shuffled order make one stream, rank r takes its r-th equal slice (a run of consecutive shards, no
        sample twice) through its shuffle buffer."""
        shards = np.random.default_rng([self.seed, epoch]).permutation(len(self.counts)).tolist()
        need = self.batches_per_epoch * self.batch_size
        start, stop = self.rank * need, (self.rank + 1) * need
        stream, seen = [], 0
        for shard in shards:
            if seen + self.counts[shard] > start and seen < stop:
                first = self.firsts[shard]
                stream.extend(range(first + max(0, start - seen), first + min(self.counts[shard], stop - seen)))
            seen += self.counts[shard]
        rng, pool, order = random.Random(f"{self.seed}-{epoch}-{self.rank}"), [], []
        for index in stream:
            pool.append(index)
            if len(pool) >= self.buffer:
                order.append(_draw(pool, rng))
                if len(order) == need:
                    return order
        while pool and len(order) < need:
            order.append(_draw(pool, rng))
        return order

    def __iter__(self) -> Iterator[tuple[int, int]]:
        epoch, first = divmod(self.start, self.batches_per_epoch)
        while True:
            order = self.epoch_order(epoch)
            yield from ((epoch, index) for index in order[first * self.batch_size:])
            epoch, first = epoch + 1, 0


def _draw(pool: list[int], rng: random.Random) -> int:
    """Take a uniformly chosen element out of the shuffle buffer."""
    i = rng.randrange(len(pool))
    pool[i], pool[-1] = pool[-1], pool[i]
    return pool.pop()


# ---------------------------------------------------------------------------------------------- checking


def check_shards(root: str | Path, modalities: Mapping[str, Modality], splits: list[str] | None = None) -> dict:
    """`data check` on a shard folder: the index against the files, and every sample decoded."""
    root = Path(root)
    index = read_index(root)
    report: dict = {"root": str(root), "modalities": list(modalities), "splits": {}, "format": "shards"}
    for split in splits or sorted(index["splits"]):
        problems: list[str] = []
        try:
            dataset = ShardDataset(root, modalities, split)
        except InputError as exc:
            report["splits"][split] = {"samples": 0, "problems": [str(exc)]}
            continue
        for shard in dataset.shards:
            path = root / shard["file"]
            size = path.stat().st_size if path.is_file() else None
            if size != shard["bytes"]:
                problems.append(f"{path}: {'missing' if size is None else f'{size} bytes'}, the index says "
                                f"{shard['bytes']}")
        if not problems:
            for i in range(len(dataset)):
                try:
                    dataset.read(i)
                except InputError as exc:
                    problems.append(str(exc))
        dataset.close()
        report["splits"][split] = {"samples": len(dataset), "shards": len(dataset.shards), "problems": problems}
    report["clean"] = all(not s["problems"] for s in report["splits"].values())
    return report
