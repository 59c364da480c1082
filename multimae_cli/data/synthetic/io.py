"""Write synthetic scenes to the folder layout (`multimae data synth`) and draw preview grids of them."""

from __future__ import annotations

import json
import zlib
from collections.abc import Callable, Mapping
from concurrent.futures import ProcessPoolExecutor
from functools import partial
from pathlib import Path

from ...errors import InputError
from ...io import atomic_write_bytes, write_image
from ...plugin.modality import Modality
from .scenes import CLASSES, DEPTH_SCALE, render_scene

MODALITIES = ("rgb", "depth", "normals", "semseg")
SUBFOLDER = "scenes"
RGB_FORMATS = {  # rgb file suffix -> what dataset.json says of it (the other modalities are always PNG)
    "png": "8-bit RGB PNG (lossless)",
    "jpg": "JPEG, quality 95, as photo datasets (ImageNet) store rgb: lossy, 2.5x faster to decode than PNG",
}


def split_seed(seed: int, split: str) -> int:
    """The scene stream of a split: `train` uses `seed` itself (as the in-memory dataset does)."""
    return seed if split == "train" else seed + 1 + zlib.crc32(split.encode()) % 1_000_000


def _write_one(index: int, out: Path, split: str, seed: int, size: tuple[int, int],
               writers: Mapping[str, Callable], suffixes: Mapping[str, str]) -> None:
    scene = render_scene(split_seed(seed, split), index, size)
    scene["depth"] = scene["depth"] * DEPTH_SCALE
    for name, write in writers.items():
        write(out / split / name / SUBFOLDER / f"{index:06d}.{suffixes[name]}", scene[name])


def _remove_stale(target: Path, n: int, suffixes: Mapping[str, str]) -> None:
    """After an overwrite, the generator's files this run did not write (more scenes before, another rgb format),
    which would otherwise join the split or pair twice."""
    for name, suffix in suffixes.items():
        for path in (target / name / SUBFOLDER).iterdir():
            ours = path.stem.isdigit() and len(path.stem) == 6 and path.suffix in (".png", ".jpg")
            if ours and (int(path.stem) >= n or path.suffix != f".{suffix}"):
                path.unlink()


def write_synthetic(out: str | Path, n: int, size: tuple[int, int], modalities: Mapping[str, Modality],
                    split: str = "train", seed: int = 0, workers: int = 1, overwrite: bool = False,
                    progress: Callable[[int], None] | None = None, rgb_format: str = "png") -> dict:
    """Render `n` scenes into `out/<split>/<modality>/scenes/NNNNNN.png` (rgb as `rgb_format`: png or jpg)
    plus `out/dataset.json`. With `overwrite`, the split's earlier scene files are replaced (the stale ones
    removed once the new ones are written)."""
    out = Path(out)
    if n < 1:
        raise InputError(f"--n must be at least 1, got {n}")
    if rgb_format not in RGB_FORMATS:
        raise InputError(f"--rgb-format must be one of {', '.join(RGB_FORMATS)}, got {rgb_format!r}")
    suffixes = {name: rgb_format if name == "rgb" else "png" for name in MODALITIES}
    target = out / split
    if target.exists() and any(p.is_file() for p in target.rglob("*")) and not overwrite:
        raise InputError(f"{target}: already holds files (pass --overwrite to replace them)")
    if out.exists() and not out.is_dir():
        raise InputError(f"{out}: exists and is not a folder")
    writers = {name: modalities[name].write for name in MODALITIES}
    for name in MODALITIES:
        (target / name / SUBFOLDER).mkdir(parents=True, exist_ok=True)
    job = partial(_write_one, out=out, split=split, seed=seed, size=size, writers=writers, suffixes=suffixes)
    if workers > 1:
        with ProcessPoolExecutor(workers) as pool:
            for _ in pool.map(job, range(n), chunksize=8):
                progress and progress(1)
    else:
        for index in range(n):
            job(index)
            progress and progress(1)
    if overwrite:
        _remove_stale(target, n, suffixes)
    info_path = out / "dataset.json"
    info = json.loads(info_path.read_text()) if info_path.is_file() else {}
    info.update({
        "generator": "multimae synthetic scenes",
        "classes": list(CLASSES),
        "depth_scale": DEPTH_SCALE,
        "depth": "16-bit PNG, z-depth along the camera axis: metres = value / depth_scale",
        "normals": "8-bit RGB PNG of (n + 1) / 2 * 255, camera frame: x right, y up, z towards the camera",
        "semseg": "8-bit palette PNG whose indices are class ids into `classes`",
        "seed": seed,
    })
    info.setdefault("splits", {})[split] = {"scenes": n, "size": list(size), "stream": split_seed(seed, split),
                                         "rgb": RGB_FORMATS[rgb_format]}
    atomic_write_bytes(info_path, (json.dumps(info, indent=2) + "\n").encode())
    return info


def write_preview(path: str | Path, modalities: Mapping[str, Modality], size: tuple[int, int], split: str = "train",
                  seed: int = 0, count: int = 6) -> None:
    """A grid of the first scenes of a split, every modality side by side (depth, normals, semseg coloured)."""
    from ..preview import preview_grid
    from ..transforms import normalize_sample, to_tensor

    rows = []
    for index in range(count):
        scene = render_scene(split_seed(seed, split), index, size)
        sample = normalize_sample({name: to_tensor(scene[name], modalities[name]) for name in MODALITIES}, modalities)
        rows.append(list(sample.items()))
    write_image(path, preview_grid(rows, modalities))
