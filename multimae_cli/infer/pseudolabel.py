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
import os
import platform
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

from ..data.folder import read_checked
from ..errors import ConfigError, InputError, PluginError
from ..io import atomic_write_bytes, publish
from ..plugin.modality import Modality
from ..plugin.teacher import Labeler, Teacher, TeacherRequest, TeacherSpec
from ..train.distributed import DistInfo, setup, teardown
from ..train.runtime import resolve_device

MANIFEST = "pseudolabel.json"
RGB_MODES = ("copy", "link", "symlink")


@dataclass
class Step:
    """One modality to make: its teacher, resolved and (once the checks pass) loaded."""

    modality: Modality
    spec: TeacherSpec
    teacher: Teacher
    labeler: Labeler | None = None


@dataclass
class Job:
    """One image of a batch: what is still to be made and the arrays read or made so far."""

    key: str
    source: Path
    todo: list[str] = field(default_factory=list)
    sample: dict[str, Any] = field(default_factory=dict)
    error: str | None = None


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


# ---------------------------------------------------------------- files


def list_rgb(rgb_dir: Path, extensions: Sequence[str]) -> list[tuple[str, Path]]:
    """(key, file) for every image below `rgb_dir`; key = relative path without extension."""
    if not rgb_dir.is_dir():
        raise InputError(f"{rgb_dir}: no such folder")
    found: dict[str, Path] = {}
    for path in sorted(rgb_dir.rglob("*")):
        if path.is_file() and path.suffix.lower() in extensions and not path.name.startswith("."):
            key = path.relative_to(rgb_dir).with_suffix("").as_posix()
            if key in found:
                raise InputError(f"{path}: same name as {found[key].name}; both would be sample {key!r}")
            found[key] = path
    if not found:
        raise InputError(f"{rgb_dir}: no image files ({', '.join(extensions)}) in this folder")
    return list(found.items())


