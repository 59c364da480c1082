"""What a modality is: the record a plugin registers (its ready-made factories are in `components`).

A `Modality` says how one kind of data is read, augmented, normalised, embedded into tokens, decoded and
scored. The core never names a modality; it only calls these fields. Factories receive the modality and a
small context object, so one factory serves many modalities. Torch is imported only when a factory runs,
which keeps `multimae --help` and plugin discovery fast.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from ..errors import ConfigError

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
    `companion` (with `target`): pretraining adds it to the outputs whenever its target is an output, unless the
    run sets `norm_pix_target: false` (the official recipe's name for its one companion, `norm_rgb`).
    `options` declares the settings a config may change (`model.modality_options.NAME.KEY`) with their defaults;
    the factories read the resolved values from `modality.options`.
    """

    name: str
    channels: int
    kind: Literal["dense", "labels"] = "dense"
    stride: int = 1
    target: str | None = None
    companion: bool = False
    options: Mapping[str, Any] = field(default_factory=dict)
    description: str = ""
    input_adapter: Callable[[Modality, AdapterContext], nn.Module] | None = None
    output_adapter: Callable[[Modality, DecoderContext], nn.Module] | None = None
    loss: Callable[[Modality, int], nn.Module] | None = None
    extensions: tuple[str, ...] = (".png",)
    read: Callable[[Path], np.ndarray] | None = None
    decode: Callable[[bytes, str], np.ndarray] | None = None
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

    def with_options(self, values: Mapping[str, Any]) -> Modality:
        """A copy with some of its declared `options` set; an undeclared one is an error naming it."""
        unknown = [key for key in values if key not in self.options]
        if unknown:
            declared = ", ".join(sorted(self.options)) or "none"
            raise ConfigError(f"modality_options.{self.name}.{unknown[0]}: unknown option ({self.name}'s options: "
                              f"{declared})")
        return replace(self, options={**self.options, **values})
