"""One random resized crop and one horizontal flip per sample, applied to every modality by its own rules;
then, on the collated batch, each plugin's normalisation.

Each modality says how it is resampled (`interpolation`: nearest for labels, smooth for images) and flipped
(`flip`: normals negate x). Interpolation is always explicit: no library default decides it. Samples stay in
file space (uint8 images, float maps, int64 ids); `to_device` moves a batch to the training device and runs each
plugin's `normalize` there, so uint8 images cross the worker boundary and the PCIe bus at a quarter of their
float size and a GPU does the arithmetic.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import torch

from ..errors import InputError
from ..plugin.modality import Modality


@dataclass(frozen=True)
class Crop:
    top: int
    left: int
    height: int
    width: int


def sample_crop(rng: np.random.Generator, height: int, width: int, scale: tuple[float, float],
                ratio: tuple[float, float]) -> Crop:
    """A random area fraction in `scale` and aspect ratio in `ratio` (log-uniform), as RandomResizedCrop."""
    area = height * width
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        target = area * rng.uniform(*scale)
        aspect = math.exp(rng.uniform(*log_ratio))
        w = round(math.sqrt(target * aspect))
        h = round(math.sqrt(target / aspect))
        if 0 < w <= width and 0 < h <= height:
            return Crop(int(rng.integers(0, height - h + 1)), int(rng.integers(0, width - w + 1)), h, w)
    aspect = width / height  # fall back to the largest centred crop inside the ratio range
    if aspect < ratio[0]:
        w, h = width, round(width / ratio[0])
    elif aspect > ratio[1]:
        h, w = height, round(height * ratio[1])
    else:
        w, h = width, height
    return Crop((height - h) // 2, (width - w) // 2, h, w)


_CV2_FLAGS = {"linear": 1, "cubic": 2, "area": 3}  # cv2.INTER_LINEAR, INTER_CUBIC, INTER_AREA


def resize(array: np.ndarray, size: tuple[int, int], interpolation: str) -> np.ndarray:
    """Resize (H, W[, C]) to `size` = (h, w). `nearest` picks pixel centres exactly and keeps any dtype."""
    if array.shape[:2] == tuple(size):
        return array
    if interpolation == "nearest":
        rows = ((np.arange(size[0]) + 0.5) * array.shape[0] / size[0]).astype(np.int64)
        cols = ((np.arange(size[1]) + 0.5) * array.shape[1] / size[1]).astype(np.int64)
        return array[rows[:, None], cols[None, :]]
    import cv2

    source = array if array.dtype in (np.uint8, np.uint16, np.float32) else array.astype(np.float32)
    out = cv2.resize(source, (size[1], size[0]), interpolation=_CV2_FLAGS[interpolation])
    return out.reshape(*size, *array.shape[2:])


def to_tensor(array: np.ndarray, modality: Modality) -> torch.Tensor:
    """(H, W) labels stay (H, W) int64; dense data becomes (C, H, W)."""
    if modality.kind == "labels":
        return torch.from_numpy(np.ascontiguousarray(array).astype(np.int64))
    if array.ndim == 2:
        return torch.from_numpy(np.ascontiguousarray(array[None]))
    if array.dtype == np.uint8 and 1 < array.shape[2] <= 4:  # OpenCV splits channels 4x faster than a transpose
        import cv2

        out = np.empty((array.shape[2], *array.shape[:2]), np.uint8)
        for plane, target in zip(cv2.split(array, list(out)), out, strict=True):
            if not np.shares_memory(plane, target):  # the binding may hand back new arrays
                target[...] = plane
        return torch.from_numpy(out)
    return torch.from_numpy(np.ascontiguousarray(array.transpose(2, 0, 1)))


def to_device(batch: Mapping[str, torch.Tensor], modalities: Mapping[str, Modality], device: torch.device | str,
              non_blocking: bool = False) -> dict[str, torch.Tensor]:
    """A collated file-space batch on `device`, each modality normalised there by its plugin (entries that are
    not in `modalities`, e.g. fine-tuning targets, are only moved)."""
    out = {}
    for name, tensor in batch.items():
        tensor = tensor.to(device, non_blocking=non_blocking)
        out[name] = modalities[name].normalize(tensor) if name in modalities else tensor
    return out


def normalize_sample(sample: Mapping[str, torch.Tensor], modalities: Mapping[str, Modality]) -> dict[str, torch.Tensor]:
    """One file-space sample normalised as a batch of one (for pictures and single predictions)."""
    return {name: modalities[name].normalize(tensor[None])[0] if name in modalities else tensor
            for name, tensor in sample.items()}


class MultiModalTransform:
    """Bring every modality to the first one's frame, crop/flip them identically, resize; file-space tensors
    out (`to_device` normalises the batch)."""

    def __init__(self, modalities: Mapping[str, Modality], size: int | tuple[int, int], train: bool = True,
                 scale: tuple[float, float] = (0.2, 1.0), ratio: tuple[float, float] = (3 / 4, 4 / 3),
                 hflip: float = 0.5) -> None:
        self.modalities = dict(modalities)
        self.size = (size, size) if isinstance(size, int) else tuple(size)
        self.train, self.scale, self.ratio, self.hflip = train, scale, ratio, hflip

    def __call__(self, sample: Mapping[str, np.ndarray], rng: np.random.Generator) -> dict[str, torch.Tensor]:
        reference = next(iter(sample))
        height, width = sample[reference].shape[:2]
        if self.train:
            crop = sample_crop(rng, height, width, self.scale, self.ratio)
            flip = bool(rng.random() < self.hflip)
        else:
            crop, flip = Crop(0, 0, height, width), False
        out = {}
        for name, array in sample.items():
            modality = self.modalities[name]
            if array.shape[:2] != (height, width):
                h, w = array.shape[:2]
                if abs(h * width - w * height) > max(h, w):  # the same picture at another resolution only
                    raise InputError(f"{name}: size {h}x{w} does not have the aspect of {reference} "
                                     f"({height}x{width})")
                array = resize(array, (height, width), modality.interpolation)
            array = array[crop.top:crop.top + crop.height, crop.left:crop.left + crop.width]
            array = resize(array, (self.size[0] // modality.stride, self.size[1] // modality.stride),
                           modality.interpolation)
            if flip:
                array = modality.flip(array)
            out[name] = to_tensor(array, modality)
        return out
