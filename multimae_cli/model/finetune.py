"""A MultiViT encoder with a fine-tuning head: pure torch, the model `multimae finetune` trains."""

from __future__ import annotations

import contextlib
from collections.abc import Mapping

import torch
from torch import nn

from .multimae import MultiMAE


class FinetuneModel(nn.Module):
    """`backbone` (a MultiMAE; its decoders are dropped) encodes every input unmasked; `head` reads the tokens
    (or every block's tokens when `head.needs_all_layers`). Parameter names: the official encoder names under
    `backbone.`, the head's under `head.`."""

    def __init__(self, backbone: MultiMAE, head: nn.Module) -> None:
        super().__init__()
        backbone.output_adapters = nn.ModuleDict()
        self.backbone = backbone
        self.head = head
        self.frozen = False

    def freeze_backbone(self) -> FinetuneModel:
        """Fix the encoder: no gradients, no stochastic depth (it stays in eval mode), features computed
        without autograd. The head alone learns: with a linear head, the linear probe of the features."""
        self.frozen = True
        self.backbone.requires_grad_(False)
        return self.train(self.training)

    def train(self, mode: bool = True) -> FinetuneModel:
        super().train(mode)
        if self.frozen:
            self.backbone.eval()
        return self

    @property
    def config(self):
        return self.backbone.config

    def forward(self, inputs: Mapping[str, torch.Tensor]) -> torch.Tensor:
        with torch.no_grad() if self.frozen else contextlib.nullcontext():
            features, layout = self.backbone.encode_unmasked(inputs, getattr(self.head, "needs_all_layers", False))
        size = (layout.grid[0] * self.backbone.patch_size, layout.grid[1] * self.backbone.patch_size)
        return self.head(features, layout, size)

    def no_weight_decay(self) -> set[str]:
        return {f"backbone.{name}" for name in self.backbone.no_weight_decay()}

    def group_matcher(self, coarse: bool = False) -> dict:
        """timm's layer-decay groups: embeddings first, one per encoder block; the head, unmatched, is last."""
        return {
            "stem": r"^backbone\.(?:global_tokens|input_adapters)",
            "blocks": [(r"^backbone\.encoder\.(\d+)", None)],
        }

    def get_num_layers(self) -> int:
        return len(self.backbone.encoder)
