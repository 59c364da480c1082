"""`multimae data check`: everything wrong with a multi-modal folder, before a run trips over it."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from ..errors import InputError
from ..plugin.modality import Modality
from .folder import find_splits, frame_problems, read_checked, scan_split
from .shards import check_shards, is_shards


def check_dataset(root: str | Path, modalities: Mapping[str, Modality], splits: list[str] | None = None) -> dict:
    """A report per split: counts, missing and extra files, unreadable files, shape problems. `clean` says
    whether nothing at all was found wrong."""
    root = Path(root)
    if is_shards(root):
        return check_shards(root, modalities, splits)
    splits = splits or find_splits(root, modalities)
    if not splits:
        raise InputError(f"{root}: no split folder with any of {', '.join(modalities)} (expected "
                         f"{root}/<split>/<modality>/...)")
    report: dict = {"root": str(root), "modalities": list(modalities), "splits": {}}
    for split in splits:
        problems: list[str] = []
        try:
            index = scan_split(root / split, modalities)
        except InputError as exc:
            report["splits"][split] = {"samples": 0, "problems": [str(exc)]}
            continue
        for name, keys in index.missing.items():
            problems += [f"{index.root / name}: no file for {key!r}" for key in keys]
        for name, paths in index.extra.items():
            problems += [f"{path}: not a {name} file (extensions: {', '.join(modalities[name].extensions)})"
                         for path in paths]
        problems += [f"duplicate sample {d}" for d in index.duplicates] + index.broken
        for key in index.keys:
            shapes = {}
            for name, modality in modalities.items():
                path = index.files[name][key]
                try:
                    shapes[name] = (path, read_checked(path, modality, index.classes).shape[:2])
                except InputError as exc:
                    problems.append(str(exc))
            problems += frame_problems(shapes)
        report["splits"][split] = {
            "samples": len(index.keys),
            "files": {name: len(found) for name, found in index.files.items()},
            "problems": problems,
        }
        if not index.keys:
            problems.append(f"{index.root}: no complete sample")
    report["clean"] = all(not s["problems"] for s in report["splits"].values())
    return report
