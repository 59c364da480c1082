"""One image's way through a pseudo-labelling run: what it lacks, the teachers' labels for a batch, the files
written (`Labelling`), batch after batch with reading overlapped (`label_all`). `pseudolabel` runs it."""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..data.folder import read_checked
from ..errors import InputError, PluginError
from ..io import atomic_write_bytes, publish
from ..plugin.modality import Modality
from ..plugin.teacher import Labeler, Teacher, TeacherSpec

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


class Labelling:
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


def label_all(labelling: Labelling, images: Sequence[tuple[str, Path]], batch_size: int, workers: int,
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
