"""Image and array files for modality plugins: OpenCV decoding, clear errors, atomic writes."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

from .errors import InputError

if TYPE_CHECKING:
    import numpy as np


def read_image(path: str | Path, color: bool) -> np.ndarray:
    """Decode an 8/16-bit PNG, JPEG, ... as stored: colour images as RGB (H, W, 3), else (H, W)."""
    import cv2
    import numpy as np

    cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_SILENT)  # our one-line error says it all
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: no such file")
    data = np.fromfile(path, dtype=np.uint8)
    if path.suffix.lower() in (".jpg", ".jpeg") and data[-2:].tobytes() != b"\xff\xd9":
        raise InputError(f"{path}: truncated JPEG (no end-of-image marker)")
    rgb_flag = getattr(cv2, "IMREAD_COLOR_RGB", None)  # OpenCV >= 4.10 decodes straight to RGB
    flag = (rgb_flag or cv2.IMREAD_COLOR) if color else cv2.IMREAD_UNCHANGED
    image = cv2.imdecode(data, flag) if data.size else None
    if image is None:
        raise InputError(f"{path}: not a readable image (corrupt, truncated or of an unknown format)")
    if color and rgb_flag is None:
        return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)
    return image


def read_array(path: str | Path) -> np.ndarray:
    """Load a `.npy` array without unpickling anything."""
    import numpy as np

    path = Path(path)
    try:
        return np.load(path, allow_pickle=False)
    except FileNotFoundError:
        raise InputError(f"{path}: no such file") from None
    except ValueError as exc:
        raise InputError(f"{path}: not a readable .npy array ({exc})") from None


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write through a temporary file in the same folder and rename, so no reader sees half a file."""
    path = Path(path)
    if not path.parent.is_dir():
        raise InputError(f"{path}: folder {path.parent} does not exist")
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_image(path: str | Path, image: np.ndarray) -> None:
    """Encode by the file extension (RGB (H, W, 3) or single-channel; uint8 or uint16 for PNG), atomically."""
    import cv2

    path = Path(path)
    if image.ndim == 3 and image.shape[2] == 3:
        image = cv2.cvtColor(image, cv2.COLOR_RGB2BGR)
    ok, encoded = cv2.imencode(path.suffix or ".png", image)
    if not ok:
        raise InputError(f"{path}: cannot encode a {image.dtype} image of shape {image.shape} as {path.suffix}")
    atomic_write_bytes(path, encoded.tobytes())


def write_array(path: str | Path, array: np.ndarray) -> None:
    """Save a `.npy` array atomically."""
    import io

    import numpy as np

    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=False)
    atomic_write_bytes(path, buffer.getvalue())
