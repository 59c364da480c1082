"""Ready-made factories for `Modality` fields: input adapters, output decoders and masked losses.

Plugins may pass any callable with the same signature instead (see `protocols` for what it must return). Torch is
imported only when a factory runs.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from torch import nn

    from .modality import AdapterContext, DecoderContext, Modality


@dataclass(frozen=True)
class PatchInput:
    """Non-overlapping patch projection of dense data plus a fixed 2-D sin-cos position embedding."""

    pos_interpolation: str = "bicubic"

    def __call__(self, modality: Modality, ctx: AdapterContext) -> nn.Module:
        from ..model.adapters import PatchInputAdapter

        return PatchInputAdapter(
            modality.name, modality.channels, ctx.dim, ctx.patch_size, ctx.image_size,
            stride=modality.stride, pos_interpolation=self.pos_interpolation,
        )


@dataclass(frozen=True)
class ClassEmbeddingInput:
    """Label maps: a learned embedding per class, then a patch projection (the official semseg adapter)."""

    dim_class_emb: int = 64
    pos_interpolation: str = "bilinear"

    def __call__(self, modality: Modality, ctx: AdapterContext) -> nn.Module:
        from ..model.adapters import ClassEmbeddingInputAdapter

        return ClassEmbeddingInputAdapter(
            modality.name, modality.channels, ctx.dim, ctx.patch_size, ctx.image_size,
            stride=modality.stride, dim_class_emb=self.dim_class_emb, pos_interpolation=self.pos_interpolation,
        )


@dataclass(frozen=True)
class SpatialOutput:
    """The official pretraining decoder: task queries cross-attend the encoded tokens."""

    def __call__(self, modality: Modality, ctx: DecoderContext) -> nn.Module:
        from ..model.adapters import SpatialOutputAdapter

        return SpatialOutputAdapter(
            modality.name, modality.channels, ctx.dim_encoder, ctx.patch_size, ctx.image_size,
            stride=modality.stride, dim=ctx.dim, depth=ctx.depth, num_heads=ctx.num_heads,
            mlp_ratio=ctx.mlp_ratio, qkv_bias=ctx.qkv_bias, query_modality=modality.source,
            context_modalities=ctx.context_modalities, use_task_queries=ctx.use_task_queries,
        )


@dataclass(frozen=True)
class MaskedMSE:
    """Squared error on masked patches; `norm_pix` normalises each target patch first (MAE)."""

    norm_pix: bool = False

    def __call__(self, modality: Modality, patch_size: int) -> nn.Module:
        from ..model.losses import MaskedMSELoss

        return MaskedMSELoss(patch_size, modality.stride, norm_pix=self.norm_pix)


@dataclass(frozen=True)
class MaskedL1:
    """Absolute error on masked patches."""

    def __call__(self, modality: Modality, patch_size: int) -> nn.Module:
        from ..model.losses import MaskedL1Loss

        return MaskedL1Loss(patch_size, modality.stride)


@dataclass(frozen=True)
class MaskedCrossEntropy:
    """Per-pixel cross-entropy on masked patches of a label map."""

    label_smoothing: float = 0.0

    def __call__(self, modality: Modality, patch_size: int) -> nn.Module:
        from ..model.losses import MaskedCrossEntropyLoss

        return MaskedCrossEntropyLoss(patch_size, modality.stride, label_smoothing=self.label_smoothing)
