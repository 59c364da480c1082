"""Masked reconstruction losses and the pretraining objective.

Each loss scores a prediction only on the tokens that were masked (mask 1): per sample the masked pixels'
mean, then the mean over the samples that have any masked pixel (the official per-sample mean followed by a
NaN-ignoring batch mean, written so that a sample without masked tokens gives no NaN gradient). Without a
mask the loss is the plain mean over all elements. Losses compute in fp32 whatever the autocast state.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
import torch.nn.functional as F
from torch import nn


class MaskedLoss(nn.Module):
    """Base: turns a per-pixel loss map (B, H, W) and a token mask (B, N) into a scalar."""

    def __init__(self, patch_size: int, stride: int = 1) -> None:
        super().__init__()
        self.patch = max(1, patch_size // stride)

    def pixel_loss(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        loss = self.pixel_loss(pred.float(), target)
        if mask is None:
            return loss.mean()
        batch, height, width = loss.shape
        p = self.patch
        weights = mask.to(loss.dtype).view(batch, height // p, 1, width // p, 1)
        per_pixel = loss.view(batch, height // p, p, width // p, p) * weights
        count = weights.flatten(1).sum(1) * p * p
        per_sample = per_pixel.flatten(1).sum(1) / count.clamp_min(1)
        has_masked = (count > 0).to(loss.dtype)
        return (per_sample * has_masked).sum() / has_masked.sum().clamp_min(1)


class MaskedMSELoss(MaskedLoss):
    """Squared error averaged over channels; with `norm_pix` the target is normalised per patch (MAE)."""

    def __init__(self, patch_size: int, stride: int = 1, norm_pix: bool = False) -> None:
        super().__init__(patch_size, stride)
        self.norm_pix = norm_pix

    def pixel_loss(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        target = target.float()
        if self.norm_pix:
            target = normalize_patches(target, self.patch)
        return (pred - target).pow(2).mean(dim=1)


class MaskedL1Loss(MaskedLoss):
    """Absolute error averaged over channels."""

    def pixel_loss(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return (pred - target.float()).abs().mean(dim=1)


class MaskedCrossEntropyLoss(MaskedLoss):
    """Per-pixel cross-entropy of (B, K, H, W) logits against (B, H, W) class ids."""

    def __init__(self, patch_size: int, stride: int = 1, label_smoothing: float = 0.0) -> None:
        super().__init__(patch_size, stride)
        self.label_smoothing = label_smoothing

    def pixel_loss(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if target.ndim == 4:
            target = target[:, 0]
        return F.cross_entropy(pred, target.long(), reduction="none", label_smoothing=self.label_smoothing)


def normalize_patches(image: torch.Tensor, patch: int, eps: float = 1e-6) -> torch.Tensor:
    """Normalise every (C, p, p) patch of (B, C, H, W) to zero mean, unit (unbiased) variance."""
    b, c, h, w = image.shape
    patches = image.view(b, c, h // patch, patch, w // patch, patch).permute(0, 2, 4, 1, 3, 5)
    flat = patches.reshape(b, h // patch, w // patch, -1)
    flat = (flat - flat.mean(-1, keepdim=True)) / (flat.var(-1, keepdim=True) + eps).sqrt()
    return flat.view_as(patches).permute(0, 3, 1, 4, 2, 5).reshape(b, c, h, w)


class PretrainObjective(nn.Module):
    """Weighted sum of the output modalities' masked losses.

    `sources[name]` is the modality whose data is `name`'s target and whose mask applies (`norm_rgb` ->
    `rgb`). An output whose source was not masked at all (not an input) is scored on every pixel.
    """

    def __init__(self, losses: Mapping[str, nn.Module], sources: Mapping[str, str],
                 weights: Mapping[str, float] | None = None) -> None:
        super().__init__()
        self.losses = nn.ModuleDict(losses)
        self.sources = dict(sources)
        self.weights = {name: float((weights or {}).get(name, 1.0)) for name in losses}

    def forward(self, preds: Mapping[str, torch.Tensor], targets: Mapping[str, torch.Tensor],
                masks: Mapping[str, torch.Tensor] | None = None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        per_modality = {}
        for name, loss in self.losses.items():
            source = self.sources[name]
            mask = None if masks is None else masks.get(source)
            per_modality[name] = loss(preds[name], targets[source], mask)
        total = sum(self.weights[name] * value for name, value in per_modality.items())
        return total, per_modality


class PretrainStep(nn.Module):
    """A MultiMAE and its objective as one module: the masked forward under autocast (`dtype`, None for
    fp32), then the fp32 losses. One module lets `torch.compile` fuse the losses into the model's graph (the
    casts, norm-pix statistics and cross-entropy run as a few fused kernels) and DDP wrap both at once.

    The masks are the caller's and trusted (`check=False`): no host sync, nothing that breaks the graph.
    """

    def __init__(self, model: nn.Module, objective: PretrainObjective, dtype: torch.dtype | None = None) -> None:
        super().__init__()
        self.model, self.objective, self.dtype = model, objective, dtype

    def forward(self, inputs: Mapping[str, torch.Tensor], targets: Mapping[str, torch.Tensor],
                masks: Mapping[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        device_type = next(iter(inputs.values())).device.type
        with torch.autocast(device_type, dtype=self.dtype or torch.float32, enabled=self.dtype is not None):
            preds, masks = self.model(inputs, task_masks=masks, check=False)
        return self.objective(preds, targets, masks)


# ---------------------------------------------------------------- fine-tuning losses


class BerHuLoss(nn.Module):
    """Reverse Huber on valid pixels (target finite and > 0): L1 below c = `threshold` x the batch's largest
    error, (e^2 + c^2) / 2c above (the official NYUv2 depth loss). `kind="l1"` gives plain L1."""

    def __init__(self, kind: str = "berhu", threshold: float = 0.2) -> None:
        super().__init__()
        if kind not in ("berhu", "l1"):
            raise ValueError(f"kind must be 'berhu' or 'l1', got {kind!r}")
        self.kind, self.threshold = kind, threshold

    def forward(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        valid = torch.isfinite(target) & (target > 0)
        error = (pred - torch.where(valid, target, pred.detach())).abs()[valid]
        if error.numel() == 0:
            return pred.sum() * 0.0
        if self.kind == "l1":
            return error.mean()
        c = (self.threshold * error.max().detach()).clamp_min(1e-6)
        return torch.where(error <= c, error, (error**2 + c**2) / (2 * c)).mean()


class AngularLoss(nn.Module):
    """Mean angle in radians between predicted and true normals (B, 3, H, W) on valid pixels (true norm > 0.5)."""

    def forward(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        valid = target.norm(dim=1) > 0.5
        cosine = F.cosine_similarity(pred, target, dim=1, eps=1e-6)[valid]
        if cosine.numel() == 0:
            return pred.sum() * 0.0
        return torch.acos(cosine.clamp(-1 + 1e-6, 1 - 1e-6)).mean()
