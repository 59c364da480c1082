"""Sharded datasets: a multi-modal folder packed into tar shards (the webdataset layout), read without unpacking.

`multimae data shard ROOT --out SHARDS/` writes each split as `<split>-NNNNNN.tar` files of about a target size:
the samples in the folder's sorted key order, each sample's files side by side as `<index>.<modality><suffix>`
(their original bytes, nothing re-encoded), beside `<split>-NNNNNN.json` (each sample's key and byte offset),
`index.json` (splits, shards, sample counts, modalities) and the folder's `dataset.json`. Any tar reader, and
webdataset, reads the shards as they are.

`ShardDataset` is a `FolderDataset` over shards: item `i` is the folder's sample `i`, read at its offset, with the
same augmentation (a function of seed, epoch, index). `ShardSampler` gives training its streaming order: each
epoch the shards are shuffled by (seed, epoch) and cut into one run of consecutive shards per rank, and each
rank's samples pass through a shuffle buffer seeded by (seed, epoch, rank), so reads stay within a window of a
few shards. The order is a
pure function of the seed, computed from the index alone: a resumed run starts at its batch without reading
what came before, and the order does not depend on the number of loader workers.
"""

from __future__ import annotations

import bisect
import json
import os
import random
import shutil
import tarfile
import tempfile
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import InputError
from ..io import atomic_write_bytes, writing
from ..plugin.modality import Modality
from .folder import epoch_and_index, find_splits, frame_problems, read_checked, scan_split

INDEX = "index.json"
FORMAT = "multimae-shards"
BLOCK = 512
OPEN_SHARDS = 64  # descriptors a process keeps open (a window of a few shards is what streaming reads)


def is_shards(path: str | Path | None) -> bool:
    """Whether `path` is a folder written by `write_shards`."""
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


# ---------------------------------------------------------------------------------------------- writing


def write_shards(root: str | Path, out: str | Path, modalities: Mapping[str, Modality], shard_bytes: int,
                 splits: list[str] | None = None, skip_bad: bool = False,
                 progress: Callable[[int, int], None] | None = None) -> dict[str, Any]:
    """Pack the folder dataset `root` into shards under `out` (which must not exist: it appears whole or not at
    all). Every file is read by its plugin first, so a bad file stops the run naming it (`skip_bad`: the sample
    is left out and listed)."""
    root, out = Path(root), Path(out)
    if out.exists():
        raise InputError(f"--out {out}: already exists; give a new folder")
    if not out.parent.is_dir():
        raise InputError(f"--out {out}: folder {out.parent} does not exist")
    if shard_bytes < BLOCK * 4:
        raise InputError(f"--shard-size must be at least {BLOCK * 4} bytes, got {shard_bytes}")
    dotted = [name for name in modalities if "." in name]
    if dotted:
        raise InputError(f"--modalities {dotted[0]}: a modality stored in shards must have no '.' in its name "
                         "(members are named <index>.<modality><suffix>)")
    splits = splits or find_splits(root, modalities)
    if not splits:
        raise InputError(f"{root}: no split folder with any of {', '.join(modalities)}")
    scanned = {split: scan_split(root / split, modalities) for split in splits}
    total = sum(len(index.keys) for index in scanned.values())
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    started, written, skipped, writers = time.perf_counter(), 0, [], []
    try:
        index: dict[str, Any] = {"format": FORMAT, "version": 1, "modalities": list(modalities), "splits": {}}
        for split, found in scanned.items():
            if found.missing and not skip_bad:
                name, keys = next(iter(found.missing.items()))
                raise InputError(f"{found.root / name}: no file for {keys[0]!r} (pass --skip-bad to leave such "
                                 "samples out)")
            skipped += [f"{found.root / name}: no file for {key!r}" for name, keys in found.missing.items()
                        for key in keys]
            writer = _ShardWriter(staging, split, shard_bytes)
            writers.append(writer)
            for key in found.keys:
                files = {name: found.files[name][key] for name in modalities}
                try:
                    stored = {name: (path.suffix.lower(), _file_data(path)) for name, path in files.items()}
                    problems = frame_problems({name: (path, _checked(path, modalities[name], found.classes,
                                                                     stored[name][1]).shape[:2])
                                               for name, path in files.items()})
                    if problems:
                        raise InputError(problems[0])
                except InputError as exc:
                    if not skip_bad:
                        raise
                    skipped.append(str(exc))
                else:
                    writer.add(key, stored)
                if progress:
                    progress(1, total)
            packed = writer.close()
            if packed["samples"] == 0:
                raise InputError(f"{found.root}: no sample left to pack (all {len(found.keys)} were bad)")
            index["splits"][split] = packed
            written += packed["bytes"]
        dataset_json = root / "dataset.json"
        if dataset_json.is_file():
            try:
                index["dataset"] = json.loads(dataset_json.read_text())
            except ValueError as exc:
                raise InputError(f"{dataset_json}: not JSON ({exc})") from None
            atomic_write_bytes(staging / "dataset.json", dataset_json.read_bytes())
        atomic_write_bytes(staging / INDEX, json.dumps(index, indent=1).encode())
        staging.rename(out)
    except BaseException:
        for writer in writers:
            writer.abandon()
        shutil.rmtree(staging, ignore_errors=True)
        raise
    seconds = time.perf_counter() - started
    counts = {split: {"samples": info["samples"], "shards": len(info["shards"]), "bytes": info["bytes"]}
              for split, info in index["splits"].items()}
    return {"out": str(out), "splits": counts, "bytes": written, "seconds": round(seconds, 2),
            "mb_per_s": round(written / 1e6 / max(seconds, 1e-9), 1), "skipped": len(skipped),
            "skipped_files": skipped}


