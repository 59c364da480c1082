"""Fine-tuning and evaluation: a task's head on a pretrained encoder, on one CPU or many GPUs under torchrun.

The encoder comes from any checkpoint `load_model` reads (native, official `.pth`, timm ViT), restricted to
the chosen inputs and resampled to the chosen size. Evaluation accumulates metric sums over the whole split
(each rank a disjoint shard, all-reduced), at the labels' own resolution.
"""

from __future__ import annotations

import math
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..config import FinetuneConfig
from ..data.datasets import SyntheticDataset, make_loader
from ..data.folder import FolderDataset
from ..data.transforms import MultiModalTransform, to_tensor
from ..errors import ConfigError, InputError
from ..factory import create_model, resolve_modalities
from ..registry import get_registry
from ..task import Task, build_task_model
from . import checkpoint as ckpt
from .distributed import DistInfo, EpochSampler, average
from .optim import build_optimizer, build_schedule, optimizer_step
from .pretrain import TrainingStopped, launch, resolve_precision

TARGET = "target"


# ---------------------------------------------------------------- data


def _raw(tensor: torch.Tensor) -> torch.Tensor:
    """Targets keep their file units: loss and metrics see what the files hold."""
    return tensor


class TaskDataset:
    """Samples `{input: tensor, ..., "target": tensor}` from a multi-modal source.

    Training: one shared crop/flip, the target resampled by its modality's rules at full resolution and kept
    in file units. Evaluation: inputs resized to the model size, the target as read (its own resolution).
    Classification targets are the index of the sample's class folder (the first part of its key).
    """

    def __init__(self, source, inputs: list[str], task: Task, modalities: dict, size: tuple[int, int],
                 train: bool, crop_scale: tuple[float, float] = (0.2, 1.0), hflip: float = 0.5,
                 classes: list[str] | None = None, seed: int = 0, num_classes: int | None = None,
                 reduce_zero_label: bool = False) -> None:
        self.source, self.inputs, self.task, self.train, self.seed = source, inputs, task, train, seed
        self.classes, self.num_classes, self.reduce_zero_label = classes, num_classes, reduce_zero_label
        transformed = {name: modalities[name] for name in inputs}
        self.target_modality = None
        if task.target is not None:
            self.target_modality = replace(modalities[task.target], stride=1, normalize=_raw)
            if train:
                transformed[TARGET] = self.target_modality
        self.transform = MultiModalTransform(transformed, size, train=train, scale=crop_scale, hflip=hflip)
        self.epoch = 0

    def __len__(self) -> int:
        return len(self.source)

    def _check_labels(self, labels: np.ndarray, index: int) -> None:
        """Label ids must be classes (or 255, ignored); with `reduce_zero_label` ids run one higher."""
        limit = self.num_classes + (1 if self.reduce_zero_label else 0)
        bad = labels[(labels >= limit) & (labels != 255)]
        if bad.size:
            where = getattr(self.source, "index", None)
            name = where.files[self.task.target][where.keys[index]] if where is not None else f"sample {index}"
            raise InputError(f"{name}: label {int(bad.max())} outside the {self.num_classes} classes of task "
                             f"{self.task.name!r} (ids 0-{limit - 1}, 255 ignored; set num_classes?)")

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        raw = self.source.read(index)
        sample = {name: raw[name] for name in self.inputs}
        if self.task.target is not None and self.train:
            sample[TARGET] = raw[self.task.target]
        if self.target_modality is not None and self.target_modality.kind == "labels" and self.num_classes:
            self._check_labels(raw[self.task.target], index)
        out = self.transform(sample, np.random.default_rng([self.seed, self.epoch, index]))
        if self.task.target is None:
            out[TARGET] = torch.tensor(self.classes.index(self.source.index.keys[index].split("/")[0]))
        elif not self.train:
            out[TARGET] = to_tensor(raw[self.task.target], self.target_modality)
        return out


def class_names(source) -> list[str]:
    """Class folders of a folder dataset (the first part of every sample key), sorted."""
    names = sorted({key.split("/")[0] for key in source.index.keys if "/" in key})
    if len(names) < 2:
        raise InputError(f"{source.index.root}: classification needs samples in class folders "
                         f"(<modality>/<class>/<name>), found {len(names)} class(es)")
    return names


def eval_collate(samples):
    """Stack inputs; targets of different sizes (labels at their own resolution) stay a list."""
    batch = {name: torch.stack([s[name] for s in samples]) for name in samples[0] if name != TARGET}
    targets = [s[TARGET] for s in samples]
    same = all(t.shape == targets[0].shape for t in targets)
    batch[TARGET] = torch.stack(targets) if same else targets
    return batch


