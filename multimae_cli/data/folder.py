"""Multi-modal folder datasets: `root/<split>/<modality>/<subfolder>/<name>.<ext>`.

Modalities are paired by relative path without extension (the official code pairs by sorted index and
mis-pairs silently when a file is missing). Each file is read by its modality's plugin; every problem names
the file.
"""

from __future__ import annotations

import os
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
    broken: list[str] = field(default_factory=list)  # symbolic links that lead nowhere or in a circle
    classes: int | None = None  # the label classes `dataset.json` declares


def declared_classes(root: Path) -> int | None:
    """The number of label classes `root/dataset.json` lists under `classes`, if it does."""
    import json

    path = root / "dataset.json"
    if not path.is_file():
        return None
    try:
        classes = json.loads(path.read_text()).get("classes")
    except (ValueError, AttributeError) as exc:
        raise InputError(f"{path}: not a JSON object ({exc})") from None
    if classes is not None and not isinstance(classes, list):
        raise InputError(f"{path}: 'classes' must be a list of class names")
    return len(classes) if classes else None


def walk_files(folder: Path) -> tuple[list[Path], list[str]]:
    """Every file under `folder`, following symbolic links to folders (a dataset assembled from links is
    common), and the links that are broken or lead back into a folder already walked (each named once)."""
    files: list[Path] = []
    broken: list[str] = []
    seen: set[tuple[int, int]] = set()
    for top, dirs, names in os.walk(folder, followlinks=True):
        stat = os.stat(top)
        if (stat.st_dev, stat.st_ino) in seen:
            broken.append(f"{top}: symbolic link loop (leads back into a folder already read)")
            dirs.clear()
            continue
        seen.add((stat.st_dev, stat.st_ino))
        for name in names:
            path = Path(top, name)
            if path.is_file():
                files.append(path)
            elif path.is_symlink():
                broken.append(f"{path}: broken symbolic link (its target is missing or loops)")
    return sorted(files), broken


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
    broken: list[str] = []
    for name, modality in modalities.items():
        folder = root / name
        if not folder.is_dir():
            raise InputError(f"{folder}: missing folder for modality {name!r}")
        found: dict[str, Path] = {}
        extra[name] = []
        paths, bad_links = walk_files(folder)
        broken += bad_links
        for path in paths:
            if path.name.startswith("."):
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
                       {k: v for k, v in extra.items() if v}, duplicates, broken, declared_classes(root.parent))


def read_checked(path: Path, modality: Modality, classes: int | None = None, data: bytes | None = None
                 ) -> np.ndarray:
    """The plugin's `read` of `path`, or, given `data` (the bytes of a file named `path`: a shard member, an
    upload), its `decode` of them (its `read` of a temporary file when it has no `decode`); plus the checks every
    modality gets: finite floats, labels within the classes (the dataset's declared `classes` where it lists fewer
    than the modality has)."""
    if modality.read is None:
        raise InputError(f"{path}: modality {modality.name!r} has no file reader")
    try:
        if data is None:
            array = modality.read(path)
        elif modality.decode is not None:
            array = modality.decode(data, str(path))
        else:
            array = _read_through_file(modality, Path(path).suffix, data)
    except InputError:
        raise
    except Exception as exc:  # a plugin's reader failing on a bad file is still a bad file
        raise InputError(f"{path}: unreadable ({type(exc).__name__}: {exc})") from None
    if array.dtype.kind == "f" and not np.isfinite(array).all():
        raise InputError(f"{path}: contains NaN or inf values")
    limit = min(modality.channels, classes or modality.channels)
    if modality.kind == "labels" and array.size and (array.min() < 0 or array.max() >= limit):
        where = "dataset.json declares" if limit < modality.channels else f"of {modality.name!r}"
        raise InputError(f"{path}: label values [{array.min()}, {array.max()}] outside the {limit} classes {where}")
    return array


def _read_through_file(modality: Modality, suffix: str, data: bytes) -> np.ndarray:
    """For a plugin that only reads files: the bytes in a temporary file (in memory where /dev/shm is)."""
    import os
    import tempfile

    folder = "/dev/shm" if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK) else None
    with tempfile.NamedTemporaryFile(suffix=suffix, dir=folder) as file:
        file.write(data)
        file.flush()
        return modality.read(Path(file.name))


def find_splits(root: Path, modalities: Mapping[str, Modality]) -> list[str]:
    """Subfolders of `root` that hold at least one of the modality folders."""
    if not root.is_dir():
        raise InputError(f"{root}: no such folder")
    return sorted(p.name for p in root.iterdir() if p.is_dir() and any((p / m).is_dir() for m in modalities))


def frame_problems(shapes: Mapping[str, tuple[Path, tuple[int, int]]]) -> list[str]:
    """Files of one sample (`modality -> (path, (height, width))`) that do not show the first modality's picture
    at some resolution: their aspect differs by more than a pixel."""
    if not shapes:
        return []
    first, (_, (ref_h, ref_w)) = next(iter(shapes.items()))
    return [f"{path}: size {h}x{w} does not match {first} ({ref_h}x{ref_w})"
            for path, (h, w) in shapes.values() if abs(h * ref_w - w * ref_h) > max(h, w)]


def epoch_and_index(item: int | tuple[int, int]) -> tuple[int, int]:
    """A dataset item: an index (epoch 0) or an `(epoch, index)` pair, as the training sampler yields them. The
    epoch travels with each index because a persistent loader worker keeps the copy of the dataset it started
    with: an epoch set on the dataset in the training process later would never reach it."""
    return item if isinstance(item, tuple) else (0, item)


def augmented_item(dataset, item: int | tuple[int, int]):
    """Item `index` (or `(epoch, index)`) of a file dataset (`FolderDataset`, `ShardDataset`): its `read`, the
    next readable sample in its place with `skip_bad` (counted in `skipped`), then the augmentation drawn from
    `(seed, epoch, index)`."""
    epoch, index = epoch_and_index(item)
    for attempt in range(len(dataset)):
        try:
            sample = dataset.read((index + attempt) % len(dataset))
            break
        except InputError:
            if not dataset.skip_bad:
                raise
            dataset.skipped += 1
    else:
        raise InputError(f"{dataset.root}: no readable sample")
    if dataset.transform is None:
        return sample
    return dataset.transform(sample, np.random.default_rng([dataset.seed, epoch, index]))


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
        if self.index.broken and not skip_bad:
            raise InputError(f"{self.index.broken[0]} ({len(self.index.broken)} such link(s); run `multimae data "
                             "check` or pass --skip-bad)")
        if not self.index.keys:
            raise InputError(f"{self.index.root}: no samples found for modalities {', '.join(self.modalities)}")

    def __len__(self) -> int:
        return len(self.index.keys)

    @property
    def root(self) -> Path:
        return self.index.root

    def key(self, index: int) -> str:
        """Sample `index`'s key: its path under each modality folder, without suffix (`<class>/<name>`)."""
        return self.index.keys[index]

    def read(self, index: int) -> dict[str, np.ndarray]:
        key = self.index.keys[index]
        files, classes = {name: found[key] for name, found in self.index.files.items()}, self.index.classes
        sample = {name: read_checked(files[name], m, classes) for name, m in self.modalities.items()}
        problems = frame_problems({name: (files[name], array.shape[:2]) for name, array in sample.items()})
        if problems:
            raise InputError(problems[0])
        return sample

    def __getitem__(self, item: int | tuple[int, int]):
        return augmented_item(self, item)
