"""Fine-tuning: a task's head on a pretrained encoder, on one CPU or many GPUs under torchrun.

The encoder comes from any checkpoint `load_model` reads (native, official `.pth`, timm ViT), restricted to
the chosen inputs and resampled to the chosen size. Samples come from `data.tasks`; evaluation during training
is `train.evaluate`.
"""

from __future__ import annotations

import math
import sys
from pathlib import Path
from typing import Any

import torch

from ..config import FinetuneConfig
from ..data.datasets import loader_workers, make_loader
from ..data.tasks import (
    TARGET,
    TaskDataset,
    build_source,
    class_names,
    declared_classes,
    depth_scale,
    prepare_target,
    source_modalities,
)
from ..data.transforms import normalize_sample, to_device
from ..errors import ConfigError, InputError
from ..plugin.factory import build_task_model, create_model, resolve_modalities
from ..plugin.registry import get_registry
from ..plugin.task import Task
from . import checkpoint as ckpt
from .distributed import DistInfo, EpochSampler, average
from .evaluate import eval_loader, evaluate
from .optim import build_optimizer, build_schedule, optimizer_step
from .runtime import compiled, launch, progress_bar, resolve_precision, stops_saved
from .window import LossWindow


def checkpoint_config(config: FinetuneConfig):
    """The model config stored in (or inferred from) `config.checkpoint`, with `num_heads` when given."""
    from ..formats.load import read_checkpoint

    return read_checkpoint(config.checkpoint, **({"num_heads": config.num_heads} if config.num_heads else {}))[1]


def build_model(config: FinetuneConfig, task: Task, num_outputs: int):
    """The encoder (from `checkpoint`, or fresh from `preset` + `model`) with the task's head."""
    from ..formats.load import load_model

    overrides: dict[str, Any] = {"outputs": (), "drop_path_rate": config.drop_path_rate}
    if config.inputs:
        overrides["inputs"] = tuple(config.inputs)
    if config.image_size:
        overrides["image_size"] = tuple(config.image_size)
    if config.num_heads:
        overrides["num_heads"] = config.num_heads
    if config.checkpoint:
        stored = checkpoint_config(config)
        absent = [name for name in overrides.get("inputs", ()) if name not in stored.inputs]
        if absent:
            raise ConfigError(f"inputs: {', '.join(absent)} not in the checkpoint {config.checkpoint} "
                              f"(its inputs: {', '.join(stored.inputs)})")
        backbone = load_model(config.checkpoint, **overrides)
    else:
        from ..config import ModelConfig

        values = {**config.model, **overrides}
        values.setdefault("inputs", ("rgb",))
        grid = ModelConfig.from_preset(config.preset, **{**values, "num_encoded_tokens": 0}).grid
        backbone = create_model(ModelConfig.from_preset(
            config.preset, **{**values, "num_encoded_tokens": len(values["inputs"]) * grid[0] * grid[1]}))
    head = config.head or next(iter(task.heads))
    model = build_task_model(backbone, task, head, num_outputs, config.head_options)
    return model, head