def build_source(config: FinetuneConfig, modalities: dict, split: str, train: bool):
    """The raw sample source of a split: synthetic scenes (a split is its own scene stream) or a folder."""
    data = config.data
    if data.source == "synthetic":
        from ..data.synth_io import split_seed

        size = data.render_size or max(config_size(config))
        length = data.synthetic_scenes if train else data.val_scenes
        return SyntheticDataset(modalities, length, size, seed=split_seed(config.seed, split))
    return FolderDataset(data.path, modalities, split=split, skip_bad=data.skip_bad, seed=config.seed)


def config_size(config: FinetuneConfig) -> tuple[int, int]:
    size = config.image_size or config.model.get("image_size", 224)
    return (size, size) if isinstance(size, int) else tuple(size)


def depth_scale(config: FinetuneConfig) -> float:
    """File units per metre: the config's, else the folder's `dataset.json`, else 1 (synthetic: metres)."""
    if config.depth_scale is not None:
        return config.depth_scale
    if config.data.source == "folder":
        import json

        info = Path(config.data.path) / "dataset.json"
        if info.is_file():
            return float(json.loads(info.read_text()).get("depth_scale", 1.0))
    return 1.0


def declared_classes(config: FinetuneConfig) -> int | None:
    """The label classes a dataset declares: the synthetic scenes' list, or `classes` in a folder's
    `dataset.json`."""
    if config.data.source == "synthetic":
        from ..data.synthetic import CLASSES

        return len(CLASSES)
    import json

    info = Path(config.data.path) / "dataset.json"
    if info.is_file():
        classes = json.loads(info.read_text()).get("classes")
        return len(classes) if classes else None
    return None


def build_model(config: FinetuneConfig, task: Task, num_outputs: int):
    """The encoder (from `checkpoint`, or fresh from `preset` + `model`) with the task's head."""
    from ..formats import load_model

    overrides: dict[str, Any] = {"outputs": (), "drop_path_rate": config.drop_path_rate}
    if config.inputs:
        overrides["inputs"] = tuple(config.inputs)
    if config.image_size:
        overrides["image_size"] = tuple(config.image_size)
    if config.checkpoint:
        from ..formats import read_checkpoint

        _, stored = read_checkpoint(config.checkpoint)
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


def prepare_target(task: Task, target, scale: float, reduce_zero_label: bool):
    """File-space target(s) -> what loss and metrics take."""
    if isinstance(target, list):
        return [prepare_target(task, t, scale, reduce_zero_label) for t in target]
    if task.prepare_target is not None:
        target = task.prepare_target(target, scale)
    if reduce_zero_label:  # ADE20K style: 0 is "other" and ignored, classes shift down by one
        target = torch.where(target == 0, torch.full_like(target, 255), target - 1)
    return target


# ---------------------------------------------------------------- evaluation


@torch.no_grad()
def evaluate(model, task: Task, loader, num_outputs: int, device: torch.device, dtype, scale: float,
             reduce_zero_label: bool) -> dict[str, float]:
    """The task's metrics over the whole loader (all ranks' shards summed)."""
    metrics = task.metrics(num_outputs)
    was_training = model.training
    model.eval()
    for batch in loader:
        inputs = {k: v.to(device, non_blocking=True) for k, v in batch.items() if k != TARGET}
        with torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
            pred = model(inputs).float()
        target = prepare_target(task, batch[TARGET], scale, reduce_zero_label)
        if isinstance(target, list):
            for i, one in enumerate(target):
                metrics.update(pred[i:i + 1], one[None].to(device))
        else:
            metrics.update(pred, target.to(device))
    model.train(was_training)
    metrics.sync()
    return metrics.compute()


