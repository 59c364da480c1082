"""What a modality is: the record a plugin registers, and the core's ready-made building blocks.

A `Modality` says how one kind of data is read, augmented, normalised, embedded into tokens, decoded and
scored. The core never names a modality; it only calls these fields. Factories receive the modality and a
small context object, so one factory serves many modalities. Torch is imported only when a factory runs,
which keeps `multimae --help` and plugin discovery fast.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:
    import numpy as np
    import torch
    from torch import nn

Interpolation = Literal["nearest", "linear", "cubic", "area"]


@dataclass(frozen=True)
class AdapterContext:
    """What an input adapter factory needs to know about the model it joins."""

    patch_size: int
    dim: int
    image_size: tuple[int, int]


@dataclass(frozen=True)
class DecoderContext:
    """What an output adapter (decoder) factory needs to know about the model it joins."""

    patch_size: int
    dim_encoder: int
    image_size: tuple[int, int]
    dim: int
    depth: int
    num_heads: int
    mlp_ratio: float
    qkv_bias: bool
    context_modalities: tuple[str, ...]
    use_task_queries: bool = True


_CV2_FLIP_DTYPES = ("uint8", "int8", "uint16", "int16", "int32", "float32", "float64")


def _hflip(array: np.ndarray) -> np.ndarray:
    """Mirror left-right. OpenCV writes a contiguous copy at memory speed; a reversed numpy view would cost
    ten times as much in the next step that needs contiguous data."""
    if array.dtype.name in _CV2_FLIP_DTYPES and array.ndim in (2, 3) and array.size:
        import cv2

        return cv2.flip(array, 1).reshape(array.shape)
    return array[:, ::-1]


def _identity(tensor: torch.Tensor) -> torch.Tensor:
    return tensor


@dataclass(frozen=True)
class Modality:
    """One modality (or pretraining target) of a MultiMAE model.

    `channels` is the channel count of dense data or the number of classes of label maps (`kind="labels"`).
    `stride` says the data lives at 1/stride of the image resolution (the official semseg input: 4).
    `target` names another modality whose data this one is trained on and whose tokens serve as its
    decoder queries (the official `norm_rgb` decoder reads `rgb`); such a modality has no input adapter.
    """

    name: str
    channels: int
    kind: Literal["dense", "labels"] = "dense"
    stride: int = 1
    target: str | None = None
    description: str = ""
    input_adapter: Callable[[Modality, AdapterContext], nn.Module] | None = None
    output_adapter: Callable[[Modality, DecoderContext], nn.Module] | None = None
    loss: Callable[[Modality, int], nn.Module] | None = None
    extensions: tuple[str, ...] = (".png",)
    read: Callable[[Path], np.ndarray] | None = None
    write: Callable[[Path, np.ndarray], None] | None = None
    interpolation: Interpolation = "linear"
    flip: Callable[[np.ndarray], np.ndarray] = _hflip
    normalize: Callable[[torch.Tensor], torch.Tensor] = _identity
    denormalize: Callable[[torch.Tensor], torch.Tensor] = _identity
    colorize: Callable[[torch.Tensor], np.ndarray] | None = None

    @property
    def source(self) -> str:
        """The modality whose data and tokens this one uses (itself unless `target` is set)."""
        return self.target or self.name

    def with_channels(self, channels: int) -> Modality:
        """A copy with another channel / class count (e.g. semseg with 40 classes)."""
        return replace(self, channels=channels)


# Ready-made factories. Plugins may pass any callable with the same signature instead.


@dataclass(frozen=True)
class PatchInput:
    """Non-overlapping patch projection of dense data plus a fixed 2-D sin-cos position embedding."""

    pos_interpolation: str = "bicubic"

    def __call__(self, modality: Modality, ctx: AdapterContext) -> nn.Module:
        from .model.adapters import PatchInputAdapter

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
        from .model.adapters import ClassEmbeddingInputAdapter

        return ClassEmbeddingInputAdapter(
            modality.name, modality.channels, ctx.dim, ctx.patch_size, ctx.image_size,
            stride=modality.stride, dim_class_emb=self.dim_class_emb, pos_interpolation=self.pos_interpolation,
        )


@dataclass(frozen=True)
class SpatialOutput:
    """The official pretraining decoder: task queries cross-attend the encoded tokens."""

    def __call__(self, modality: Modality, ctx: DecoderContext) -> nn.Module:
        from .model.adapters import SpatialOutputAdapter

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
        from .model.losses import MaskedMSELoss

        return MaskedMSELoss(patch_size, modality.stride, norm_pix=self.norm_pix)


@dataclass(frozen=True)
class MaskedL1:
    """Absolute error on masked patches."""

    def __call__(self, modality: Modality, patch_size: int) -> nn.Module:
        from .model.losses import MaskedL1Loss

        return MaskedL1Loss(patch_size, modality.stride)


@dataclass(frozen=True)
class MaskedCrossEntropy:
    """Per-pixel cross-entropy on masked patches of a label map."""

    label_smoothing: float = 0.0

    def __call__(self, modality: Modality, patch_size: int) -> nn.Module:
        from .model.losses import MaskedCrossEntropyLoss

        return MaskedCrossEntropyLoss(patch_size, modality.stride, label_smoothing=self.label_smoothing)
