"""multimae: MultiMAE pretraining, fine-tuning, prediction and export, with modalities as plugins.

The public API. Importing this package does not import torch; the model functions load it on first use.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .config import ModelConfig
from .errors import MultiMAEError
from .hookspecs import hookimpl
from .modality import (
    AdapterContext,
    ClassEmbeddingInput,
    DecoderContext,
    MaskedCrossEntropy,
    MaskedL1,
    MaskedMSE,
    Modality,
    PatchInput,
    SpatialOutput,
)
from .task import HeadContext, Task
from .teacher import Labeler, Teacher, TeacherRequest

if TYPE_CHECKING:
    from .factory import create_model, create_objective
    from .formats import load_model, save_model
    from .train.pretrain import pretrain

__version__ = "0.1.0"

# The plugin API version: what a plugin may rely on (the hooks in `hookspecs`, the fields and factories of
# `Modality`, `Task`, `Teacher`, and `multimae_cli.testing`). Adding a hook, a field with a default or a
# factory keeps it; it goes up by one when a plugin written for the previous version could break (a hook,
# field or argument removed, renamed or given another meaning), and `API_CHANGES` says what changed. A plugin
# module states the version it is written for as `MULTIMAE_API = N`; the registry refuses a plugin written for
# another version (an older one with the changes since, so its author knows what to update). See docs/plugins.md.
API_VERSION = 2
API_CHANGES = {
    2: "Modality.normalize takes a batch (B, C, H, W) (labels (B, H, W)) on the training device",
}

_LAZY = {
    "load_model": "formats",
    "save_model": "formats",
    "create_model": "factory",
    "create_objective": "factory",
    "pretrain": "train.pretrain",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        from importlib import import_module

        return getattr(import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "API_CHANGES",
    "API_VERSION",
    "AdapterContext",
    "ClassEmbeddingInput",
    "DecoderContext",
    "HeadContext",
    "Labeler",
    "MaskedCrossEntropy",
    "MaskedL1",
    "MaskedMSE",
    "Modality",
    "ModelConfig",
    "MultiMAEError",
    "PatchInput",
    "SpatialOutput",
    "Task",
    "Teacher",
    "TeacherRequest",
    "__version__",
    "create_model",
    "create_objective",
    "hookimpl",
    "load_model",
    "pretrain",
    "save_model",
]
