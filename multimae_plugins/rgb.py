"""rgb: colour images, ImageNet-normalised; plus `norm_rgb`, the official extra per-patch-normalised target."""

from __future__ import annotations

from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING

from multimae_cli import (
    MaskedMSE,
    Modality,
    PatchInput,
    SpatialOutput,
    decode_image,
    hookimpl,
    read_image,
    write_image,
)

if TYPE_CHECKING:
    import numpy as np
    import torch

MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)


def read(path: Path) -> np.ndarray:
    """(H, W, 3) uint8 RGB; greyscale, 16-bit and 4-channel files are converted to 8-bit RGB by OpenCV."""
    return read_image(path, color=True)


def decode(data: bytes, name: str | Path) -> np.ndarray:
    """`read` of a file's bytes (a shard member)."""
    return decode_image(data, name, color=True)


def write(path: Path, image: np.ndarray) -> None:
    """uint8 as is; float values (e.g. a prediction) are rounded into [0, 255]."""
    import numpy as np

    if image.dtype != np.uint8:
        image = np.clip(np.rint(image), 0, 255).astype(np.uint8)
    write_image(path, image)


@cache
def _scale_offset(device: str):
    """(3, 1, 1) scale and offset on `device`, made once per device (no host-to-device copy per batch)."""
    import torch

    scale = torch.tensor([1 / (255.0 * s) for s in STD], device=device).view(3, 1, 1)
    offset = torch.tensor([m / s for m, s in zip(MEAN, STD, strict=True)], device=device).view(3, 1, 1)
    return scale, offset


@cache
def _lookup_tables():
    """(3, 1, 256) float32: the normalised value of every uint8 level, per channel."""
    import torch

    scale, offset = _scale_offset("cpu")
    return torch.arange(256, dtype=torch.float32).view(1, 1, 256).expand(3, 1, 256).mul(scale).sub_(offset).numpy()


def normalize(image: torch.Tensor) -> torch.Tensor:
    """(B, 3, H, W) uint8 -> float, ImageNet mean/std (one multiply-add per value). On the CPU uint8 planes go
    through a 256-entry table per channel holding exactly those float32 results (twice as fast)."""
    import torch

    if image.dtype == torch.uint8 and image.device.type == "cpu" and image.ndim >= 3 and image.shape[-3] == 3:
        import cv2
        import numpy as np

        tables = _lookup_tables()
        out = torch.empty(image.shape, dtype=torch.float32)
        source = np.ascontiguousarray(image.numpy()).reshape(-1, *image.shape[-2:])
        target = out.numpy().reshape(-1, *image.shape[-2:])
        for plane in range(len(source)):
            result = cv2.LUT(source[plane], tables[plane % 3], dst=target[plane])
            if not np.shares_memory(result, target[plane]):  # the binding may hand back a new array
                target[plane] = result
        return out
    scale, offset = _scale_offset(str(image.device))
    return image.float().mul(scale).sub_(offset)  # a new tensor: a float input is not changed in place


def denormalize(image: torch.Tensor) -> torch.Tensor:
    """(..., 3, H, W) normalised -> uint8 range [0, 255] as float."""
    import torch

    mean = torch.tensor(MEAN, device=image.device).view(3, 1, 1)
    std = torch.tensor(STD, device=image.device).view(3, 1, 1)
    return ((image.float() * std + mean) * 255.0).clamp(0, 255)


def colorize(image: torch.Tensor) -> np.ndarray:
    """A normalised (3, H, W) prediction as a uint8 (H, W, 3) picture."""
    return denormalize(image).round().byte().permute(1, 2, 0).cpu().numpy()


@hookimpl
def register_modalities(register):
    register(Modality(
        name="rgb", channels=3, description="colour image, ImageNet-normalised",
        input_adapter=PatchInput(pos_interpolation="bicubic"), output_adapter=SpatialOutput(), loss=MaskedMSE(),
        extensions=(".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff"), read=read, decode=decode,
        write=write,
        interpolation="cubic", normalize=normalize, denormalize=denormalize, colorize=colorize,
    ))
    register(Modality(
        name="norm_rgb", channels=3, target="rgb", companion=True,
        description="rgb target normalised per patch (MAE norm-pix loss); an output only",
        output_adapter=SpatialOutput(), loss=MaskedMSE(norm_pix=True),
    ))
