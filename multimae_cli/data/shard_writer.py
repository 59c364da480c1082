"""`multimae data shard`: a multi-modal folder packed into the shard layout `shards.py` reads.

Each split becomes `<split>-NNNNNN.tar` files of about a target size, the samples in the folder's sorted key order
(so sample `i` of the shards is the folder's sample `i`), every file checked by its plugin once and stored as it
is; the output folder appears whole or not at all.
"""

from __future__ import annotations

import json
import shutil
import tarfile
import tempfile
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import InputError
from ..io import atomic_write_bytes, writing
from ..plugin.modality import Modality
from .folder import find_splits, frame_problems, read_checked, scan_split
from .shards import BLOCK, FORMAT, INDEX


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


