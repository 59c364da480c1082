"""Multi-modal folder datasets: `root/<split>/<modality>/<subfolder>/<name>.<ext>`.

Modalities are paired by relative path without extension (the official code pairs by sorted index and
mis-pairs silently when a file is missing). Each file is read by its modality's plugin; every problem names
the file.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import InputError
from ..plugin.modality import Modality


@dataclass
class FolderIndex:
    """The files of one split, paired by key (relative path without extension)."""

    root: Path
    keys: list[str]
    files: dict[str, dict[str, Path]]
    missing: dict[str, list[str]] = field(default_factory=dict)  # modality -> keys other modalities have
    extra: dict[str, list[Path]] = field(default_factory=dict)  # modality -> files it cannot read
    duplicates: list[str] = field(default_factory=list)


def scan_split(root: str | Path, modalities: Mapping[str, Modality]) -> FolderIndex:
    """Index `root/<modality>/**` for each modality; keys present in all modalities are the samples."""
    root = Path(root)
    if not root.is_dir():
        if not root.parent.is_dir():
            raise InputError(f"{root.parent}: no such folder")
        folders = sorted(p.name for p in root.parent.iterdir() if p.is_dir())
        if folders and not set(folders) & set(modalities):
            hint = f"its splits: {', '.join(folders)}"
        else:  # modality folders straight under the root, or nothing at all
            hint = f"a dataset holds <split>/<modality>/<files>: move the modality folders into {root}/"
        raise InputError(f"{root}: no such folder ({hint})")
    files: dict[str, dict[str, Path]] = {}
    extra: dict[str, list[Path]] = {}
    duplicates: list[str] = []
    for name, modality in modalities.items():
        folder = root / name
        if not folder.is_dir():
            raise InputError(f"{folder}: missing folder for modality {name!r}")
        found: dict[str, Path] = {}
        extra[name] = []
        for path in sorted(folder.rglob("*")):
            if not path.is_file() or path.name.startswith("."):
                continue
            if path.suffix.lower() not in modality.extensions:
                extra[name].append(path)
                continue
            key = path.relative_to(folder).with_suffix("").as_posix()
            if key in found:
                duplicates.append(f"{name}/{key} ({found[key].name}, {path.name})")
            found[key] = path
        files[name] = found
    all_keys = set().union(*(f.keys() for f in files.values()))
    keys = sorted(set.intersection(*(set(f) for f in files.values())))
    missing = {name: sorted(all_keys - set(found)) for name, found in files.items()}
    return FolderIndex(root, keys, files, {k: v for k, v in missing.items() if v},
                       {k: v for k, v in extra.items() if v}, duplicates)


def read_checked(path: Path, modality: Modality) -> np.ndarray:
    """The plugin's `read`, plus the checks every modality gets: finite floats, labels within the classes."""
    if modality.read is None:
        raise InputError(f"{path}: modality {modality.name!r} has no file reader")
    try:
        array = modality.read(path)
    except InputError:
        raise
    except Exception as exc:  # a plugin's reader failing on a bad file is still a bad file
        raise InputError(f"{path}: unreadable ({type(exc).__name__}: {exc})") from None
    if array.dtype.kind == "f" and not np.isfinite(array).all():
        raise InputError(f"{path}: contains NaN or inf values")
    if modality.kind == "labels" and array.size and (array.min() < 0 or array.max() >= modality.channels):
        raise InputError(f"{path}: label values [{array.min()}, {array.max()}] outside the "
                         f"{modality.channels} classes of {modality.name!r}")
    return array


def epoch_and_index(item: int | tuple[int, int]) -> tuple[int, int]:
    """A dataset item: an index (epoch 0) or an `(epoch, index)` pair, as the training sampler yields them. The
    epoch travels with each index because a persistent loader worker keeps the copy of the dataset it started
    with: an epoch set on the dataset in the training process later would never reach it."""
    return item if isinstance(item, tuple) else (0, item)


class FolderDataset:
    """An indexable dataset of `{modality: tensor}` samples read from a multi-modal folder.

    Augmentation randomness is a pure function of `(seed, epoch, index)` (items are indices or `(epoch, index)`
    pairs: `epoch_and_index`), so runs repeat exactly and resume mid-epoch. With `skip_bad`, samples lacking a
    modality are left out and an unreadable sample is replaced by the next readable one (both counted in
    `skipped`); otherwise each is a one-line error naming the file.
    """

    def __init__(self, root: str | Path, modalities: Mapping[str, Modality], split: str = "train",
                 transform=None, skip_bad: bool = False, seed: int = 0) -> None:
        self.modalities = dict(modalities)
        self.index = scan_split(Path(root) / split, self.modalities)
        self.transform, self.skip_bad, self.seed = transform, skip_bad, seed
        self.skipped = sum(len(keys) for keys in self.index.missing.values()) if skip_bad else 0
        if self.index.missing and not skip_bad:
            name, keys = next(iter(self.index.missing.items()))
            total = len(set().union(*self.index.missing.values()))
            raise InputError(f"{self.index.root / name}: no file for {keys[0]!r} ({total} sample(s) lack a "
                             "modality; run `multimae data check` or pass --skip-bad)")
        if not self.index.keys:
            raise InputError(f"{self.index.root}: no samples found for modalities {', '.join(self.modalities)}")

    def __len__(self) -> int:
        return len(self.index.keys)

    def read(self, index: int) -> dict[str, np.ndarray]:
        key = self.index.keys[index]
        return {name: read_checked(self.index.files[name][key], m) for name, m in self.modalities.items()}

    def __getitem__(self, item: int | tuple[int, int]):
        epoch, index = epoch_and_index(item)
        for attempt in range(len(self)):
            i = (index + attempt) % len(self)
            try:
                sample = self.read(i)
                break
            except InputError:
                if not self.skip_bad:
                    raise
                self.skipped += 1
        else:
            raise InputError(f"{self.index.root}: no readable sample")
        if self.transform is None:
            return sample
        return self.transform(sample, np.random.default_rng([self.seed, epoch, index]))
