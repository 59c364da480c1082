"""The masked Huber loss of the thermal modality (imported only when a model is built: it needs torch)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class MaskedHuberLoss(nn.Module):
    """`loss(pred, target, mask)`: pred and target (B, C, H, W), mask (B, N) with 1 for the masked tokens.

    Per sample the mean over its masked pixels, then the mean over the samples that have any masked token
    (so a sample with nothing masked gives no NaN); without a mask the plain mean.
    """

    def __init__(self, patch: int, delta: float) -> None:
        super().__init__()
        self.patch, self.delta = patch, delta

    def forward(self, pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        loss = F.huber_loss(pred.float(), target.float(), reduction="none", delta=self.delta).mean(dim=1)
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
