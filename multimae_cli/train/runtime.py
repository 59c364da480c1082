"""What both training loops share at run time: the device and precision, torchrun, `torch.compile`, the
progress bar, and saving progress when a run is stopped."""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from pathlib import Path

import torch

from ..config import RunConfig
from ..errors import ConfigError, MultiMAEError, TrainingStopped, one_line
from .distributed import DistInfo, EpochSampler, setup, teardown


@contextlib.contextmanager
def stops_saved(save: Callable[[], None], current_step: Callable[[], int], info: DistInfo, command: str, run: Path):
    """A training loop stopped by Ctrl-C or by a bad input met mid-run (a corrupt file) saves its progress and
    says how to resume. Under DDP a bad input is re-raised as it is: other ranks may be waiting in a collective,
    so no checkpoint barrier can be entered."""
    try:
        yield
    except KeyboardInterrupt:
        save()
        raise TrainingStopped(f"interrupted at step {current_step()}; checkpoint saved, continue with "
                              f"`multimae {command} --resume {run}`") from None
    except MultiMAEError as exc:
        step = current_step()
        if info.world > 1 or step == 0 or isinstance(exc, TrainingStopped):
            raise
        save()
        raise TrainingStopped(f"{one_line(exc)}; progress saved at step {step}: mend the input (or set "
                              f"data.skip_bad=true) and continue with `multimae {command} --resume {run}`") from None


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


def progress_bar(name: str, total: int, completed: int, disabled: bool):
    """A rich progress bar of training steps with a `stats` text field, and its task id."""
    from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

    bar = Progress(TextColumn("step {task.completed}/{task.total}"), BarColumn(), TextColumn("{task.fields[stats]}"),
                   TimeRemainingColumn(), disable=disabled)
    return bar, bar.add_task(name, total=total, completed=completed, stats="")


def compiled(module: torch.nn.Module, config: RunConfig) -> torch.nn.Module:
    """`module` under `torch.compile` when the run asks for it (`compile`, `compile_mode`), else itself."""
    if not config.compile or not hasattr(torch, "compile"):
        return module
    return torch.compile(module, mode=None if config.compile_mode == "default" else config.compile_mode)


def launch(device_name: str, body):
    """`body(device, info)` inside torch.distributed when launched by torchrun (one GPU per rank)."""
    device = resolve_device(device_name)
    info = setup(device.type)
    if device.type == "cuda":
        device = torch.device("cuda", info.local_rank)
        torch.cuda.set_device(device)
    try:
        return body(device, info)
    finally:
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

    sampler = EpochSampler(len(dataset), config.batch_size, info, config.seed)
    return sampler, make_loader(dataset, config.batch_size, sampler=sampler, workers=workers,
                                pin_memory=device.type == "cuda")
