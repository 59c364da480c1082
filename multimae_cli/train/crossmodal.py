"""Cross-modal quality of a pretraining model on held-out samples: what the decoders see in the first input alone.

The first input (rgb for the built-ins) is given whole, nothing masked, and every other output that a registered
task targets is predicted by its pretraining decoder and scored with that task's metrics (depth delta1, semseg
mIoU, ...), next to two guesses that ignore the input (`cross_modal_quality`). One-channel float outputs are
relative (the pretraining target is standardised per sample), so each predicted map is aligned to its ground
truth by a least-squares scale and shift first, as relative depth is usually scored.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import torch

from ..data.transforms import MultiModalTransform, to_device
from ..plugin.modality import Modality
from ..plugin.registry import get_registry


def align(pred: torch.Tensor, target: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """`pred` (B, 1, H, W) mapped by the per-sample scale and shift that best fit `target` on `valid` pixels."""
    aligned = torch.empty_like(target)
    for i in range(pred.shape[0]):
        p, t = pred[i][valid[i]].double(), target[i][valid[i]].double()
        if p.numel() < 2:
            aligned[i] = t.mean() if p.numel() else 0.0
            continue
        design = torch.stack([p, torch.ones_like(p)], dim=1)
        scale, shift = torch.linalg.lstsq(design, t[:, None]).solution[:, 0]
        aligned[i] = (pred[i].double() * scale + shift).to(target.dtype)
    return aligned


@torch.no_grad()
def cross_modal_quality(model, dataset, modalities: Mapping[str, Modality], device: torch.device,
                        batch_size: int = 16) -> dict[str, Any]:
    """`{"source", "samples", "outputs": {output: {"metric", "value", "constant", "average_scene"}}}` over every
    sample of `dataset` (anything with `read(i)` giving file-space arrays, and a length). Outputs without a task
    that targets them are left out.

    Two guesses that ignore the input, chosen with the held-out truths themselves (so at least as strong as
    any chosen on training data), tell whether the decoders see the scene: `constant` (one value or class
    everywhere) and `average_scene` (the per-pixel mean, or most frequent class, of the set: the "average room")."""
    config = model.config
    source = config.inputs[0]
    tasks = {task.target: task for task in get_registry().tasks().values() if task.target}
    outputs = [name for name in config.outputs
               if name != source and name in tasks and modalities[name].source == name]
    files = {name: modalities[name] for name in (source, *outputs)}
    fixed = MultiModalTransform(files, config.image_size, train=False)
    scores = {name: tasks[name].metrics(modalities[name].channels) for name in outputs}
    truths: dict[str, list[torch.Tensor]] = {name: [] for name in outputs}
    was_training = model.training
    model.eval()
    for start in range(0, len(dataset) if outputs else 0, batch_size):
        samples = [fixed(dataset.read(i), np.random.default_rng(0))
                   for i in range(start, min(start + batch_size, len(dataset)))]
        inputs = to_device({source: torch.stack([s[source] for s in samples])}, files, device)
        preds = model.decode(model.encode(inputs, mask_inputs=False), outputs)
        for name in outputs:
            target = torch.stack([s[name] for s in samples])
            truths[name].append(target)
            scores[name].update(*_comparable(preds[name].float().cpu(), target, modalities[name]))
    model.train(was_training)
    report = {}
    for name in outputs:
        main = scores[name].main
        report[name] = {"metric": main, "value": scores[name].compute()[main],
                        **_blind_guesses(torch.cat(truths[name]), modalities[name], tasks[name], main)}
    return {"source": source, "samples": len(dataset), "outputs": report}


def _comparable(pred: torch.Tensor, target: torch.Tensor, modality: Modality) -> tuple[torch.Tensor, torch.Tensor]:
    """Prediction and target as the task's metric takes them; one-channel float maps aligned (relative)."""
    if modality.kind == "labels" or pred.shape[1] != 1:
        return pred, target
    target = target.float().view(pred.shape[0], 1, *target.shape[-2:])
    pred = torch.nn.functional.interpolate(pred, size=target.shape[-2:], mode="bilinear", align_corners=False)
    return align(pred, target, target.isfinite() & (target > 0)), target


def _blind_guesses(truths: torch.Tensor, modality: Modality, task, main: str) -> dict[str, float | None]:
    """Scores of the best constant and of the average scene (see `cross_modal_quality`); None where the output
    is neither labels nor a one-channel map."""
    if modality.kind == "labels":
        classes = modality.channels
        known = (truths >= 0) & (truths < classes)
        majority = torch.bincount(truths[known], minlength=1).argmax()
        per_pixel = torch.where(known, truths, -1)
        votes = torch.stack([(per_pixel == c).sum(0) for c in range(classes)])
        guesses = {"constant": torch.full_like(truths, int(majority)),
                   "average_scene": votes.argmax(0).expand_as(truths)}
        as_logits = {key: torch.nn.functional.one_hot(value.long(), classes).permute(0, 3, 1, 2).float()
                     for key, value in guesses.items()}
        return {key: _score(task, modality, logits, truths, main) for key, logits in as_logits.items()}
    maps = truths.float().view(truths.shape[0], -1, *truths.shape[-2:])
    if maps.shape[1] != 1:
        return {"constant": None, "average_scene": None}
    average = modality.normalize(maps).mean(0, keepdim=True).expand_as(maps)  # the mean pretraining target
    return {"constant": _score(task, modality, torch.zeros_like(maps), maps, main),
            "average_scene": _score(task, modality, average, maps, main)}


def _score(task, modality: Modality, pred: torch.Tensor, target: torch.Tensor, main: str) -> float:
    metric = task.metrics(modality.channels)
    metric.update(*_comparable(pred, target, modality))
    return metric.compute()[main]


def quality_line(report: Mapping[str, Any]) -> str:
    """One line: `held-out cross-modal, rgb alone (64 samples): depth delta1 0.61 (constant 0.35, average scene
    0.66), ...`: a score at the average scene's sees nothing of the picture."""
    parts = []
    for name, entry in report["outputs"].items():
        guesses = [f"{label} {entry[key]:.3g}" for key, label in (("constant", "constant"),
                                                                   ("average_scene", "average scene"))
                   if entry.get(key) is not None]
        parts.append(f"{name} {entry['metric']} {entry['value']:.3g}" + (f" ({', '.join(guesses)})" if guesses else ""))
    return f"held-out cross-modal, {report['source']} alone ({report['samples']} samples): " + ", ".join(parts)
