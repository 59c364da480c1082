"""The masked Huber loss of the thermal modality (imported only when a model is built: it needs torch).

multimae's `MaskedLoss` does the masking (per sample the mean over its masked pixels, then the mean over the
samples that have any masked token); a modality only says what one pixel costs.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from multimae_cli import MaskedLoss


class MaskedHuberLoss(MaskedLoss):
    """Huber loss per pixel, averaged over channels: L1 beyond `delta`, squared error within it."""

    def __init__(self, patch_size: int, stride: int = 1, delta: float = 0.5) -> None:
        super().__init__(patch_size, stride)
        self.delta = delta

    def pixel_loss(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return F.huber_loss(pred, target.float(), reduction="none", delta=self.delta).mean(dim=1)
