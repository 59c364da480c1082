"""normals: camera-frame unit surface normals (x right, y up, z towards the camera).

Stored as RGB PNGs of (n + 1) / 2 * 255. A horizontal flip mirrors the image and negates x. Trained with
an L1 loss on the vector components (as Taskonomy's normal target), which is smooth where the angular loss
is not and, for unit vectors, small exactly when the angle is.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from multimae_cli import (
    InputError,
    MaskedL1,
    Modality,
    PatchInput,
    SpatialOutput,
    decode_array,
    decode_image,
    file_bytes,
    hookimpl,
    write_array,
    write_image,
)

if TYPE_CHECKING:
    import numpy as np
    import torch


def read(path: Path) -> np.ndarray:
    """(H, W, 3) float32 vectors in [-1, 1] from an RGB PNG (8 or 16 bit) or a `.npy` array."""
    return decode(file_bytes(path), path)


def decode(data: bytes, name: str | Path) -> np.ndarray:
    """`read` of a file's bytes (a shard member): `name` gives the format."""
    import numpy as np

    if str(name).endswith(".npy"):
        array = decode_array(data, name).astype(np.float32)
    else:
        image = decode_image(data, name, color=False)
        if image.ndim != 3 or image.shape[2] != 3:
            raise InputError(f"{name}: normals need 3 channels, got shape {image.shape}")
        image = image[..., ::-1]  # OpenCV decodes BGR
        array = image.astype(np.float32) / np.iinfo(image.dtype).max * 2.0 - 1.0
    if array.ndim != 3 or array.shape[2] != 3:
        raise InputError(f"{name}: normals need shape (H, W, 3), got {array.shape}")
    return np.ascontiguousarray(array)


def write(path: Path, normals: np.ndarray) -> None:
    import numpy as np

    path = Path(path)
    if path.suffix == ".npy":
        write_array(path, normals.astype(np.float32))
    else:
        write_image(path, np.rint((np.clip(normals, -1, 1) + 1) / 2 * 255).astype(np.uint8))


def flip(normals: np.ndarray) -> np.ndarray:
    """Mirror horizontally: the image flips and the x component changes sign."""
    import cv2

    flipped = cv2.flip(normals, 1)
    flipped[..., 0] *= -1
    return flipped


def normalize(normals: torch.Tensor) -> torch.Tensor:
    """(B, 3, H, W) vectors rescaled to unit length (resampling shortens them)."""
    import torch.nn.functional as F

    return F.normalize(normals.float(), dim=-3, eps=1e-6)


def colorize(normals: torch.Tensor) -> np.ndarray:
    """(3, H, W) vectors as the usual (n + 1) / 2 RGB picture, uint8 (H, W, 3)."""
    image = ((normalize(normals) + 1) / 2 * 255).round().clamp(0, 255).byte()
    return image.permute(1, 2, 0).cpu().numpy()


@hookimpl
def register_modalities(register):
    register(Modality(
        name="normals", channels=3, description="camera-frame unit surface normals",
        input_adapter=PatchInput(pos_interpolation="bicubic"), output_adapter=SpatialOutput(), loss=MaskedL1(),
        extensions=(".png", ".npy"), read=read, decode=decode, write=write, interpolation="linear",
        flip=flip,
        normalize=normalize, colorize=colorize,
    ))
