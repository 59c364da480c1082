"""Pseudo-labelling: turn any folder of rgb images into the multi-modal dataset `pretrain` reads.

MultiMAE needs no multi-modal dataset: depth, semantics, normals, ... are made from rgb by teachers (the paper
used DPT for depth and Mask2Former for semseg). Teachers are plugins (`register_teachers`); a spec
`MOD=NAME[:ARG][,KEY=VALUE...]` picks one per modality, and modalities without a spec get the teacher that
declares itself their default (normals from depth, edges from rgb). Teachers run in dependency order per
batch, so normals can be made from depth predicted moments earlier in the same run.

The output is `OUT/<split>/<modality>/<key>.<ext>`, `key` being the image's path below RGB_DIR without its
extension, plus `OUT/pseudolabel.json`, the manifest of each split's teachers and of versions. A run is
resumable: outputs already written and readable are kept (and reused as teacher inputs), so an interrupted
run picks up where it stopped. Nothing is overwritten without `overwrite`; every file is written atomically.
"""

from __future__ import annotations

import json
import platform
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from importlib import metadata
from pathlib import Path
from typing import Any

from ..errors import ConfigError, InputError, PluginError
from ..io import atomic_write_bytes
from ..plugin.modality import Modality
from ..plugin.teacher import Labeler, Teacher, TeacherRequest, TeacherSpec
from ..train.distributed import DistInfo, setup, teardown
from ..train.runtime import resolve_device
from .labelling import RGB_MODES, Labelling, Step, label_all, list_rgb

MANIFEST = "pseudolabel.json"


# ---------------------------------------------------------------- resolving teachers


def parse_teacher_options(values: Sequence[str]) -> dict[str, str]:
    """`MOD=SPEC` strings (the `--teacher` flags) as {modality: spec}."""
    found: dict[str, str] = {}
    for value in values:
        name, sep, spec = value.partition("=")
        if not sep or not name.strip() or not spec.strip():
            raise ConfigError(f"--teacher {value}: expected MODALITY=TEACHER[:ARG], e.g. depth=hf:models/dpt")
        if name.strip() in found:
            raise ConfigError(f"--teacher {value}: a teacher for {name.strip()} is already given")
        found[name.strip()] = spec.strip()
    return found


def resolve_steps(names: Sequence[str], specs: Mapping[str, str], teachers: Mapping[str, Teacher],
                  modalities: Mapping[str, Modality], available: set[str], data_dir: Path) -> list[Step]:
    """A teacher for every modality in `names`, ordered so each one's needs are made before it.

    `available` holds modalities already in the dataset (`data_dir`), readable as teacher inputs.
    """
    listing = ", ".join(teachers) or "none registered"
    for name in specs:
        if name not in names:
            raise ConfigError(f"--teacher {name}={specs[name]}: {name} is not among --modalities ({', '.join(names)})")
    made = set(names) | {"rgb"}
    steps: dict[str, Step] = {}
    for name in names:
        modality = modalities[name]
        if modality.write is None:
            raise ConfigError(f"--modalities {name}: the {name!r} plugin has no writer, so it cannot be saved")
        if name in specs:
            spec = TeacherSpec.parse(specs[name])
            if spec.name not in teachers:
                raise ConfigError(f"--teacher {name}={specs[name]}: no teacher named {spec.name!r} "
                                  f"(registered: {listing})")
            teacher = teachers[spec.name]
            if not teacher.can_make(name):
                raise ConfigError(f"--teacher {name}={specs[name]}: teacher {teacher.name} makes "
                                  f"{', '.join(teacher.produces)}, not {name}")
        else:
            defaults = [t for t in teachers.values() if name in t.default_for]
            ready = [t for t in defaults if set(t.needs) <= made | available]
            if not defaults:
                raise ConfigError(f"--modalities {name}: no teacher makes {name} by default; name one with "
                                  f"--teacher {name}=NAME[:ARG] (teachers: {listing}; see multimae pseudolabel --help)")
            teacher, spec = (ready or defaults)[0], TeacherSpec((ready or defaults)[0].name)
        missing = [need for need in teacher.needs if need not in made | available]
        if missing:
            raise ConfigError(f"--modalities {name}: teacher {teacher.name} needs {missing[0]}; add {missing[0]} to "
                              f"--modalities (with a --teacher) or put {missing[0]} files in {data_dir / missing[0]}")
        steps[name] = Step(modality, spec, teacher)
    return _in_dependency_order(steps)