@torch.no_grad()
def write_preview(model, dataset: TaskDataset, task: Task, modalities: dict, scale: float, reduce_zero_label: bool,
                  path: Path, device: torch.device) -> None:
    """Inputs, prediction and ground truth of the first two evaluation samples, drawn by the plugins."""
    from ..data.preview import preview_grid
    from ..io import write_image

    was_training = model.training
    model.eval()
    rows = []
    for index in range(min(2, len(dataset))):
        sample = normalize_sample(dataset[index], dataset.input_modalities)
        inputs = {name: sample[name][None].to(device) for name in dataset.inputs}
        pred = model(inputs)[0].float().cpu()
        truth = prepare_target(task, sample[TARGET], scale, reduce_zero_label)
        truth = torch.where(truth == 255, 0, truth) if not truth.is_floating_point() else truth
        rows.append([*((name, sample[name], f"{name} input") for name in dataset.inputs),
                     (task.target, pred, f"{task.target} predicted"), (task.target, truth, f"{task.target} truth")])
    model.train(was_training)
    path.parent.mkdir(exist_ok=True)
    size = tuple(model.config.image_size)
    scale_up = max(1, 128 // max(size))
    write_image(path, preview_grid(rows, modalities, cell=(size[0] * scale_up, size[1] * scale_up), titles=True))


def build_mixup(config: FinetuneConfig, task: Task, inputs: list[str], num_outputs: int):
    """timm's Mixup / CutMix (`mixup` holds its keyword arguments, e.g. mixup_alpha: 0.8, cutmix_alpha: 1.0,
    label_smoothing: 0.1) with the soft-target cross-entropy it needs. Classification on one input only: the
    mixed pairs of several modalities would have to share one draw, which timm's Mixup does not offer."""
    from timm.data import Mixup
    from timm.loss import SoftTargetCrossEntropy

    if task.kind != "classification":
        raise ConfigError(f"mixup: only for classification, not task {task.name!r}")
    if len(inputs) != 1:
        raise ConfigError(f"mixup: needs a single input, got {', '.join(inputs)}")
    if config.batch_size % 2:
        raise ConfigError(f"mixup: batch_size must be even, got {config.batch_size}")
    try:
        return Mixup(num_classes=num_outputs, **config.mixup), SoftTargetCrossEntropy()
    except TypeError as exc:
        raise ConfigError(f"mixup: {exc}") from None


def _resolve(config: FinetuneConfig) -> tuple[Task, dict]:
    registry = get_registry()
    task = registry.task(config.task)
    if config.optim.accum_steps != 1:
        raise ConfigError("optim.accum_steps: gradient accumulation is a pretraining option; raise batch_size")
    if config.loss is not None and config.loss not in task.losses:
        raise ConfigError(f"loss: {config.loss!r} is not a loss of task {task.name!r} "
                          f"(losses: {', '.join(task.losses)})")
    return task, registry.modalities()


# ---------------------------------------------------------------- fine-tuning


def finetune(config: FinetuneConfig, resume: str | Path | None = None, quiet: bool = False) -> dict[str, Any]:
    """Run (or resume) a fine-tuning run; returns a summary. Writes `runs/<name>/` (`last/`, `best/`)."""
    return launch(config.device, lambda device, info: _run(config, resume, quiet, device, info))


def _run(config: FinetuneConfig, resume, quiet: bool, device: torch.device, info: DistInfo) -> dict[str, Any]:
    import torch.distributed as dist

    from ..formats.load import load_task_model

    task, registry_modalities = _resolve(config)
    missing = [n for n in [*(config.inputs or ()), *([task.target] if task.target else [])]
               if n not in registry_modalities]
    if missing:
        get_registry().modality(missing[0])  # the unknown-modality error, listing the known ones
    torch.manual_seed(config.seed)
    state: dict[str, Any] = {}
    if resume is not None:
        run = Path(resume)
        folder = ckpt.find_checkpoint(run)
        model = load_task_model(folder / "model.safetensors")
        state = torch.load(folder / "state.pt", map_location="cpu", weights_only=True)
        if info.is_main:
            ckpt.truncate_metrics(run, state["step"])
        num_outputs, classes = model.task_info["num_outputs"], model.task_info.get("classes")
        inputs = list(model.config.inputs)
    else:
        inputs = list(config.inputs or (checkpoint_config(config).inputs if config.checkpoint else ["rgb"]))
        names = [*inputs, *([task.target] if task.target else [])]
        modalities = {n: registry_modalities[n] for n in names}
        classes = class_names(build_source(config, modalities, config.data.split, train=True)) \
            if task.kind == "classification" else None
        num_outputs = config.num_classes or task.num_outputs or (
            len(classes) if classes else declared_classes(config) or modalities[task.target].channels)
        model, head = build_model(config.model_copy(update={"inputs": tuple(inputs)}), task, num_outputs)
        model.task_info = {"task": task.name, "head": head, "head_options": config.head_options,
                           "num_outputs": num_outputs, "classes": classes, "depth_scale": depth_scale(config),
                           "reduce_zero_label": config.reduce_zero_label}
        run = ckpt.open_run(config, f"finetune-{task.name}", info)
    model_config = model.config
    modalities = resolve_modalities(model_config, names=[*inputs, *([task.target] if task.target else [])])
    scale, zero = model.task_info["depth_scale"], model.task_info["reduce_zero_label"]
    size = tuple(model_config.image_size)
    readable = source_modalities(modalities, task, inputs)
    train_source = build_source(config, readable, config.data.split, train=True)
    dataset = TaskDataset(train_source, inputs, task, modalities, size, train=True,
                          crop_scale=config.data.crop_scale, hflip=config.data.hflip, classes=classes, seed=config.seed,
                          num_classes=num_outputs, reduce_zero_label=zero)
    val_set = None
    val_folder = Path(config.data.path or ".") / (config.val_split or "")
    if config.val_split and config.data.source == "folder" and not val_folder.is_dir():
        if config.val_split != FinetuneConfig.model_fields["val_split"].default:  # a typo must not skip evaluation
            raise InputError(f"val_split: {val_folder}: no such folder")
        if info.is_main and not quiet:
            print(f"note: {val_folder} does not exist: training without evaluation", file=sys.stderr)
    elif config.val_split:
        val_source = build_source(config, readable, config.val_split, train=False)
        val_set = TaskDataset(val_source, inputs, task, modalities, size, train=False, classes=classes,
                              seed=config.seed, num_classes=num_outputs, reduce_zero_label=zero)
    model.backbone.set_grad_checkpointing(config.activation_checkpointing)
    if config.freeze_encoder:
        model.freeze_backbone()
    model.to(device).train()
    loss_name = config.loss or next(iter(task.losses))
    criterion = task.losses[loss_name](config.loss_options)
    mixup = None
    if config.mixup:
        mixup, criterion = build_mixup(config, task, inputs, num_outputs)

    sampler = EpochSampler(len(dataset), config.batch_size, info, config.seed)
    workers = loader_workers(config.data.workers)
    loader = make_loader(dataset, config.batch_size, sampler=sampler, workers=workers,
                         pin_memory=device.type == "cuda")
    total_steps = config.steps or max(1, math.ceil(config.epochs * sampler.batches_per_epoch))
    lr = config.resolved_lr(task.kind, config.batch_size * info.world)
    optimizer = build_optimizer(model, config.optim, lr, device, layer_decay=config.layer_decay)
    schedule = build_schedule(optimizer, config.optim, total_steps)
    dtype = resolve_precision(config.precision, device)
    scaler = torch.amp.GradScaler(device.type, enabled=dtype == torch.float16)
    best = state.get("best")
    if state:
        optimizer.load_state_dict(state["optimizer"])
        scaler.load_state_dict(state["scaler"])
        torch.set_rng_state(state["rng_cpu"])
    step = int(state.get("step", 0))
    trained = model
    if info.world > 1:
        trained = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None)
    trained = compiled(trained, config)
    metric_kind = task.metrics(num_outputs)

    def save(folder: str = ckpt.LAST) -> None:
        losses.check(run)
        if info.is_main:
            extra = {"step": step, "optimizer": optimizer.state_dict(), "scaler": scaler.state_dict(),
                     "rng_cpu": torch.get_rng_state(), "best": best}
            if folder == ckpt.LAST:
                ckpt.save_checkpoint(run, model, extra)
            else:
                ckpt.save_snapshot(run, folder, model)
        if info.world > 1:
            dist.barrier()
        if folder == ckpt.LAST:
            saves.saved()

    saves = ckpt.SaveSchedule(config, info, device)
    bar, handle = progress_bar("finetune", total_steps, step, disabled=quiet or not info.is_main)
    losses = LossWindow(device)
    first_loss = last_loss = None
    evaluation: dict[str, float] = {}
    with bar, stops_saved(save, lambda: step, info, "finetune", run):
        sampler.start_at(step)
        for batch in loader if step < total_steps else ():
            inputs_batch = to_device({k: v for k, v in batch.items() if k != TARGET},
                                     dataset.input_modalities, device, non_blocking=True)
            target = prepare_target(task, batch[TARGET], scale, zero).to(device, non_blocking=True)
            if mixup is not None:
                (name,) = inputs_batch
                inputs_batch[name], target = mixup(inputs_batch[name], target)
            with torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
                pred = trained(inputs_batch)
            loss = criterion(pred.float(), target)
            scaler.scale(loss).backward()
            optimizer_step(step, model, optimizer, schedule, scaler, config.optim.clip_grad)
            step += 1
            losses.add(step, {"loss": loss})
            if step % config.log_every == 0 or step == total_steps:
                losses.check(run)
                record = average(losses.means(), info, device)
                first_loss = first_loss if first_loss is not None else record["loss"]
                last_loss = record["loss"]
                if info.is_main:
                    head_lr = max(group["lr"] for group in optimizer.param_groups)  # layer decay scales the rest
                    ckpt.append_metrics(run, {"step": step, **record, "lr": head_lr})
                bar.update(handle, stats=f"loss {record['loss']:.4f}")
            bar.update(handle, completed=step)
            due = step == total_steps or step % config.eval_every == 0
            if val_set is not None and due:
                evaluation = evaluate(model, task, eval_loader(val_set, config.batch_size, info, workers),
                                      val_set.input_modalities, num_outputs, device, dtype, scale, zero)
                score = evaluation[metric_kind.main]
                if info.is_main:
                    ckpt.append_metrics(run, {"step": step, **{f"val/{k}": v for k, v in evaluation.items()}})
                if info.is_main and task.target is not None:
                    write_preview(model, val_set, task, modalities, scale, zero,
                                  run / "previews" / f"step-{step:06d}.png", device)
                better = best is None or (score > best if metric_kind.higher_is_better else score < best)
                if better:
                    best = score
                    save(ckpt.BEST)
            if step == total_steps or saves.due(step):
                save()
            if step == total_steps:
                break
    return {"run": str(run), "task": task.name, "steps": step, "first_loss": first_loss, "final_loss": last_loss,
            "metrics": evaluation, "main_metric": metric_kind.main, "best": best,
            "checkpoint": str(run / (ckpt.BEST if (run / ckpt.BEST).is_dir() else ckpt.LAST) / "model.safetensors")}


