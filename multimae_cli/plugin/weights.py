"""Named pretrained weights: the record a plugin registers (`register_weights`) so that `--checkpoint NAME` and
`load_model(NAME)` find, download, verify and cache a file. The download and cache live in `formats.weights`."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from ..errors import PluginError


@dataclass(frozen=True)
class Weights:
    """One weights file by name. `sha256` is the file's hash or a prefix of it (at least 8 hex digits: torch.hub's
    convention of naming files `...-<prefix>.pth`); `overrides` is what the file cannot tell about its model
    (head counts of official and timm files); `licence` is printed once, before the first download."""

    name: str
    url: str
    sha256: str
    size: int | None = None
    format: Literal["multivit", "timm", "native"] = "multivit"
    overrides: Mapping[str, Any] = field(default_factory=dict)
    licence: str = ""
    licence_id: str = "other"  # the Hugging Face / SPDX id of `licence`, for model cards' front matter
    description: str = ""

    def __post_init__(self) -> None:
        if not re.fullmatch(r"[0-9a-f]{8,64}", self.sha256):
            raise PluginError(f"weights {self.name!r}: sha256 must be 8 to 64 lower-case hex digits, got "
                              f"{self.sha256!r}")

    @property
    def filename(self) -> str:
        return self.url.rstrip("/").rsplit("/", 1)[-1]
