"""thermal: single-channel long-wave infrared images (radiometric 16-bit PNGs, 8-bit PNGs or `.npy`).

A third-party multimae plugin: everything here goes through the public API (`multimae_cli`), and torch,
numpy and OpenCV are imported inside the functions that use them, so discovering the plugin stays fast.

Normalisation is the automatic gain control of thermal cameras: each image is centred on its median and
scaled by its 2-98 % percentile band, because absolute temperatures vary between scenes far more than the
contrast that carries the structure. It is affine-invariant, so radiometric counts, kelvin or 8-bit AGC
output all give the same model input.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from multimae_cli import (
    InputError,
    Modality,
    PatchInput,
    SpatialOutput,
    hookimpl,
    read_array,
    read_image,
    write_array,
    write_image,
)

if TYPE_CHECKING:
    import numpy as np
    import torch
    from torch import nn

MULTIMAE_API = 3  # the multimae plugin API this plugin is written for

BAND = (0.02, 0.98)  # the percentile band that spans [-1, 1] after normalisation
EIGHT_TO_SIXTEEN_BITS = 257  # 255 * 257 = 65535: 8-bit files share the 16-bit scale


# ---------------------------------------------------------------- files


def read(path: Path) -> np.ndarray:
    """(H, W) float32 in 16-bit file units: 16-bit PNGs as stored, 8-bit PNGs scaled by 257, `.npy` as stored
    (any unit, e.g. kelvin). Colour images are refused: a colour-mapped picture is no measurement."""
    import numpy as np

    path = Path(path)
    array = read_array(path) if path.suffix == ".npy" else read_image(path, color=False)
    if array.ndim == 3 and array.shape[2] == 1:
        array = array[..., 0]
    if array.ndim != 2:
        raise InputError(f"{path}: thermal images have one channel, got shape {array.shape} (a colour-mapped "
                         "picture cannot be read back as temperatures)")
    if array.dtype == np.uint8:
        return array.astype(np.float32) * EIGHT_TO_SIXTEEN_BITS
    return array.astype(np.float32)


def write(path: Path, thermal: np.ndarray) -> None:
    """`.npy` keeps floats; PNGs get the values rounded into 16 bits."""
    import numpy as np

    path = Path(path)
    if path.suffix == ".npy":
        write_array(path, thermal.astype(np.float32))
    else:
        write_image(path, np.clip(np.rint(thermal), 0, 65535).astype(np.uint16))


# ---------------------------------------------------------------- augmentation


def flip(thermal: np.ndarray) -> np.ndarray:
    """Mirror left-right with rgb. Intensities are scalars, so nothing else changes (normals, by contrast,
    negate their x component)."""
    return thermal[:, ::-1]


# ---------------------------------------------------------------- normalisation


def normalize(thermal: torch.Tensor) -> torch.Tensor:
    """(B, 1, H, W) file units -> (t - median) / (p98 - p2) * 2, per image."""
    import torch

    values = thermal.float()
    flat = values.flatten(-2)
    levels = torch.tensor([BAND[0], 0.5, BAND[1]], dtype=flat.dtype, device=flat.device)
    low, middle, high = torch.quantile(flat, levels, dim=-1, keepdim=True).unsqueeze(-1)
    return (values - middle) / (high - low).clamp_min(1e-6) * 2.0


def denormalize(thermal: torch.Tensor) -> torch.Tensor:
    """(B, 1, H, W) model space -> 16-bit file units, per image: its minimum -> 0, its maximum -> 65535.

    Absolute temperature is not recoverable from a normalised prediction, so this only chooses a range that
    fills a 16-bit PNG; `normalize` is affine-invariant, so the written file reads back as the same map.
    """
    flat = thermal.float().flatten(1)
    low = flat.min(dim=1).values.view(-1, 1, 1, 1)
    span = (flat.max(dim=1).values.view(-1, 1, 1, 1) - low).clamp_min(1e-8)
    return (thermal.float() - low) / span * 65535.0


def colorize(thermal: torch.Tensor) -> np.ndarray:
    """A normalised (1, H, W) map in OpenCV's inferno colour map (hot = bright yellow), uint8 (H, W, 3)."""
    import cv2
    import numpy as np

    values = thermal.float().reshape(thermal.shape[-2:]).cpu().numpy()
    low, high = np.percentile(values, [1, 99])
    scaled = np.clip((values - low) / max(high - low, 1e-8), 0, 1)
    picture = cv2.applyColorMap(np.rint(scaled * 255).astype(np.uint8), cv2.COLORMAP_INFERNO)
    return cv2.cvtColor(picture, cv2.COLOR_BGR2RGB)


# ---------------------------------------------------------------- loss


@dataclass(frozen=True)
class MaskedHuber:
    """Huber loss on masked patches: L1 on the hot and cold outliers of thermal scenes (people, engines, sky),
    squared error near the target. A loss factory: called with the modality and the patch size."""

    delta: float = 0.5

    def __call__(self, modality: Modality, patch_size: int) -> nn.Module:
        from .loss import MaskedHuberLoss  # torch is imported here, when a model is built

        return MaskedHuberLoss(patch_size, modality.stride, self.delta)


# ---------------------------------------------------------------- registration


@hookimpl
def register_modalities(register):
    register(Modality(
        name="thermal", channels=1, description="long-wave infrared intensity, per-image gain-controlled",
        input_adapter=PatchInput(pos_interpolation="bicubic"), output_adapter=SpatialOutput(), loss=MaskedHuber(),
        extensions=(".png", ".npy", ".tif", ".tiff"), read=read, write=write,
        interpolation="linear", flip=flip, normalize=normalize, denormalize=denormalize, colorize=colorize,
    ))
