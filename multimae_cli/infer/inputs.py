"""Reading the files a prediction starts from: images (or folders of them) and the extra inputs paired with each,
checked to belong together. Shared by `predict` and `features`."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from ..errors import ConfigError, InputError
from ..plugin.modality import Modality


def parse_inputs(values: list[str] | None) -> dict[str, Path]:
    """`--input` values, `MODALITY=PATH` each, as a mapping."""
    inputs: dict[str, Path] = {}
    for value in values or []:
        name, sep, path = value.partition("=")
        if not sep or not name.strip() or not path.strip():
            raise ConfigError(f"--input {value}: expected MODALITY=PATH, e.g. depth=depth.png")
        inputs[name.strip()] = Path(path.strip())
    return inputs


def list_images(paths: Sequence[str | Path], extensions: Sequence[str]) -> list[tuple[str, Path]]:
    """(key, file) for every given file and every matching file under given folders (key: relative path
    without extension, so outputs mirror the input tree)."""
    found: list[tuple[str, Path]] = []
    for entry in map(Path, paths):
        if entry.is_dir():
            files = sorted(p for p in entry.rglob("*") if p.is_file() and p.suffix.lower() in extensions
                           and not p.name.startswith("."))
            if not files:
                raise InputError(f"{entry}: no image files ({', '.join(extensions)}) in this folder")
            found += [(p.relative_to(entry).with_suffix("").as_posix(), p) for p in files]
        elif entry.is_file():
            found.append((entry.stem, entry))
        else:
            raise InputError(f"{entry}: no such file or folder")
    keys = [key for key, _ in found]
    if len(set(keys)) != len(keys):
        duplicate = next(key for key in keys if keys.count(key) > 1)
        raise InputError(f"{duplicate}: two inputs would write the same outputs; predict them separately")
    return found


def _extra_input(name: str, source: Path, key: str, single: bool, modality: Modality) -> Path:
    if source.is_file():
        if not single:
            raise InputError(f"--input {name}={source}: a single file pairs with a single image; give a folder")
        return source
    if source.is_dir():
        for extension in modality.extensions:
            candidate = source / f"{key}{extension}"
            if candidate.is_file():
                return candidate
        raise InputError(f"--input {name}={source}: no {name} file for {key!r} ({key}.{{"
                         f"{','.join(e.lstrip('.') for e in modality.extensions)}}})")
    raise InputError(f"--input {name}={source}: no such file or folder")


def read_sample(modalities: Mapping[str, Modality], primary: str, extra: Mapping[str, Path], key: str, path: Path,
                single: bool) -> dict[str, Any]:
    """One sample: the image and its extra inputs (a file for a single image, else a folder holding `key`), read
    by their plugins and checked to belong together."""
    files = {primary: path, **{name: _extra_input(name, source, key, single, modalities[name])
                               for name, source in extra.items()}}
    sample = {name: modalities[name].read(file) for name, file in files.items()}
    _check_sample(sample, files)
    return sample


def _check_sample(sample: Mapping[str, Any], files: Mapping[str, Path]) -> None:
    """Finite values, and every input the image's picture at some resolution; a problem names its own file."""
    import numpy as np

    first = next(iter(files.values()))
    height, width = next(iter(sample.values())).shape[:2]
    for name, array in sample.items():
        if array.dtype.kind == "f" and not np.isfinite(array).all():
            raise InputError(f"{files[name]}: {name} holds NaN or infinite values")
        h, w = array.shape[:2]
        if abs(h * width - w * height) > max(h, w):
            raise InputError(f"{files[name]}: {name} is {h}x{w}, which does not have the aspect of {first} "
                             f"({height}x{width})")