def shard(length: int, info: DistInfo) -> list[int]:
    """This rank's disjoint share of an evaluation set (every sample counted exactly once overall)."""
    return list(range(info.rank, length, info.world))


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
        sample = dataset[index]
        inputs = {name: sample[name][None].to(device) for name in dataset.inputs}
        pred = model(inputs)[0].float().cpu()
        truth = prepare_target(task, sample[TARGET], scale, reduce_zero_label)
        truth = torch.where(truth == 255, 0, truth) if not truth.is_floating_point() else truth
        rows.append([*((name, sample[name]) for name in dataset.inputs), (task.target, pred),
                     (task.target, truth)])
    model.train(was_training)
    path.parent.mkdir(exist_ok=True)
    size = tuple(model.config.image_size)
    scale_up = max(1, 128 // max(size))
    write_image(path, preview_grid(rows, modalities, cell=(size[0] * scale_up, size[1] * scale_up)))


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


def _eval_loader(dataset, batch_size: int, info: DistInfo, workers: int):
    from torch.utils.data import DataLoader, Subset

    return DataLoader(Subset(dataset, shard(len(dataset), info)), batch_size=batch_size, shuffle=False,
                      num_workers=workers, collate_fn=eval_collate)


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

    from ..formats import load_task_model

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
        inputs = list(config.inputs) if config.inputs else None
        probe_inputs = inputs or (["rgb"] if not config.checkpoint else None)
        if probe_inputs is None:
            from ..formats import read_checkpoint

            probe_inputs = list(read_checkpoint(config.checkpoint)[1].inputs)
        inputs = probe_inputs
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
    train_source = build_source(config, modalities, config.data.split, train=True)
    dataset = TaskDataset(train_source, inputs, task, modalities, size, train=True,
                          crop_scale=config.data.crop_scale, hflip=config.data.hflip, classes=classes, seed=config.seed,
                          num_classes=num_outputs, reduce_zero_label=zero)
    val_set = None
    if config.val_split:
        try:
            val_source = build_source(config, modalities, config.val_split, train=False)
        except InputError:
            if config.data.source == "synthetic":
                raise
            val_source = None  # a folder without this split: no evaluation during training
        if val_source is not None:
            val_set = TaskDataset(val_source, inputs, task, modalities, size, train=False, classes=classes,
                                  seed=config.seed, num_classes=num_outputs, reduce_zero_label=zero)
    model.to(device).train()
    loss_name = config.loss or next(iter(task.losses))
    criterion = task.losses[loss_name](config.loss_options)
    mixup = None
    if config.mixup:
        mixup, criterion = build_mixup(config, task, inputs, num_outputs)

    sampler = EpochSampler(len(dataset), config.batch_size, info, config.seed)
    loader = make_loader(dataset, config.batch_size, sampler=sampler, workers=config.data.workers,
                         pin_memory=device.type == "cuda")
    total_steps = config.steps or max(1, math.ceil(config.epochs * sampler.batches_per_epoch))
    lr = config.optim.lr or config.optim.blr * config.batch_size * info.world / 256
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
    if config.compile and hasattr(torch, "compile"):
        trained = torch.compile(trained)
    metric_kind = task.metrics(num_outputs)

    def save(folder: str = ckpt.LAST) -> None:
        if info.is_main:
            extra = {"step": step, "optimizer": optimizer.state_dict(), "scaler": scaler.state_dict(),
                     "rng_cpu": torch.get_rng_state(), "best": best}
            if folder == ckpt.LAST:
                ckpt.save_checkpoint(run, model, extra)
            else:
                ckpt.save_snapshot(run, folder, model)
        if info.world > 1:
            dist.barrier()

    from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

    bar = Progress(TextColumn("step {task.completed}/{task.total}"), BarColumn(), TextColumn("{task.fields[stats]}"),
                   TimeRemainingColumn(), disable=quiet or not info.is_main)
    handle = bar.add_task("finetune", total=total_steps, completed=step, stats="")
    losses: list[float] = []
    first_loss = last_loss = None
    evaluation: dict[str, float] = {}
    with bar:
        try:
            while step < total_steps:
                epoch, start_batch = divmod(step, sampler.batches_per_epoch)
                sampler.set_epoch(epoch, start_batch)
                dataset.set_epoch(epoch)
                for batch in loader:
                    inputs_batch = {k: v.to(device, non_blocking=True) for k, v in batch.items() if k != TARGET}
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
                    value = loss.item()
                    if not math.isfinite(value):
                        raise TrainingStopped(f"non-finite loss at step {step}; the last good checkpoint is kept "
                                              f"in {run}")
                    losses.append(value)
                    if step % config.log_every == 0 or step == total_steps:
                        record = average({"loss": sum(losses) / len(losses)}, info, device)
                        first_loss = first_loss if first_loss is not None else record["loss"]
                        last_loss = record["loss"]
                        if info.is_main:
                            ckpt.append_metrics(run, {"step": step, **record, "lr": optimizer.param_groups[0]["lr"]})
                        losses = []
                        bar.update(handle, stats=f"loss {record['loss']:.4f}")
                    bar.update(handle, completed=step)
                    due = step == total_steps or step % config.eval_every == 0
                    if val_set is not None and due:
                        evaluation = evaluate(model, task, _eval_loader(val_set, config.batch_size, info, 0),
                                              num_outputs, device, dtype, scale, zero)
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
                    if step % config.checkpoint_every == 0 or step == total_steps:
                        save()
                    if step == total_steps:
                        break
        except KeyboardInterrupt:
            save()
            raise TrainingStopped(f"interrupted at step {step}; checkpoint saved, continue with "
                                  f"`multimae finetune --resume {run}`") from None
    return {"run": str(run), "task": task.name, "steps": step, "first_loss": first_loss, "final_loss": last_loss,
            "metrics": evaluation, "main_metric": metric_kind.main, "best": best,
            "checkpoint": str(run / (ckpt.BEST if (run / ckpt.BEST).is_dir() else ckpt.LAST) / "model.safetensors")}


def evaluate_checkpoint(checkpoint: str | Path, data: str | Path | None = None, split: str = "val",
                        batch_size: int = 16, device: str = "auto", workers: int = 0,
                        synthetic_scenes: int = 64, seed: int = 0) -> dict[str, Any]:
    """Metrics of a fine-tuned checkpoint on a split of a folder dataset (or `synthetic_scenes` scenes of the
    split's synthetic stream when `data` is None), accumulated over the whole split; correct under torchrun
    (shards summed)."""
    from ..config import DataConfig
    from ..formats import load_task_model


    def body(torch_device: torch.device, info: DistInfo) -> dict[str, Any]:
        model = load_task_model(checkpoint).to(torch_device)
        task = get_registry().task(model.task_info["task"])
        inputs = list(model.config.inputs)
        modalities = resolve_modalities(model.config, names=[*inputs, *([task.target] if task.target else [])])
        source_config = DataConfig(source="folder", path=str(data)) if data else \
            DataConfig(val_scenes=synthetic_scenes)
        config = FinetuneConfig(task=task.name, data=source_config, seed=seed,
                                image_size=tuple(model.config.image_size))
        source = build_source(config, modalities, split, train=False)
        classes = model.task_info.get("classes")
        if task.kind == "classification":
            found = class_names(source)
            if found != classes:
                raise InputError(f"{data}: class folders {found} differ from the checkpoint's {classes}")
        dataset = TaskDataset(source, inputs, task, modalities, tuple(model.config.image_size), train=False,
                              classes=classes, seed=seed, num_classes=model.task_info["num_outputs"],
                              reduce_zero_label=model.task_info["reduce_zero_label"])
        loader = _eval_loader(dataset, batch_size, info, workers)
        metrics = evaluate(model, task, loader, model.task_info["num_outputs"], torch_device,
                           resolve_precision("auto", torch_device), model.task_info["depth_scale"],
                           model.task_info["reduce_zero_label"])
        return {"checkpoint": str(checkpoint), "task": task.name, "split": split, "samples": len(dataset),
                "metrics": metrics}

    return launch(device, body)


@torch.no_grad()
def constant_baseline(task: Task, dataset: TaskDataset, num_outputs: int, scale: float = 1.0,
                      reduce_zero_label: bool = False) -> dict[str, float]:
    """Metrics of the best constant guess, chosen with the evaluation set's own labels (so at least as strong
    as one chosen on training data): its mean depth / mean normal, or its most frequent class everywhere.
    A fine-tuned model should beat it."""
    targets = [prepare_target(task, dataset[i][TARGET], scale, reduce_zero_label) for i in range(len(dataset))]
    metrics = task.metrics(num_outputs)
    if task.kind == "classification":
        counts = torch.bincount(torch.stack(targets), minlength=num_outputs)
        logits = torch.nn.functional.one_hot(counts.argmax(), num_outputs).float()
        for target in targets:
            metrics.update(logits[None], target[None])
        return metrics.compute()
    if targets[0].is_floating_point():
        values = torch.cat([t.flatten(1) if t.ndim == 3 else t.flatten()[None] for t in targets], dim=1)
        valid = torch.isfinite(values).all(0) & (values.norm(dim=0) > 0)
        constant = values[:, valid].mean(dim=1)
        for target in targets:
            shape = target.shape if target.ndim == 3 else (1, *target.shape)
            metrics.update(constant.view(-1, 1, 1).expand(shape)[None], target.view(shape)[None])
        return metrics.compute()
    labels = torch.cat([t.flatten() for t in targets])
    majority = torch.bincount(labels[labels != 255], minlength=num_outputs).argmax()
    for target in targets:
        metrics.update(torch.full_like(target, int(majority))[None], target[None])
    return metrics.compute()
