"""Multi-modal masked pretraining: the paper's run, on one CPU or many GPUs under torchrun.

Every source of randomness is a function of the seed and the position in the run (data order and
augmentation of (seed, epoch, index), masks of (seed, micro-batch)), so a resumed run continues bit for bit
and N processes train exactly like one process with the same global batch.
"""

from __future__ import annotations

import contextlib
import math
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..config import PretrainConfig
from ..data.datasets import SyntheticDataset, has_split, loader_workers, open_dataset
from ..data.transforms import MultiModalTransform, to_device
from ..formats.load import load_model
from ..model.losses import PretrainStep
from ..model.masking import random_masks
from ..plugin.factory import create_model, create_objective, pretrain_model_config, resolve_modalities
from . import checkpoint as ckpt
from .card import write_model_card
from .distributed import DistInfo, average
from .optim import Optimization
from .runlog import RunLog, resolve_loggers
from .runtime import distributed, epoch_loader, launch, progress_bar, resolve_precision, stops_saved
from .window import LossWindow


def build_dataset(config: PretrainConfig, modalities: dict, image_size: tuple[int, int]):
    transform = MultiModalTransform(modalities, image_size, scale=config.data.crop_scale, hflip=config.data.hflip)
    if config.data.source == "synthetic":
        render = config.data.render_size or image_size
        return SyntheticDataset(modalities, config.data.synthetic_scenes, render, transform, seed=config.seed)
    return open_dataset(config.data.path, modalities, split=config.data.split, transform=transform,
                        skip_bad=config.data.skip_bad, seed=config.seed)


def micro_batch_masks(model_config, micro_batch: int, info: DistInfo, batch_size: int,
                      device: torch.device, seed: int) -> dict[str, torch.Tensor]:
    """This rank's rows of the global micro-batch's masks, drawn from (seed, micro-batch) alone."""
    grid = model_config.grid[0] * model_config.grid[1]
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(seed * 2**32 + micro_batch)
        masks = random_masks(batch_size * info.world, len(model_config.inputs), grid, model_config.num_encoded_tokens,
                             model_config.alphas, model_config.sample_tasks_uniformly, device)
    rows = masks[info.rank * batch_size:(info.rank + 1) * batch_size]
    return dict(zip(model_config.inputs, rows.split(grid, dim=1), strict=True))