def _in_dependency_order(steps: dict[str, Step]) -> list[Step]:
    ordered: list[Step] = []
    placing: list[str] = []

    def place(name: str) -> None:
        if any(step.modality.name == name for step in ordered):
            return
        if name in placing:
            raise ConfigError(f"teachers need each other in a circle: {' -> '.join([*placing, name])}")
        placing.append(name)
        for need in steps[name].teacher.needs:
            if need in steps:
                place(need)
        placing.pop()
        ordered.append(steps[name])

    for name in steps:
        place(name)
    return ordered


def _versions() -> dict[str, str]:
    """Versions of what made the labels: Python, multimae and the libraries the teachers loaded."""
    from .._version import __version__

    versions = {"python": platform.python_version(), "multimae": __version__}
    for module, dist in (("numpy", "numpy"), ("cv2", "opencv-python-headless"), ("torch", "torch"),
                         ("timm", "timm"), ("transformers", "transformers")):
        if module in sys.modules:
            try:
                versions[module] = metadata.version(dist)
            except metadata.PackageNotFoundError:
                versions[module] = getattr(sys.modules[module], "__version__", "unknown")
    return versions


def _read_manifest(path: Path) -> dict[str, Any]:
    if not path.is_file():
        return {}
    try:
        manifest = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise InputError(f"{path}: not a readable manifest ({exc}); move it away to start afresh") from None
    return manifest if isinstance(manifest, dict) else {}


# ---------------------------------------------------------------- the run


def pseudolabel(
    rgb_dir: str | Path,
    out: str | Path,
    modalities: Sequence[str],
    teachers: Mapping[str, str] | None = None,
    split: str = "train",
    batch_size: int = 8,
    workers: int = 2,
    device: str = "auto",
    rgb_mode: str = "copy",
    overwrite: bool = False,
    progress: Callable[[int, int, float], None] | None = None,
    skip_bad: bool = False,
) -> dict[str, Any]:
    """Make `modalities` for every image below `rgb_dir` and write them, with the images, to `out/<split>/`.

    `teachers` maps a modality to a teacher spec `NAME[:ARG][,KEY=VALUE...]` (e.g. `{"depth": "hf:models/dpt",
    "semseg": "multimae:run/best"}`); others get their default teacher. `workers` threads read and write files
    while teachers run; `progress(done, total, images_per_second)` is called after every batch. An unreadable
    image stops the run with an `InputError` naming it (the images before it are written, and a rerun goes on
    from there), as in `predict`; with `skip_bad` it is skipped and reported (`skipped`, `skipped_files`).
    Returns the run's summary; the manifest `out/pseudolabel.json` records teachers, their settings and
    versions.
    """
    from ..plugin.registry import get_registry

    rgb_dir, out = Path(rgb_dir), Path(out)
    data_dir = out / split
    _check_arguments(rgb_dir, out, data_dir, batch_size, workers, rgb_mode)
    registry = get_registry()
    names = list(dict.fromkeys(n for n in modalities if n != "rgb"))
    if not names:
        raise ConfigError("--modalities: name at least one modality to make besides rgb")
    rgb = registry.modality("rgb")
    for name in names:
        registry.modality(name)  # an unknown name fails here, listing the known ones
    known = registry.modalities()
    available = {p.name for p in data_dir.iterdir() if p.is_dir() and p.name in known} if data_dir.is_dir() else set()
    steps = resolve_steps(names, teachers or {}, registry.teachers(), known, available, data_dir)
    images = list_rgb(rgb_dir, rgb.extensions)
    manifest_path = out / MANIFEST
    manifest = _read_manifest(manifest_path)
    record = manifest.setdefault("splits", {}).setdefault(split, {})
    _check_earlier_teachers(manifest_path, record, steps, data_dir, overwrite)
    kind = resolve_device(device).type
    info = setup(kind)  # under torchrun: each rank labels its own slice of the images, on its own GPU
    try:
        _load_teachers(steps, f"cuda:{info.local_rank}" if info.world > 1 and kind == "cuda" else device)
        if info.is_main:
            for name in ["rgb", *names]:
                (data_dir / name).mkdir(parents=True, exist_ok=True)
            _record_teachers(record, steps, registry)
            manifest.update({"generator": "multimae pseudolabel", "versions": _versions()})
            record["source"] = str(rgb_dir)
            atomic_write_bytes(manifest_path, (json.dumps(manifest, indent=2) + "\n").encode())
        _barrier(info)
        started = time.perf_counter()
        labelling = Labelling(data_dir, known, rgb, steps, overwrite, rgb_mode)
        shown = (lambda done, total, rate: progress(min(total, done * info.world), total, rate * info.world)) \
            if progress and info.is_main else None  # rank 0's slice stands for all
        counts = label_all(labelling, images[info.rank::info.world], batch_size, workers, skip_bad, shown,
                            len(images))
        counts = _gathered(counts, info)
    finally:
        teardown()
    seconds = time.perf_counter() - started
    labelled = counts["labelled"]
    summary = {"source": str(rgb_dir), "out": str(data_dir), "modalities": ["rgb", *[s.modality.name for s in steps]],
               "teachers": {step.modality.name: str(step.spec) for step in steps}, "images": len(images),
               "labelled": labelled, "already_done": counts["done_before"], "skipped": len(counts["skipped"]),
               "skipped_files": counts["skipped"], "files_written": counts["written"], "seconds": round(seconds, 3),
               "images_per_s": round(labelled / seconds, 2) if labelled else 0.0, "manifest": str(manifest_path),
               "processes": info.world}
    if info.is_main:
        record.update({k: summary[k] for k in ("images", "skipped", "skipped_files")})
        record["complete"] = labelled + counts["done_before"] == len(images)
        atomic_write_bytes(manifest_path, (json.dumps(manifest, indent=2) + "\n").encode())
    return summary


