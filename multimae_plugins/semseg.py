"""semseg: semantic label maps (class ids), embedded per class, at 1/4 of the image resolution as officially.

133 classes by default (the COCO panoptic classes of the official pseudo labels); a config's
`channels: {semseg: N}` sets another count.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from multimae_cli import (
    ClassEmbeddingInput,
    InputError,
    MaskedCrossEntropy,
    Modality,
    SpatialOutput,
    decode_array,
    decode_labels,
    file_bytes,
    hookimpl,
    write_array,
    write_image,
    write_palette_png,
)

if TYPE_CHECKING:
    import numpy as np
    import torch

NUM_CLASSES = 133


def read(path: Path) -> np.ndarray:
    """(H, W) integer class ids, in the file's own dtype, from a single-channel 8/16-bit PNG, a palette PNG (its
    indices) or `.npy`. They become int64 in `to_tensor`, after the crop and resize, where the map is smallest:
    widening a whole 8-bit map cost a tenth of a loader worker's time."""
    return decode(file_bytes(path), path)


def decode(data: bytes, name: str | Path) -> np.ndarray:
    """`read` of a file's bytes (a shard member): `name` gives the format."""
    labels = decode_array(data, name) if str(name).endswith(".npy") else decode_labels(data, name)
    if labels.ndim != 2:
        raise InputError(f"{name}: a label map must have one channel, got shape {labels.shape}")
    if labels.dtype.kind not in "iu":
        raise InputError(f"{name}: a label map must hold integers, got {labels.dtype}")
    return labels


def write(path: Path, labels: np.ndarray) -> None:
    """A palette PNG (ids as indices, shown in the class colours) when every id fits in 8 bits, else a
    16-bit greyscale PNG; `.npy` keeps the array."""
    import numpy as np

    path = Path(path)
    if path.suffix == ".npy":
        write_array(path, labels.astype(np.int64))
    elif labels.max(initial=0) < 256 and path.suffix.lower() == ".png":
        write_palette_png(path, labels.astype(np.uint8), palette(256))
    else:
        write_image(path, labels.astype(np.uint16))


def normalize(labels: torch.Tensor) -> torch.Tensor:
    """(B, H, W) class ids as int64."""
    return labels.long()


def palette(num_classes: int) -> np.ndarray:
    """A fixed, well-spread colour per class id, (num_classes, 3) uint8."""
    import numpy as np

    ids = np.arange(num_classes)
    colors = np.zeros((num_classes, 3), dtype=np.uint8)
    for bit in range(8):  # the PASCAL VOC bit-interleaving palette
        for channel in range(3):
            colors[:, channel] |= (((ids >> (3 * bit + channel)) & 1) << (7 - bit)).astype(np.uint8)
    return colors


def colorize(labels: torch.Tensor) -> np.ndarray:
    """Class ids (H, W) or logits (K, H, W) as a uint8 (H, W, 3) picture."""
    ids = labels.argmax(0) if labels.is_floating_point() and labels.ndim == 3 else labels.reshape(labels.shape[-2:])
    ids = ids.long().cpu().numpy()
    return palette(int(ids.max(initial=0)) + 1)[ids]


@hookimpl
def register_modalities(register):
    register(Modality(
        name="semseg", channels=NUM_CLASSES, kind="labels", stride=4,
        description="semantic label map (class ids) at 1/4 resolution",
        input_adapter=ClassEmbeddingInput(dim_class_emb=64), output_adapter=SpatialOutput(),
        loss=MaskedCrossEntropy(), extensions=(".png", ".npy"), read=read, decode=decode, write=write,
        interpolation="nearest", normalize=normalize, colorize=colorize,
    ))