def preview(model, dataset, config: PretrainConfig, modalities: dict, path: Path, device: torch.device) -> Path:
    """Two fixed samples, a row each, every column titled: the visible part of every input, every output's
    prediction from them, every other output predicted from the first input alone (whole, as `predict` does),
    and the ground truth."""
    from ..data.preview import preview_grid
    from ..io import write_image

    model_config = model.config
    fixed = MultiModalTransform(modalities, model_config.image_size, train=False)
    samples = [fixed(dataset.read(i), np.random.default_rng(0)) for i in range(min(2, len(dataset)))]
    batch = to_device({name: torch.stack([s[name] for s in samples]) for name in modalities}, modalities, device)
    inputs = {name: batch[name] for name in model_config.inputs}
    source = model_config.inputs[0]
    outputs = resolve_modalities(model_config)
    cross = [name for name in model_config.outputs if name != source and outputs[name].source == name]
    was_training = model.training
    model.eval()
    with torch.no_grad(), torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(config.seed)
        preds, masks = model(inputs)
        from_source = model.decode(model.encode({source: inputs[source]}, mask_inputs=False), cross) if cross else {}
    model.train(was_training)
    gh, gw = model_config.grid
    rows = []
    for i in range(len(samples)):
        row = []
        for name in model_config.inputs:
            data = batch[name][i]
            keep = 1 - masks[name][i].view(gh, gw).to(data.dtype if data.is_floating_point() else torch.long)
            keep = keep.repeat_interleave(data.shape[-2] // gh, 0).repeat_interleave(data.shape[-1] // gw, 1)
            row.append((name, data * keep, f"{name} visible"))
        row += [(name, preds[name][i].float(), f"{name} predicted") for name in model_config.outputs]
        row += [(name, from_source[name][i].float(), f"{name} from {source}") for name in cross]
        row += [(name, batch[name][i], f"{name} truth") for name in modalities]
        rows.append(row)
    drawable = {**outputs, **modalities}
    scale = max(1, 128 // max(model_config.image_size))  # small images are drawn at least 128 px wide
    cell = (model_config.image_size[0] * scale, model_config.image_size[1] * scale)
    write_image(path, preview_grid(rows, drawable, cell=cell, titles=True))
    return path


def held_out_dataset(config: PretrainConfig, modalities: dict, image_size):
    """Samples never trained on: the synthetic `val` stream (`data.val_scenes` scenes, as fine-tuning's
    `data.tasks.build_source` picks it; not called here, which would add an import floor) or the folder's `val`
    split; None when the folder has none."""
    from ..data.synthetic.io import split_seed

    if config.data.source == "synthetic":
        render = config.data.render_size or image_size
        return SyntheticDataset(modalities, config.data.val_scenes, render, seed=split_seed(config.seed, "val"))
    if has_split(config.data.path, "val"):
        return open_dataset(config.data.path, modalities, split="val", skip_bad=config.data.skip_bad)
    return None


def pretrain(config: PretrainConfig, resume: str | Path | None = None, quiet: bool = False) -> dict[str, Any]:
    """Run (or resume) a pretraining run; returns a summary. Writes `runs/<name>/` on rank 0."""
    return launch(config.device, lambda device, info: _run(config, resume, quiet, device, info), config.threads)


def _open(config: PretrainConfig, resume, info: DistInfo):
    """The model, its run folder (None for a new run: made once the data is found good) and (resuming) the
    saved training state."""
    torch.manual_seed(config.seed)  # the same initial weights on every rank
    if resume is None:
        ckpt.check_name_free(config)
        return create_model(pretrain_model_config(config)), None, {}
    run = Path(resume)
    model, state = ckpt.reopen(run, config, info, load_model)
    return model or create_model(pretrain_model_config(config)), run, state


def _data_modalities(model_config) -> dict:
    """Every modality whose data a step reads: the inputs and the sources of the outputs (rgb for norm_rgb)."""
    outputs = resolve_modalities(model_config)
    names = list(dict.fromkeys([*model_config.inputs, *(outputs[o].source for o in model_config.outputs)]))
    return resolve_modalities(model_config, names=names)


def _run(config: PretrainConfig, resume, quiet: bool, device: torch.device, info: DistInfo) -> dict[str, Any]:
    import torch.distributed as dist

    loggers = resolve_loggers(config.loggers)
    model, run, state = _open(config, resume, info)
    model_config = model.config
    model.set_grad_checkpointing(config.activation_checkpointing)
    model.to(device).train()
    objective = create_objective(model_config, config.loss_weights).to(device)
    modalities = _data_modalities(model_config)
    dataset = build_dataset(config, modalities, model_config.image_size)
    held_out = held_out_dataset(config, modalities, model_config.image_size) if info.is_main else None
    if run is None:
        run = ckpt.open_run(config, "pretrain", info)
        if info.is_main:
            (run / "previews").mkdir()
    accum = config.optim.accum_steps
    sampler, loader = epoch_loader(dataset, config, info, device, loader_workers(config.data.workers))
    total_steps = config.steps or max(1, math.ceil(config.epochs * sampler.batches_per_epoch / accum))
    total_batch = config.batch_size * accum * info.world
    lr = config.optim.lr or config.optim.blr * total_batch / 256
    opt = Optimization(model, config.optim, lr, total_steps, resolve_precision(config.precision, device), device)
    step = opt.restore(state)
    trained = distributed(PretrainStep(model, objective, opt.dtype), config, info, device)
    saves = ckpt.SaveSchedule(config, info, device)
    window = LossWindow(device)
    log = RunLog(run, loggers, config.model_dump(mode="json"), info.is_main)

    def save() -> None:
        window.check(run)
        if info.is_main:
            ckpt.save_checkpoint(run, model, opt.state(step, config=config.model_dump(mode="json"),
                                                      first_loss=first_loss))
        if info.world > 1:
            dist.barrier()
        saves.saved()

    bar, task = progress_bar("pretrain", total_steps, step, disabled=quiet or not info.is_main)
    window_start, window_images = time.perf_counter(), 0
    first_loss, last_record = state.get("first_loss"), None
    micro = step * accum
    with log:  # closed after the held-out scores, which reach the loggers too (outside the stop handling)
        with bar, stops_saved(save, lambda: step, info, "pretrain", run, device, config.log_every) as stop:
            sampler.start_at(micro)
            for batch in loader if step < total_steps else ():
                batch = to_device(batch, modalities, device, non_blocking=True)
                masks = micro_batch_masks(model_config, micro, info, config.batch_size, device, config.seed)
                inputs = {name: batch[name] for name in model_config.inputs}
                targets = {name: batch[name] for name in objective.sources.values()}
                last_micro = (micro + 1) % accum == 0
                accumulating = info.world > 1 and not last_micro  # DDP: all-reduce once per update
                with trained.no_sync() if accumulating else contextlib.nullcontext():
                    loss, parts = trained(inputs, targets, masks)
                    opt.scaler.scale(loss / accum).backward()
                micro += 1
                window.add(step + 1, {"loss": loss, **{f"loss/{k}": v for k, v in parts.items()}})
                window_images += config.batch_size * info.world
                if not last_micro:
                    continue
                opt.step(step)
                step += 1
                if step % config.log_every == 0 or step == total_steps:
                    window.check(run)
                    record = {"step": step, **average(window.means(), info, device), "lr": opt.lr,
                              "img_per_s": window_images / (time.perf_counter() - window_start)}
                    first_loss = first_loss if first_loss is not None else record["loss"]
                    last_record = record
                    log.record(record)
                    bar.update(task, completed=step, stats=f"loss {record['loss']:.4f}  lr {record['lr']:.2e}  "
                                                          f"{record['img_per_s']:.1f} img/s")
                    window_start, window_images = time.perf_counter(), 0
                else:
                    bar.update(task, completed=step)
                if info.is_main and config.preview_every and (step == total_steps or step % config.preview_every == 0):
                    picture = preview(model, held_out or dataset, config, modalities,
                                      run / "previews" / f"step-{step:06d}.png", device)
                    log.image(step, "preview", picture)
                if step == total_steps or saves.due(step):
                    save()
                if step == total_steps:
                    break
                stop.check(step)
        cross_modal = _held_out_quality(model, held_out, modalities, log, step, device) \
            if info.is_main and last_record is not None and held_out is not None else None
    summary = {"run": str(run), "steps": step, "first_loss": first_loss, "cross_modal": cross_modal,
               "final_loss": (last_record or {}).get("loss"), "img_per_s": (last_record or {}).get("img_per_s"),
               "threads": torch.get_num_threads(), "checkpoint": str(run / ckpt.LAST / "model.safetensors")}
    write_model_card(run, "pretrain", config, model_config, summary, device, info)
    return summary


def _held_out_quality(model, held_out, modalities: dict, log: RunLog, step: int, device: torch.device) -> dict:
    """What the first input alone predicts of every other output on held-out scenes, recorded in the metrics."""
    from .crossmodal import cross_modal_quality

    quality = cross_modal_quality(model, held_out, modalities, device)
    if quality["outputs"]:
        source = quality["source"]
        log.record({"step": step, **{f"heldout/{source}->{name}/{entry['metric']}": entry["value"]
                                     for name, entry in quality["outputs"].items()}})
    return quality
