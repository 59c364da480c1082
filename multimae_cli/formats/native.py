"""The native checkpoint: one safetensors file whose header metadata holds the full model config as JSON.

No pickle anywhere, so a file alone rebuilds its model and loading it runs no code.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import TYPE_CHECKING

from ..config import ModelConfig
from ..errors import CheckpointError
from ..io import write_bytes, write_checked

if TYPE_CHECKING:
    import torch

FORMAT = "multimae"
CONFIG_KEY = "multimae.config"


def write_native(state_dict: dict[str, torch.Tensor], config: ModelConfig, path: str | Path,
                 extra: dict[str, str] | None = None) -> None:
    """Write tensors + config atomically (temporary file in the same folder, then rename). The file is
    serialised in memory and written by `write_bytes`, so a full disk is an OSError (safetensors' own writer
    reports it as an untyped error)."""
    from safetensors.torch import save

    from .._version import __version__

    tensors = {key: value.detach().cpu().contiguous() for key, value in state_dict.items()}
    metadata = {"format": FORMAT, "multimae.version": __version__, CONFIG_KEY: config.model_dump_json(),
                **(extra or {})}
    write_checked(path, lambda tmp: write_bytes(tmp, save(tensors, metadata=metadata)))


def read_safetensors(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """All tensors and the header metadata of a safetensors file."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file, safe_open

    try:
        with safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata() or {}
        return load_file(str(path)), metadata
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(f"{path}: unreadable safetensors file ({exc})") from None


def read_metadata(path: str | Path) -> dict[str, str]:
    """The header metadata of a safetensors file, without reading its tensors; a malformed file is one line."""
    from safetensors import SafetensorError
    from safetensors.torch import safe_open

    try:
        with safe_open(str(path), framework="pt") as handle:
            return handle.metadata() or {}
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(f"{path}: unreadable safetensors file ({exc})") from None


def config_from_metadata(metadata: dict[str, str], path: str | Path) -> ModelConfig | None:
    """The model config stored by `write_native`, or None for a plain safetensors state dict."""
    if CONFIG_KEY not in metadata:
        return None
    try:
        return ModelConfig.model_validate(json.loads(metadata[CONFIG_KEY]))
    except ValueError as exc:
        raise CheckpointError(f"{path}: invalid model config in the file header ({exc})") from None


def is_safetensors(path: str | Path) -> bool:
    """Sniff the safetensors layout: an 8-byte little-endian header length, then a JSON object."""
    with open(path, "rb") as handle:
        head = handle.read(9)
    if len(head) < 9 or head[8:9] != b"{":
        return False
    return 0 < int.from_bytes(head[:8], "little") <= os.path.getsize(path) - 8
