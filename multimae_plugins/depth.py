"""depth: one-channel depth maps, robustly standardised per sample (the official pretraining recipe)."""

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
    """(H, W) float32 in the file's units: a 16-bit (or 8-bit) single-channel PNG, or a `.npy` array."""
    return decode(file_bytes(path), path)


def decode(data: bytes, name: str | Path) -> np.ndarray:
    """`read` of a file's bytes (a shard member): `name` gives the format."""
    npy = str(name).endswith(".npy")
    array = decode_array(data, name) if npy else decode_image(data, name, color=False)
    if array.ndim == 3 and array.shape[2] == 1:
        array = array[..., 0]
    if array.ndim != 2:
        raise InputError(f"{name}: depth must have one channel, got shape {array.shape}")
    if array.dtype == "uint8":
        raise InputError(f"{name}: 8-bit depth map; depth files must be 16-bit PNGs (or float .npy)")
    return array.astype("float32")


def write(path: Path, depth: np.ndarray) -> None:
    """`.npy` keeps floats; image formats get the values rounded into 16 bits."""
    import numpy as np

    path = Path(path)
    if path.suffix == ".npy":
        write_array(path, depth.astype(np.float32))
    else:
        write_image(path, np.clip(np.rint(depth), 0, 65535).astype(np.uint16))


def robust_standardize(depth: torch.Tensor, trim: float = 0.1, eps: float = 1e-6) -> torch.Tensor:
    """(d - mean) / sqrt(var + eps) per sample, mean and unbiased var over the 10-90 % quantile band.

    Takes (B, C, H, W) (or one (C, H, W)); scale- and shift-invariant, so any depth unit works.
    """
    import torch

    single = depth.ndim == 3
    batch = depth.unsqueeze(0) if single else depth
    flat = batch.float().flatten(1)
    n = flat.shape[1]
    low, high = int(trim * n), int((1 - trim) * n)
    if flat.device.type == "cpu" and not flat.requires_grad:
        # a partial sort (linear time) finds the same band as a full sort; numpy end to end, in place
        import numpy as np

        values = flat.numpy()
        # two single-kth partitions: numpy's several-kth partition is several times slower than both together
        band = np.partition(np.partition(values, low, axis=1)[:, low:], high - 1 - low, axis=1)[:, :high - low]
        mean = band.mean(axis=1, keepdims=True)
        centred = band - mean
        squares = np.einsum("ij,ij->i", centred, centred)[:, None]  # one pass, no temporary of squares
        scale = np.sqrt(squares / np.float32(band.shape[1] - 1) + np.float32(eps))
        out = np.subtract(values, mean)
        out /= scale
        out = torch.from_numpy(out).view(batch.shape)
        return out[0] if single else out
    band = flat.sort(dim=1).values[:, low:high]
    mean = band.mean(dim=1).view(-1, 1, 1, 1)
    var = band.var(dim=1).view(-1, 1, 1, 1)
    out = (batch.float() - mean) / (var + eps).sqrt()
    return out[0] if single else out


def denormalize(depth: torch.Tensor) -> torch.Tensor:
    """Standardised depth (a prediction) -> 16-bit file units, per sample: min -> 1, max -> 65535.

    The standardised scale is relative (shift and scale are lost), so this only fixes a range that fits a
    16-bit PNG; because `robust_standardize` is affine-invariant, reading the file back gives the same
    model-space map up to rounding. Takes (B, 1, H, W).
    """
    flat = depth.float().flatten(1)
    low = flat.min(dim=1).values.view(-1, 1, 1, 1)
    span = (flat.max(dim=1).values.view(-1, 1, 1, 1) - low).clamp_min(1e-8)
    return 1.0 + (depth.float() - low) / span * 65534.0


def colorize(depth: torch.Tensor) -> np.ndarray:
    """(1, H, W) depth (any scale) as a perceptual colour map (magma), near = bright, uint8 (H, W, 3)."""
    import cv2
    import numpy as np

    values = depth.float().reshape(depth.shape[-2:]).cpu().numpy()
    low, high = np.percentile(values, [2, 98])
    scaled = 1.0 - np.clip((values - low) / max(high - low, 1e-8), 0, 1)
    colored = cv2.applyColorMap((scaled * 255).astype(np.uint8), cv2.COLORMAP_MAGMA)
    return cv2.cvtColor(colored, cv2.COLOR_BGR2RGB)


@hookimpl
def register_modalities(register):
    register(Modality(
        name="depth", channels=1, description="depth map, robustly standardised per sample",
        input_adapter=PatchInput(pos_interpolation="bicubic"), output_adapter=SpatialOutput(), loss=MaskedL1(),
        extensions=(".png", ".npy", ".tif", ".tiff", ".exr"), read=read, decode=decode, write=write,
        interpolation="linear", normalize=robust_standardize, denormalize=denormalize, colorize=colorize,
    ))