def place_rgb(source: Path, target: Path, mode: str) -> None:
    """Copy, hard-link or symlink the source image into the dataset, atomically (a hard link across file
    systems falls back to a copy)."""
    if mode == "copy":
        atomic_write_bytes(target, source.read_bytes())
        return
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    os.close(fd)
    os.unlink(tmp)
    try:
        if mode == "symlink":
            os.symlink(source.resolve(), tmp)
            os.replace(tmp, target)
            return
        try:
            os.link(source, tmp)
        except OSError:
            shutil.copyfile(source, tmp)
            publish(tmp, target)
            return
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _valid(path: Path, modality: Modality) -> bool:
    try:
        read_checked(path, modality)
    except InputError:
        return False
    return True


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
        labelling = _Labelling(data_dir, known, rgb, steps, overwrite, rgb_mode)
        shown = (lambda done, total, rate: progress(min(total, done * info.world), total, rate * info.world)) \
            if progress and info.is_main else None  # rank 0's slice stands for all
        counts = _label_all(labelling, images[info.rank::info.world], batch_size, workers, skip_bad, shown,
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


def _label_all(labelling: _Labelling, images: Sequence[tuple[str, Path]], batch_size: int, workers: int,
               skip_bad: bool, progress: Callable[[int, int, float], None] | None, total: int) -> dict[str, Any]:
    """Label `images` batch by batch, reading the next batch while the teachers work on this one."""
    started = time.perf_counter()
    counts: dict[str, Any] = {"labelled": 0, "done_before": 0, "written": 0, "skipped": []}
    batches = [images[i:i + batch_size] for i in range(0, len(images), batch_size)]
    with ThreadPoolExecutor(workers) as pool:
        ahead = [pool.submit(labelling.prepare, key, source) for key, source in (batches[0] if batches else [])]
        for number in range(len(batches)):
            jobs = [future.result() for future in ahead]
            if number + 1 < len(batches):
                ahead = [pool.submit(labelling.prepare, key, source) for key, source in batches[number + 1]]
            errors = [job.error for job in jobs if job.error]
            if errors and not skip_bad:
                raise InputError(f"{errors[0]} (pass --skip-bad to skip unreadable images)")
            counts["skipped"] += errors
            counts["done_before"] += sum(1 for job in jobs if not job.error and not job.todo)
            work = [job for job in jobs if job.todo and not job.error]
            labelling.label(work)
            for future in [pool.submit(labelling.finish, job) for job in work]:
                future.result()
            counts["labelled"] += len(work)
            counts["written"] += sum(len(job.todo) for job in work)
            if progress:
                done = counts["labelled"] + counts["done_before"] + len(counts["skipped"])
                progress(done, total, counts["labelled"] / max(time.perf_counter() - started, 1e-9))
    return counts


def _barrier(info: DistInfo) -> None:
    if info.world > 1:
        import torch.distributed as dist

        dist.barrier()


def _gathered(counts: dict[str, Any], info: DistInfo) -> dict[str, Any]:
    """Every rank's counts summed (skipped files listed in image order across ranks)."""
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


class _Labelling:
    """One image's way through a run: what it still lacks (`prepare`, reading what the teachers need), the
    teachers' labels for a batch (`label`), and the files written (`finish`)."""

    def __init__(self, data_dir: Path, known: Mapping[str, Modality], rgb: Modality, steps: Sequence[Step],
                 overwrite: bool, rgb_mode: str) -> None:
        self.data_dir, self.known, self.rgb, self.steps = data_dir, known, rgb, steps
        self.overwrite, self.rgb_mode = overwrite, rgb_mode

    def target(self, key: str, name: str, source: Path) -> Path:
        extension = source.suffix.lower() if name == "rgb" else self.known[name].extensions[0]
        return self.data_dir / name / f"{key}{extension}"

    def prepare(self, key: str, source: Path) -> Job:
        """What this image still lacks, and its rgb plus any existing files the teachers still to run need."""
        job = Job(key, source)
        rgb_target = self.target(key, "rgb", source)
        if not (rgb_target.exists() and os.path.samefile(rgb_target, source)):
            if self.overwrite or not rgb_target.exists():
                job.todo.append("rgb")
            elif not _valid(rgb_target, self.rgb):
                job.error = f"{rgb_target}: exists but is not a valid rgb file (pass --overwrite to replace it)"
                return job
        for step in self.steps:
            path = self.target(key, step.modality.name, source)
            if self.overwrite or not path.exists():
                job.todo.append(step.modality.name)
            elif not _valid(path, step.modality):
                job.error = f"{path}: exists but is not a valid {step.modality.name} file (pass --overwrite)"
                return job
        if not job.todo:
            return job
        try:
            job.sample["rgb"] = read_checked(source, self.rgb)
            wanted = {need for step in self.steps if step.modality.name in job.todo for need in step.teacher.needs}
            for need in sorted(wanted - set(job.todo) - {"rgb"}):
                found = [self.data_dir / need / f"{key}{ext}" for ext in self.known[need].extensions]
                found = [p for p in found if p.is_file()]
                if not found:
                    raise InputError(f"{self.data_dir / need}: no {need} file for {key!r}, which a teacher needs")
                job.sample[need] = read_checked(found[0], self.known[need])
        except InputError as exc:
            job.error = str(exc)
        return job

    def label(self, work: Sequence[Job]) -> None:
        """Each teacher, in order, on the images that lack its modality (later teachers may read earlier ones')."""
        for step in self.steps:
            name = step.modality.name
            todo = [job for job in work if name in job.todo]
            if todo:
                for job, array in zip(todo, step.labeler.label([job.sample for job in todo]), strict=True):
                    _check_output(step, job, array)
                    job.sample[name] = array

    def finish(self, job: Job) -> None:
        for name in job.todo:
            path = self.target(job.key, name, job.source)
            path.parent.mkdir(parents=True, exist_ok=True)
            if name == "rgb":
                place_rgb(job.source, path, self.rgb_mode)
            else:
                self.known[name].write(path, job.sample[name])


def _check_output(step: Step, job: Job, array) -> None:
    """A teacher must answer at the image's own size (a plugin bug otherwise, named as such)."""
    height, width = job.sample["rgb"].shape[:2]
    if array is None or tuple(array.shape[:2]) != (height, width):
        shape = None if array is None else tuple(array.shape)
        raise PluginError(f"teacher {step.teacher.name} returned shape {shape} for {job.source} "
                          f"({height}x{width}); teachers must answer at the image's size")