def _file_data(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise InputError(f"{path}: cannot read ({exc.strerror})") from None


def _checked(path: Path, modality: Modality, classes: int | None, data: bytes) -> np.ndarray:
    """The file decoded from the bytes about to be stored (by `read` where the plugin has no `decode`)."""
    return read_checked(path, modality, classes, data if modality.decode is not None else None)


class _ShardWriter:
    """Appends samples to `<split>-NNNNNN.tar`, starting a new shard past the target size."""

    def __init__(self, folder: Path, split: str, shard_bytes: int) -> None:
        self.folder, self.split, self.shard_bytes = folder, split, shard_bytes
        self.shards: list[dict[str, Any]] = []
        self.count = 0
        self.file = None

    def add(self, key: str, members: Mapping[str, tuple[str, bytes]]) -> None:
        if self.file is None or self.file.tell() >= self.shard_bytes:
            self._finish()
            name = f"{self.split}-{len(self.shards):06d}.tar"
            self.path = self.folder / name
            with writing(self.path):
                self.file = open(self.path, "wb")  # noqa: SIM115 (closed in _finish)
            self.shards.append({"file": name, "samples": 0, "bytes": 0, "first": self.count})
            self.keys, self.offsets = [], []
        self.keys.append(key)
        self.offsets.append(self.file.tell())
        with writing(self.path):
            for modality, (suffix, data) in members.items():
                info = tarfile.TarInfo(f"{self.count:09d}.{modality}{suffix}")
                info.size, info.mode, info.mtime = len(data), 0o644, 0
                self.file.write(info.tobuf(format=tarfile.USTAR_FORMAT))
                self.file.write(data + bytes(-len(data) % BLOCK))
        self.shards[-1]["samples"] += 1
        self.count += 1

    def _finish(self) -> None:
        if self.file is None:
            return
        with writing(self.path):
            self.file.write(bytes(2 * BLOCK))  # the end-of-archive marker
            self.shards[-1]["bytes"] = self.file.tell()
            self.file.close()
        sidecar = self.path.with_suffix(".json")
        atomic_write_bytes(sidecar, json.dumps({"keys": self.keys, "offsets": self.offsets}).encode())
        self.file = None

    def abandon(self) -> None:
        """Close the shard being written (the run failed; the staging folder is removed)."""
        if self.file is not None:
            self.file.close()
            self.file = None

    def close(self) -> dict[str, Any]:
        self._finish()
        return {"samples": self.count, "bytes": sum(s["bytes"] for s in self.shards), "shards": self.shards}


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
        """Sample `index` decoded by the plugins: `decode` of the bytes where a plugin has it, else its `read` of
        a temporary file (in memory where /dev/shm is)."""
        sample, shapes = {}, {}
        shard = f"{self.root}/{self.shards[self.locate(index)[0]]['file']}: {self.key(index)}"
        for name, (suffix, data) in self.members(index).items():
            modality, member = self.modalities[name], f"{shard} {name}{suffix}"
            try:
                if modality.decode is not None:
                    sample[name] = read_checked(Path(f"{name}{suffix}"), modality, self.classes, data)
                else:
                    sample[name] = _read_through_file(modality, suffix, data, self.classes)
            except InputError as exc:
                raise InputError(f"{member}: {str(exc).split(': ', 1)[-1]}") from None
            shapes[name] = (member, sample[name].shape[:2])
        problems = frame_problems(shapes)
        if problems:
            raise InputError(problems[0])
        return sample

    def __getitem__(self, item: int | tuple[int, int]):
        epoch, index = epoch_and_index(item)
        for attempt in range(len(self)):
            try:
                sample = self.read((index + attempt) % len(self))
                break
            except InputError:
                if not self.skip_bad:
                    raise
                self.skipped += 1
        else:
            raise InputError(f"{self.root}: no readable sample")
        if self.transform is None:
            return sample
        return self.transform(sample, np.random.default_rng([self.seed, epoch, index]))


def _read_through_file(modality: Modality, suffix: str, data: bytes, classes: int | None) -> np.ndarray:
    """A plugin without `decode` reads files: the member goes to a temporary file (removed after the read)."""
    folder = "/dev/shm" if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK) else None
    with tempfile.NamedTemporaryFile(suffix=suffix, dir=folder) as file:
        file.write(data)
        file.flush()
        return read_checked(Path(file.name), modality, classes)


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
