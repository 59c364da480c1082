"""The loss values of a log window, kept on the device until a log step, a save or the end of the run."""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path

import torch

from ..errors import TrainingStopped


class LossWindow:
    """Loss values of the micro-batches since the last log step, read back in one transfer when needed.

    Reading a loss on the host (`.item()`, `.tolist()`) waits for the GPU to finish the step, so a read per step
    leaves the GPU idle while the host prepares and launches the next one. Here a step only stacks its values on
    the device; `settle` reads every pending one at once (before a log record, before a checkpoint, at the end)
    and reports the first micro-batch whose values are not finite, so a bad step is still named exactly and no
    checkpoint is written after it.
    """

    def __init__(self, device: torch.device | str = "cpu") -> None:
        self.device = torch.device(device)
        self.names: list[str] = []
        self.pending: list[tuple[int, torch.Tensor]] = []
        self.values: dict[str, list[float]] = {}

    def add(self, step: int, losses: Mapping[str, torch.Tensor]) -> None:
        """The losses of one micro-batch of optimiser step `step` (counted from 1), still on the device."""
        self.names = self.names or list(losses)
        self.pending.append((step, torch.stack([value.detach().float() for value in losses.values()])))

    def settle(self) -> tuple[int, dict[str, float]] | None:
        """Read the pending values into the window. Returns `(step, values)` of the first micro-batch with a
        non-finite value (those after it are dropped), else None."""
        if not self.pending:
            return None
        rows = torch.stack([values for _, values in self.pending]).tolist()
        steps = [step for step, _ in self.pending]
        self.pending = []
        for step, row in zip(steps, rows, strict=True):
            values = dict(zip(self.names, row, strict=True))
            if not all(math.isfinite(value) for value in row):
                return step, values
            for name, value in values.items():
                self.values.setdefault(name, []).append(value)
        return None

    def check(self, run: Path) -> None:
        """`settle`, and stop the run at a non-finite micro-batch, naming its step and each loss term. Under
        torch.distributed every rank stops at the earliest bad step of any rank (one that went on alone would wait
        for the others in its next collective until the timeout): every rank must call this at the same points."""
        import torch.distributed as dist

        bad = self.settle()
        step = bad[0] if bad is not None else math.inf
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            earliest = torch.tensor([float(step)], dtype=torch.float64, device=self.device)
            dist.all_reduce(earliest, op=dist.ReduceOp.MIN)
            step = earliest.item()
        if step == math.inf:
            return
        terms = "on another rank"
        if bad is not None and bad[0] == step:
            terms = ", ".join(f"{name.removeprefix('loss/')} {value:.4g}" for name, value in bad[1].items()
                              if name.startswith("loss/"))
        raise TrainingStopped(f"non-finite loss at step {int(step)}{': ' + terms if terms else ''}; the last good "
                              f"checkpoint is kept in {run}")

    def means(self) -> dict[str, float]:
        """The mean of each value over the settled micro-batches, and a new, empty window."""
        means = {name: sum(values) / len(values) for name, values in self.values.items()}
        self.values = {}
        return means
