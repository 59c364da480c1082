"""What both training loops share at run time: the device and precision, torchrun, `torch.compile`, the
progress bar, and saving progress when a run is stopped."""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from ..config import RunConfig
from ..errors import ConfigError, MultiMAEError, OutputError, TrainingStopped, one_line
from .distributed import DistInfo, EpochSampler, setup, teardown


class _StopRequested(Exception):
    """Raised by `StopSignals.check` at a step boundary once a stop signal arrived."""


class StopSignals:
    """SIGINT (Ctrl-C, or `kill -INT`, also for a run in the background) and SIGTERM (what SLURM, Kubernetes and
    torchrun send before a kill) ask the loop to stop. It does so at the next step boundary, where weights,
    optimiser, RNGs and step agree, so the checkpoint it saves resumes bit for bit; under torchrun every rank
    learns of it at the same step, a logging step (`every`): agreeing costs a collective and a host sync, which a
    GPU step should not pay each time. A second signal stops at once, without saving."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self, info: DistInfo, device: torch.device, every: int) -> None:
        self.info, self.device, self.every = info, device, every
        self.received: str | None = None
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> StopSignals:
        if threading.current_thread() is threading.main_thread():  # signal handlers live in the main thread only
            self._previous = {number: signal.signal(number, self._handle) for number in self.SIGNALS}
        return self

    def __exit__(self, *exc_info) -> None:
        for number, handler in self._previous.items():
            signal.signal(number, handler)

    def _handle(self, number: int, frame) -> None:
        if self.received is not None:
            raise KeyboardInterrupt
        self.received = signal.Signals(number).name

    def check(self, step: int) -> None:
        """After `step`: stop here if this process (under torchrun: any rank, at logging steps) received a signal."""
        requested = self.received is not None
        if self.info.world > 1:
            if step % self.every:
                return
            flag = torch.tensor([float(requested)], device=self.device)
            torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX)
            requested = bool(flag.item())
        if requested:
            raise _StopRequested


@contextlib.contextmanager
def stops_saved(save: Callable[[], None], current_step: Callable[[], int], info: DistInfo, command: str, run: Path,
                device: torch.device, every: int):
    """A training loop stopped by a signal (`StopSignals`, yielded: the loop calls its `check()` after each
    step) or by a bad input met mid-run (a corrupt file) saves its progress and says how to resume. Under DDP a
    bad input is re-raised as it is: other ranks may be waiting in a collective, so no checkpoint barrier can be
    entered."""
    resume = f"`multimae {command} --resume {run}`"
    signals = StopSignals(info, device, every)
    with signals:
        try:
            yield signals
        except _StopRequested:
            save()
            what = "interrupted" if signals.received in (None, "SIGINT") else f"stopped by {signals.received}"
            raise TrainingStopped(f"{what} at step {current_step()}; checkpoint saved, continue with {resume}") \
                from None
        except KeyboardInterrupt:
            raise TrainingStopped(f"interrupted twice at step {current_step()}: stopped without saving; the last "
                                  f"checkpoint is kept, continue with {resume}") from None
        except RuntimeError:
            if signals.received is None:
                raise
            save()  # the signal also stopped the loader's workers while the loop waited for a batch
            raise TrainingStopped(f"stopped by {signals.received} at step {current_step()}; checkpoint saved, "
                                  f"continue with {resume}") from None
        except OutputError as exc:  # a save failed: trying another would fail alike
            raise TrainingStopped(f"{exc}; the last complete checkpoint is kept: make room, then continue with "
                                  f"{resume}") from None
        except MultiMAEError as exc:
            step = current_step()
            if info.world > 1 or step == 0 or isinstance(exc, TrainingStopped):
                raise
            save()
            raise TrainingStopped(f"{one_line(exc)}; progress saved at step {step}: mend the input (or set "
                                  f"data.skip_bad=true) and continue with {resume}") from None


def resolve_device(name: str) -> torch.device:
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device: cuda requested but no CUDA GPU is available")
    return torch.device("cuda" if name == "cuda" or (name == "auto" and torch.cuda.is_available()) else "cpu")


def resolve_precision(precision: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype, or None for fp32. `auto`: bf16 on GPUs that support it, fp32 on CPUs (where bf16
    autocast is many times slower)."""
    if precision == "auto":
        return torch.bfloat16 if device.type == "cuda" and torch.cuda.is_bf16_supported() else None
    return {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": None}[precision]


class PlainProgress:
    """Progress off a terminal (SLURM, nohup, CI, a pipe): one plain line per log interval on stderr, which
    `grep` and `tail -f` can follow, instead of a bar nobody sees until the run ends."""

    def __init__(self, name: str, total: int, completed: int) -> None:
        self.name, self.total, self.start = name, total, completed
        self.began = time.perf_counter()

    def __enter__(self) -> PlainProgress:
        return self

    def __exit__(self, *exc_info) -> None:
        return None

    def update(self, task: int, completed: int | None = None, stats: str | None = None) -> None:
        if stats is None or completed is None:
            return
        elapsed = time.perf_counter() - self.began
        done = completed - self.start
        eta = (self.total - completed) * elapsed / done if done > 0 else 0.0
        minutes, seconds = divmod(round(eta), 60)
        print(f"{self.name} step {completed}/{self.total}  {stats}  eta {minutes}m{seconds:02d}s", file=sys.stderr,
              flush=True)


def progress_bar(name: str, total: int, completed: int, disabled: bool):
    """Training progress on stderr and its task id: a rich bar with a `stats` field on a terminal, else one plain
    line per log interval (`PlainProgress`); nothing when `disabled`. Call `update(task, completed=, stats=)`
    with `stats` at log steps."""
    from rich.console import Console
    from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

    console = Console(stderr=True)
    if not disabled and not console.is_terminal:
        return PlainProgress(name, total, completed), 0
    bar = Progress(TextColumn("step {task.completed}/{task.total}"), BarColumn(), TextColumn("{task.fields[stats]}"),
                   TimeRemainingColumn(), console=console, disable=disabled)
    return bar, bar.add_task(name, total=total, completed=completed, stats="")


def compiled(module: torch.nn.Module, config: RunConfig) -> torch.nn.Module:
    """`module` under `torch.compile` when the run asks for it (`compile`, `compile_mode`), else itself."""
    if not config.compile or not hasattr(torch, "compile"):
        return module
    return torch.compile(module, mode=None if config.compile_mode == "default" else config.compile_mode)


def launch(device_name: str, body, threads: int | str = "auto"):
    """`body(device, info)` inside torch.distributed when launched by torchrun (one GPU per rank), with torch's
    intra-op threads set by `threads` (`RunConfig.threads`; auto: `cpus_per_process()` unless OMP_NUM_THREADS
    is set) for its duration."""
    from ..data.datasets import cpus_per_process

    device = resolve_device(device_name)
    info = setup(device.type)
    if device.type == "cuda":
        device = torch.device("cuda", info.local_rank)
        torch.cuda.set_device(device)
    before = torch.get_num_threads()
    if threads != "auto":
        torch.set_num_threads(int(threads))
    elif "OMP_NUM_THREADS" not in os.environ:  # which torch honours: the user's choice stands
        torch.set_num_threads(cpus_per_process())
    try:
        return body(device, info)
    finally:
        torch.set_num_threads(before)
        teardown()


def distributed(module: torch.nn.Module, config: RunConfig, info: DistInfo, device: torch.device) -> torch.nn.Module:
    """`module` as the loop calls it: under DDP when several processes run, then compiled when asked."""
    if info.world > 1:
        module = torch.nn.parallel.DistributedDataParallel(module, device_ids=[device.index] if device.type == "cuda"
                                                           else None)
    return compiled(module, config)


def epoch_loader(dataset, config: RunConfig, info: DistInfo, device: torch.device, workers: int):
    """The loop's sampler (this rank's share of each epoch's order, a function of the seed; `start_at` resumes
    mid-epoch) and the loader that feeds it."""
    from ..data.datasets import make_loader
    from ..data.shards import ShardDataset, ShardSampler

    shards = getattr(dataset, "source", dataset)  # fine-tuning samples wrap the dataset they are read from
    if isinstance(shards, ShardDataset) and config.data.shuffle_buffer > 0:
        sampler = ShardSampler(shards, config.batch_size, info.rank, info.world, config.seed,
                               config.data.shuffle_buffer)
    else:
        sampler = EpochSampler(len(dataset), config.batch_size, info, config.seed)
    return sampler, make_loader(dataset, config.batch_size, sampler=sampler, workers=workers, seed=config.seed,
                                pin_memory=device.type == "cuda")
