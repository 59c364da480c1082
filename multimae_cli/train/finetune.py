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
from ..data.datasets import has_split, loader_workers
from ..data.shards import is_shards
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
from .card import write_model_card
from .distributed import DistInfo, average
from .evaluate import eval_loader, evaluate
from .optim import Optimization
from .runlog import RunLog, resolve_loggers
from .runtime import distributed, epoch_loader, launch, progress_bar, resolve_precision, stops_saved
from .window import LossWindow


def checkpoint_config(config: FinetuneConfig):
    """The model config stored in (or inferred from) `config.checkpoint`, with `num_heads` when given."""
    from ..formats.load import read_checkpoint

    return read_checkpoint(config.checkpoint, **({"num_heads": config.num_heads} if config.num_heads else {}))[1]


def build_model(config: FinetuneConfig, task: Task, num_outputs: int, record: dict[str, Any] | None = None):
    """The encoder (from `checkpoint`, or fresh from `preset` + `model`) with the task's head; `record` goes into
    its `task_info` next to the task, head and options."""
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
    task_info = {"task": task.name, "head": head, "head_options": config.head_options, "num_outputs": num_outputs,
                 **(record or {})}
    return build_task_model(backbone, task, head, num_outputs, config.head_options, task_info=task_info), head


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
    for name in [*(config.inputs or ()), *([task.target] if task.target else [])]:
        registry.modality(name)  # an unknown one: the error listing the known ones
    return task, registry.modalities()


# ---------------------------------------------------------------- fine-tuning


def finetune(config: FinetuneConfig, resume: str | Path | None = None, quiet: bool = False) -> dict[str, Any]:
    """Run (or resume) a fine-tuning run; returns a summary. Writes `runs/<name>/` (`last/`, `best/`)."""
    return launch(config.device, lambda device, info: _run(config, resume, quiet, device, info), config.threads)


def _open(config: FinetuneConfig, task: Task, known: dict, resume, info: DistInfo):
    """The model (encoder + head, `task_info` set), its run folder (None for a new run: made once the data is
    found good) and (resuming) the saved training state."""
    from ..formats.load import load_task_model

    torch.manual_seed(config.seed)
    if resume is not None:
        model, state = ckpt.reopen(Path(resume), config, info, load_task_model)
        if model is not None:
            return model, Path(resume), state
    else:
        ckpt.check_name_free(config)
    pretrained = checkpoint_config(config).inputs if config.checkpoint else ("rgb",)
    inputs = list(config.inputs or [n for n in pretrained if n != task.target] or ["rgb"])  # never its own target
    modalities = {n: known[n] for n in [*inputs, *([task.target] if task.target else [])]}
    classes = class_names(build_source(config, modalities, config.data.split, train=True)) \
        if task.kind == "classification" else None
    num_outputs = config.num_classes or task.num_outputs or (
        len(classes) if classes else declared_classes(config) or modalities[task.target].channels)
    record = {"classes": classes, "depth_scale": depth_scale(config), "reduce_zero_label": config.reduce_zero_label}
    model, _ = build_model(config.model_copy(update={"inputs": tuple(inputs)}), task, num_outputs, record)
    return model, Path(resume) if resume is not None else None, {}


def _datasets(config: FinetuneConfig, task: Task, model, modalities: dict, info: DistInfo, quiet: bool):
    """The training set and the validation set (None: no `val_split`, or its default folder is absent)."""
    info_ = model.task_info
    inputs, size = list(model.config.inputs), tuple(model.config.image_size)
    common = {"classes": info_.get("classes"), "seed": config.seed, "num_classes": info_["num_outputs"],
              "reduce_zero_label": info_["reduce_zero_label"]}
    readable = source_modalities(modalities, task, inputs)
    dataset = TaskDataset(build_source(config, readable, config.data.split, train=True), inputs, task, modalities,
                          size, train=True, crop_scale=config.data.crop_scale, hflip=config.data.hflip, **common)
    val_folder = Path(config.data.path or ".") / (config.val_split or "")
    if config.val_split and config.data.source == "folder" and not has_split(config.data.path, config.val_split):
        if config.val_split != FinetuneConfig.model_fields["val_split"].default:  # a typo must not skip evaluation
            what = "not a split of these shards" if is_shards(config.data.path) else "no such folder"
            raise InputError(f"val_split: {val_folder}: {what}")
        if info.is_main and not quiet:
            print(f"note: {val_folder} does not exist: training without evaluation", file=sys.stderr)
        return dataset, None
    if not config.val_split:
        return dataset, None
    val_source = build_source(config, readable, config.val_split, train=False)
    return dataset, TaskDataset(val_source, inputs, task, modalities, size, train=False, **common)


def _on_device(batch: dict, dataset: TaskDataset, task: Task, scale: float, zero: bool, mixup, device: torch.device):
    """A loader batch as the model and the loss take it: inputs normalised on the device, the target prepared,
    both mixed when mixup / CutMix is on."""
    inputs = to_device({k: v for k, v in batch.items() if k != TARGET}, dataset.input_modalities, device,
                       non_blocking=True)
    target = prepare_target(task, batch[TARGET], scale, zero).to(device, non_blocking=True)
    if mixup is not None:
        (name,) = inputs
        inputs[name], target = mixup(inputs[name], target)
    return inputs, target


