"""AdamW with weight-decay groups and a warmup + cosine schedule, from timm."""

from __future__ import annotations

import inspect

import torch
from timm.optim import create_optimizer_v2
from timm.scheduler import CosineLRScheduler

from ..config import OptimConfig
from ..errors import CheckpointError


def build_optimizer(model: torch.nn.Module, config: OptimConfig, lr: float, device: torch.device,
                    layer_decay: float | None = None) -> torch.optim.Optimizer:
    """AdamW. By default norms, biases, tokens and embeddings (`model.no_weight_decay()`) are not decayed;
    `decay_everything` reproduces the official pretraining, which decays every parameter."""
    extra = {}
    if device.type == "cuda" and "fused" in inspect.signature(torch.optim.AdamW).parameters:
        extra["fused"] = True
    return create_optimizer_v2(
        model, opt="adamw", lr=lr, weight_decay=config.weight_decay, betas=config.betas, eps=config.eps,
        filter_bias_and_bn=not config.decay_everything, layer_decay=layer_decay, **extra,
    )


def build_schedule(optimizer: torch.optim.Optimizer, config: OptimConfig, total_steps: int) -> CosineLRScheduler:
    """Linear warmup from 0, then cosine to `min_lr`, per optimiser step (the official schedule)."""
    warmup = config.warmup_steps if config.warmup_steps is not None else round(config.warmup_fraction * total_steps)
    warmup = min(warmup, max(total_steps - 1, 0))
    return CosineLRScheduler(  # t_initial >= 2: one step after warmup has the full lr either way, and timm warns at 1
        optimizer, t_initial=max(total_steps - warmup, 2), lr_min=config.min_lr, warmup_t=warmup,
        warmup_lr_init=0.0, warmup_prefix=True, t_in_epochs=False,
    )


def optimizer_step(step: int, model: torch.nn.Module, optimizer: torch.optim.Optimizer, schedule: CosineLRScheduler,
                   scaler: torch.amp.GradScaler, clip_grad: float | None) -> None:
    """One update: the lr for `step`, optional gradient clipping (on unscaled gradients), the (scaled) step."""
    schedule.step_update(step)
    if clip_grad:
        scaler.unscale_(optimizer)
        torch.nn.utils.clip_grad_norm_(model.parameters(), clip_grad)
    scaler.step(optimizer)
    scaler.update()
    optimizer.zero_grad(set_to_none=True)


class Optimization:
    """What both loops build the same way and a resume must restore: AdamW, its schedule, the autocast dtype
    and the gradient scaler. `state(step, **extra)` is the resumable state (RNGs included: the CPU one, and the
    CUDA one of `device`), `restore(state)` puts it back and returns the step to continue from."""

    def __init__(self, model: torch.nn.Module, config: OptimConfig, lr: float, total_steps: int, dtype,
                 device: torch.device, layer_decay: float | None = None) -> None:
        self.model, self.clip_grad, self.device, self.dtype = model, config.clip_grad, device, dtype
        self.optimizer = build_optimizer(model, config, lr, device, layer_decay=layer_decay)
        self.schedule = build_schedule(self.optimizer, config, total_steps)
        self.scaler = torch.amp.GradScaler(device.type, enabled=dtype == torch.float16)

    def step(self, step: int) -> None:
        optimizer_step(step, self.model, self.optimizer, self.schedule, self.scaler, self.clip_grad)

    @property
    def lr(self) -> float:
        """The largest group lr: the head's under layer decay, the lr under a plain schedule."""
        return max(group["lr"] for group in self.optimizer.param_groups)

    def state(self, step: int, **extra) -> dict:
        cuda = {"rng_cuda": torch.cuda.get_rng_state(self.device)} if self.device.type == "cuda" else {}
        return {"step": step, "optimizer": self.optimizer.state_dict(), "scaler": self.scaler.state_dict(),
                "rng_cpu": torch.get_rng_state(), **cuda, **extra}

    def restore(self, state: dict) -> int:
        if not state:
            return 0
        self._check_fits(state)
        self.optimizer.load_state_dict(state["optimizer"])
        self.scaler.load_state_dict(state["scaler"])
        torch.set_rng_state(state["rng_cpu"])
        if self.device.type == "cuda" and "rng_cuda" in state:
            torch.cuda.set_rng_state(state["rng_cuda"], self.device)
        return int(state["step"])

    def _check_fits(self, state: dict) -> None:
        """The saved optimiser state belongs to these parameters: a `model.safetensors` and a `state.pt` of two
        different runs would otherwise fail deep in the first step."""
        params = [p for group in self.optimizer.param_groups for p in group["params"]]
        saved = state["optimizer"].get("state", {})
        culprit = f"{state.get('folder', 'the checkpoint')}/state.pt"
        if len(state["optimizer"].get("param_groups", [])) != len(self.optimizer.param_groups):
            raise CheckpointError(f"{culprit}: its optimiser has other parameter groups than this model's "
                                  "(the checkpoint's two files come from different runs or settings)")
        for index, entry in saved.items():
            moment = entry.get("exp_avg") if isinstance(entry, dict) else None
            if not isinstance(index, int) or index >= len(params):
                raise CheckpointError(f"{culprit}: holds state for {len(saved)} parameters, the model has "
                                      f"{len(params)}")
            if moment is not None and moment.shape != params[index].shape:
                raise CheckpointError(f"{culprit}: parameter {index} has shape {tuple(moment.shape)} in the saved "
                                      f"optimiser but {tuple(params[index].shape)} in model.safetensors (the two "
                                      "files come from different runs)")
