"""Run folders and resumable checkpoints, written so that a crash at any moment loses nothing written before.

`runs/<name>/last/` holds `model.safetensors` (a native checkpoint: `multimae predict` and `load_model` read
it) and `state.pt` (optimiser, schedule, scaler, RNG states, step: tensors and plain containers only, read
back with `weights_only=True`). A new checkpoint is written into a temporary folder and swapped in by renames;
until the swap completes the previous `last/` (or `last.prev/`) stays loadable.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import torch

from ..config import RunConfig
from ..errors import CheckpointError, ConfigError
from ..formats.load import save_model
from ..io import atomic_write_bytes, save_torch, writing
from .distributed import DistInfo

LAST, PREVIOUS, BEST = "last", "last.prev", "best"


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def refuse_existing(run: Path) -> None:
    """An existing run folder is never reused silently."""
    if run.exists():
        raise ConfigError(f"{run}: run folder already exists (pass --resume {run} to continue it, or another --name)")


def check_name_free(config) -> None:
    """Before any work: a `--name` already taken is refused (checked again when the folder is made)."""
    if config.name:
        refuse_existing(Path(config.out_dir) / config.name)


def create_run_dir(out_dir: str | Path, name: str) -> Path:
    """A new run folder."""
    run = Path(out_dir) / name
    refuse_existing(run)
    run.mkdir(parents=True)
    return run


def open_run(config, prefix: str, info) -> Path:
    """A new run folder `out_dir/<name>` (default `<prefix>-<time>`; every rank uses rank 0's name), with
    its `config.yaml` written by rank 0."""
    import time

    name = config.name or time.strftime(f"{prefix}-%Y%m%d-%H%M%S")
    if info.world > 1:  # ranks may start in different seconds
        import torch.distributed as dist

        shared = [name]
        dist.broadcast_object_list(shared, src=0)
        name = shared[0]
    run = Path(config.out_dir) / name
    if info.is_main:
        import yaml

        run = create_run_dir(config.out_dir, name)
        text = yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False)
        try:
            atomic_write_bytes(run / "config.yaml", text.encode())
        except BaseException:
            shutil.rmtree(run, ignore_errors=True)  # an empty folder would block the name
            raise
    return run


def saved_config(cls, run: str | Path):
    """The config a run folder was started with (for `--resume`)."""
    import yaml

    from ..config import build_config

    path = Path(run) / "config.yaml"
    if not Path(run).is_dir():
        raise ConfigError(f"{run}: no such run folder")
    if not path.is_file():
        raise ConfigError(f"{path}: no such file (is {run} a run folder?)")
    return build_config(cls, yaml.safe_load(path.read_text()))


def remove_stale_saves(run: Path) -> None:
    """Temporary `.last-*` folders left by saves that were killed half-way (the complete `last/` is kept)."""
    for stale in run.glob(".last-*"):
        shutil.rmtree(stale, ignore_errors=True)


def save_checkpoint(run: Path, model, state: dict[str, Any]) -> Path:
    """Write model + training state as `run/last/`, keeping the previous one until the new one is complete."""
    remove_stale_saves(run)
    with writing(run / LAST):
        return _swap_in(run, model, state)


def _swap_in(run: Path, model, state: dict[str, Any]) -> Path:
    tmp = Path(tempfile.mkdtemp(dir=run, prefix=".last-"))
    try:
        tmp.chmod(0o777 & ~_umask())  # mkdtemp's folders are private
        save_model(model, tmp / "model.safetensors")
        save_torch(state, tmp / "state.pt")
        last, previous = run / LAST, run / PREVIOUS
        if previous.exists():
            shutil.rmtree(previous)
        if last.exists():
            last.rename(previous)
        tmp.rename(last)
        if previous.exists():
            shutil.rmtree(previous)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return run / LAST


class SaveSchedule:
    """When a training loop writes `last/`: every `steps` steps, or once `seconds` have passed since the last
    save. Under torchrun rank 0 reads the clock at logging steps and broadcasts its answer, so every rank saves
    at the same step (the save ends in a barrier)."""

    def __init__(self, config: RunConfig, info: DistInfo, device: torch.device) -> None:
        self.seconds = config.checkpoint_seconds
        self.steps = None if self.seconds is not None else int(config.checkpoint_every)
        self.log_every, self.info, self.device = config.log_every, info, device
        self.last = time.monotonic()

    def due(self, step: int) -> bool:
        if self.steps is not None:
            return step % self.steps == 0
        if self.info.world == 1:
            return time.monotonic() - self.last >= self.seconds
        if step % self.log_every:
            return False
        flag = torch.tensor([float(time.monotonic() - self.last >= self.seconds)], device=self.device)
        torch.distributed.broadcast(flag, 0)
        return bool(flag.item())

    def saved(self) -> None:
        self.last = time.monotonic()


def save_snapshot(run: Path, name: str, model) -> Path:
    """Write the model alone as `run/<name>/model.safetensors` (e.g. `best/`), replacing it atomically."""
    folder = run / name
    folder.mkdir(exist_ok=True)
    save_model(model, folder / "model.safetensors")
    return folder


def latest_checkpoint(run: Path) -> Path | None:
    """The newest complete checkpoint folder of a run, if it has one yet."""
    for name in (LAST, PREVIOUS):
        folder = run / name
        if (folder / "model.safetensors").is_file() and (folder / "state.pt").is_file():
            return folder
    return None


def find_checkpoint(run: str | Path) -> Path:
    """The newest complete checkpoint folder of a run."""
    run = Path(run)
    if not run.is_dir():
        raise CheckpointError(f"{run}: no such run folder")
    folder = latest_checkpoint(run)
    if folder is None:
        raise CheckpointError(f"{run}: holds no complete checkpoint ({LAST}/ with model.safetensors and state.pt)")
    return folder


def reopen(run: Path, config, info: DistInfo, load) -> tuple[Any, dict[str, Any]]:
    """(model read by `load`, training state) to continue `run`, its settings checked unchanged. A run killed
    before its first save has only its `config.yaml`: it starts again from step 0 with it, saying so, and
    `(None, {})` is returned for the caller to build a fresh model."""
    if not run.is_dir():
        raise CheckpointError(f"{run}: no such run folder")
    folder = latest_checkpoint(run)
    if info.is_main:
        remove_stale_saves(run)
    if folder is None:
        if info.is_main:
            print(f"note: {run} holds no complete checkpoint yet (stopped before its first save): starting it "
                  "again from step 0 with its config.yaml", file=sys.stderr)
            truncate_metrics(run, 0)
        return None, {}
    model, state = load(folder / "model.safetensors"), load_state(folder)
    check_unchanged(run, state.get("config"), config)
    if info.is_main:
        truncate_metrics(run, state["step"])
    return model, {**state, "folder": folder}


def load_state(folder: Path) -> dict[str, Any]:
    """The training state of a checkpoint folder (tensors and plain values only: nothing in it can run code)."""
    try:
        with warnings.catch_warnings():  # torch's notes on foreign pickles: the one line below says it all
            warnings.simplefilter("ignore")
            return torch.load(folder / "state.pt", map_location="cpu", weights_only=True)
    except Exception as exc:
        raise CheckpointError(f"{folder / 'state.pt'}: unreadable training state ({type(exc).__name__}): cut short, "
                              "or not written by multimae (objects in it are never loaded)") from None


def truncate_metrics(run: Path, last_step: int) -> None:
    """Drop records logged after `last_step` (by a run that died after its last checkpoint)."""
    path = run / "metrics.jsonl"
    if not path.is_file():
        return
    kept = []
    for line in path.read_text().splitlines():
        try:
            record = json.loads(line)
        except ValueError:  # half a line: the process was killed while writing it
            continue
        if isinstance(record, dict) and record.get("step", 0) <= last_step:
            kept.append(line)
    atomic_write_bytes(path, ("\n".join(kept) + "\n" if kept else "").encode())


def _flat(values: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested settings as `a.b` keys."""
    flat: dict[str, Any] = {}
    for name, item in values.items():
        key = f"{prefix}{name}"
        flat.update(_flat(item, key + ".") if isinstance(item, dict) and item else {key: item})
    return flat


def check_unchanged(run: Path, started: dict[str, Any] | None, config) -> None:
    """A resumed run trains with the settings it started with: `config.yaml` edited in between is refused with
    the keys that differ (silently ignoring the edits, or mixing two recipes in one run, would both mislead)."""
    if started is None:  # a checkpoint from before the settings were recorded in it
        return
    now, then = _flat(config.model_dump(mode="json")), _flat(started)
    changed = sorted(key for key in now.keys() | then.keys() if now.get(key) != then.get(key))
    if changed:
        shown = ", ".join(f"{key} {then.get(key)!r} -> {now.get(key)!r}" for key in changed[:4])
        raise ConfigError(f"{run / 'config.yaml'}: changed since the run started: {shown}"
                          f"{' and more' if len(changed) > 4 else ''}; a run resumes with the settings it started "
                          "with: restore them, or start a new run from its checkpoint")