def _barrier(info: DistInfo) -> None:
    if info.world > 1:
        import torch.distributed as dist

        dist.barrier()


def _gathered(counts: dict[str, Any], info: DistInfo) -> dict[str, Any]:
    """Every rank's counts summed (the skipped files of all ranks, sorted)."""
    if info.world == 1:
        return counts
    import torch.distributed as dist

    every: list[dict[str, Any]] = [{} for _ in range(info.world)]
    dist.all_gather_object(every, counts)
    return {"labelled": sum(c["labelled"] for c in every), "done_before": sum(c["done_before"] for c in every),
            "written": sum(c["written"] for c in every), "skipped": sorted(f for c in every for f in c["skipped"])}


def _check_arguments(rgb_dir: Path, out: Path, data_dir: Path, batch_size: int, workers: int, rgb_mode: str) -> None:
    if batch_size < 1 or workers < 1:
        raise ConfigError(f"--batch-size and --workers must be at least 1, got {batch_size} and {workers}")
    if rgb_mode not in RGB_MODES:
        raise ConfigError(f"--rgb {rgb_mode}: expected one of {', '.join(RGB_MODES)}")
    if not out.parent.is_dir():
        raise InputError(f"--out {out}: folder {out.parent} does not exist")
    if out.exists() and not out.is_dir():
        raise InputError(f"--out {out}: exists and is not a folder")
    if rgb_dir.is_dir() and data_dir.resolve().is_relative_to(rgb_dir.resolve()):
        raise ConfigError(f"--out {out}: the dataset would lie inside {rgb_dir}; pick a folder outside it")


def _check_earlier_teachers(manifest_path: Path, record: dict, steps: Sequence[Step], data_dir: Path,
                            overwrite: bool) -> None:
    """A modality already made by another teacher is not mixed with this one's labels unless `overwrite`."""
    for step in steps:
        earlier = record.get("teachers", {}).get(step.modality.name, {}).get("spec")
        folder = data_dir / step.modality.name
        if earlier and earlier != str(step.spec) and not overwrite and folder.is_dir() and any(folder.iterdir()):
            raise ConfigError(f"{manifest_path}: {step.modality.name} was made by {earlier}, not {step.spec} "
                              "(pass --overwrite to replace it, or write to another --out)")


def _load_teachers(steps: Sequence[Step], device: str) -> None:
    for step in steps:
        step.labeler = step.teacher.load(TeacherRequest(step.modality, step.spec.arg, step.spec.options, device))
        if not isinstance(step.labeler, Labeler):
            raise PluginError(f"teacher {step.teacher.name}: load returned {type(step.labeler).__name__}, "
                              "not a Labeler")


def _record_teachers(record: dict, steps: Sequence[Step], registry) -> None:
    """What made each modality, for the manifest: the spec, the teacher, its plugin and version, its info."""
    recorded = record.setdefault("teachers", {})
    for step in steps:
        origin = registry.origin("teachers", step.teacher.name) or {}
        recorded[step.modality.name] = {
            "spec": str(step.spec), "teacher": step.teacher.name, "needs": list(step.teacher.needs),
            "plugin": origin.get("plugin"), "plugin_version": origin.get("version"), **step.labeler.info,
        }