def _run(config: FinetuneConfig, resume, quiet: bool, device: torch.device, info: DistInfo) -> dict[str, Any]:
    import torch.distributed as dist

    task, known = _resolve(config)
    loggers = resolve_loggers(config.loggers)
    model, run, state = _open(config, task, known, resume, info)
    inputs, num_outputs = list(model.config.inputs), model.task_info["num_outputs"]
    modalities = resolve_modalities(model.config, names=[*inputs, *([task.target] if task.target else [])])
    scale, zero = model.task_info["depth_scale"], model.task_info["reduce_zero_label"]
    dataset, val_set = _datasets(config, task, model, modalities, info, quiet)
    run = run or ckpt.open_run(config, f"finetune-{task.name}", info)
    model.backbone.set_grad_checkpointing(config.activation_checkpointing)
    (model.freeze_backbone() if config.freeze_encoder else model).to(device).train()
    mixup, criterion = build_mixup(config, task, inputs, num_outputs) if config.mixup else \
        (None, task.losses[config.loss or next(iter(task.losses))](config.loss_options))
    workers = loader_workers(config.data.workers)
    sampler, loader = epoch_loader(dataset, config, info, device, workers)
    total_steps = config.steps or max(1, math.ceil(config.epochs * sampler.batches_per_epoch))
    lr = config.resolved_lr(task.kind, config.batch_size * info.world)
    opt = Optimization(model, config.optim, lr, total_steps, resolve_precision(config.precision, device), device,
                       layer_decay=config.layer_decay)
    step, best = opt.restore(state), state.get("best")
    trained = distributed(model, config, info, device)
    metric_kind = task.metrics(num_outputs)
    saves = ckpt.SaveSchedule(config, info, device)
    losses = LossWindow(device)
    log = RunLog(run, loggers, config.model_dump(mode="json"), info.is_main)

    def save(folder: str = ckpt.LAST) -> None:
        losses.check(run)
        if info.is_main and folder == ckpt.LAST:
            ckpt.save_checkpoint(run, model, opt.state(step, best=best, config=config.model_dump(mode="json"),
                                                      first_loss=first_loss))
        elif info.is_main:
            ckpt.save_snapshot(run, folder, model)
        if info.world > 1:
            dist.barrier()
        if folder == ckpt.LAST:
            saves.saved()

    def validate(step: int) -> dict[str, float]:
        """Metrics over the whole validation set, recorded, and a preview picture of a few samples."""
        evaluation = evaluate(model, task, eval_loader(val_set, config.batch_size, info, workers),
                              val_set.input_modalities, num_outputs, device, opt.dtype, scale, zero)
        log.record({"step": step, **{f"val/{k}": v for k, v in evaluation.items()}})
        if info.is_main and task.target is not None:
            picture = run / "previews" / f"step-{step:06d}.png"
            write_preview(model, val_set, task, modalities, scale, zero, picture, device)
            log.image(step, "preview", picture)
        return evaluation

    bar, handle = progress_bar("finetune", total_steps, step, disabled=quiet or not info.is_main)
    first_loss, last_loss = state.get("first_loss"), None
    evaluation: dict[str, float] = {}
    with log, bar, stops_saved(save, lambda: step, info, "finetune", run, device, config.log_every) as stop:
        sampler.start_at(step)
        for batch in loader if step < total_steps else ():
            inputs_batch, target = _on_device(batch, dataset, task, scale, zero, mixup, device)
            with torch.autocast(device.type, dtype=opt.dtype or torch.float32, enabled=opt.dtype is not None):
                pred = trained(inputs_batch)
            loss = criterion(pred.float(), target)
            opt.scaler.scale(loss).backward()
            opt.step(step)
            step += 1
            losses.add(step, {"loss": loss})
            if step % config.log_every == 0 or step == total_steps:
                losses.check(run)
                record = average(losses.means(), info, device)
                first_loss = first_loss if first_loss is not None else record["loss"]
                last_loss = record["loss"]
                log.record({"step": step, **record, "lr": opt.lr})  # layer decay: the head's lr
                bar.update(handle, completed=step, stats=f"loss {record['loss']:.4f}  lr {opt.lr:.2e}")
            else:
                bar.update(handle, completed=step)
            if val_set is not None and (step == total_steps or step % config.eval_every == 0):
                evaluation = validate(step)
                score = evaluation[metric_kind.main]
                if best is None or (score > best if metric_kind.higher_is_better else score < best):
                    best = score
                    save(ckpt.BEST)
            if step == total_steps or saves.due(step):
                save()
            if step == total_steps:
                break
            stop.check(step)
    summary = {"run": str(run), "task": task.name, "steps": step, "first_loss": first_loss, "final_loss": last_loss,
               "metrics": evaluation, "main_metric": metric_kind.main, "best": best, "threads": torch.get_num_threads(),
               "checkpoint": str(run / (ckpt.BEST if (run / ckpt.BEST).is_dir() else ckpt.LAST) / "model.safetensors")}
    write_model_card(run, "finetune", config, model.config, summary, device, info)
    return summary
