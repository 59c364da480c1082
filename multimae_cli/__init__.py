"""multimae: MultiMAE pretraining, fine-tuning, prediction and export, with modalities as plugins.

The public namespace: everything a plugin may use, and the model functions. Plugins (the built-ins included)
import only from here; the names below are the whole contract (`plugin.protocols` says what factories return).
Importing this package does not import torch: the names marked lazy load it on first use.

The applications are functions of their own modules: `multimae_cli.train.pretrain.pretrain`,
`multimae_cli.train.finetune.finetune`, `multimae_cli.train.evaluate.evaluate_checkpoint`,
`multimae_cli.infer.predict.predict`, `multimae_cli.infer.features.extract_features` (and `read_features`),
`multimae_cli.infer.pseudolabel.pseudolabel`, `multimae_cli.formats.export.export_model`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ._version import __version__
from .config import ModelConfig
from .errors import CheckpointError, ConfigError, InputError, MultiMAEError, PluginError, UnknownModalityError
from .io import (
    as_path,
    atomic_write_bytes,
    decode_array,
    decode_image,
    decode_labels,
    file_bytes,
    read_array,
    read_image,
    read_labels,
    write_array,
    write_checked,
    write_image,
    write_palette_png,
)
from .plugin import protocols
from .plugin.components import ClassEmbeddingInput, MaskedCrossEntropy, MaskedL1, MaskedMSE, PatchInput, SpatialOutput
from .plugin.hookspecs import API_CHANGES, API_VERSION, hookimpl
from .plugin.logger import Logger
from .plugin.modality import AdapterContext, DecoderContext, Modality
from .plugin.task import HeadContext, Task
from .plugin.teacher import Labeler, Teacher, TeacherRequest, by_size
from .plugin.weights import Weights

if TYPE_CHECKING:
    from .formats.load import load_model, save_model
    from .infer.predictor import Predictor, find_checkpoint, working_size
    from .metrics import ClassificationMetrics, DepthMetrics, Metric, NormalsMetrics, SegmentationMetrics
    from .model.heads import ConvNeXtHead, DenseLinearHead, DPTHead, LinearHead
    from .model.layers import TokenLayout
    from .model.losses import AngularLoss, BerHuLoss, MaskedCrossEntropyLoss, MaskedL1Loss, MaskedLoss, MaskedMSELoss
    from .plugin.factory import build_task_model, create_model, create_objective

_LAZY = {  # name -> module (relative to this package), imported on first use: these import torch
    **dict.fromkeys(["load_model", "save_model"], "formats.load"),
    **dict.fromkeys(["create_model", "create_objective", "build_task_model"], "plugin.factory"),
    **dict.fromkeys(["Predictor", "find_checkpoint", "working_size"], "infer.predictor"),
    **dict.fromkeys(["Metric", "ClassificationMetrics", "SegmentationMetrics", "DepthMetrics", "NormalsMetrics"],
                    "metrics"),
    **dict.fromkeys(["LinearHead", "DenseLinearHead", "ConvNeXtHead", "DPTHead"], "model.heads"),
    **dict.fromkeys(["MaskedLoss", "MaskedMSELoss", "MaskedL1Loss", "MaskedCrossEntropyLoss", "BerHuLoss",
                     "AngularLoss"], "model.losses"),
    "TokenLayout": "model.layers",
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
    "AngularLoss",
    "BerHuLoss",
    "CheckpointError",
    "ClassEmbeddingInput",
    "ClassificationMetrics",
    "ConfigError",
    "ConvNeXtHead",
    "DPTHead",
    "DecoderContext",
    "DenseLinearHead",
    "DepthMetrics",
    "HeadContext",
    "InputError",
    "Labeler",
    "LinearHead",
    "Logger",
    "MaskedCrossEntropy",
    "MaskedCrossEntropyLoss",
    "MaskedL1",
    "MaskedL1Loss",
    "MaskedLoss",
    "MaskedMSE",
    "MaskedMSELoss",
    "Metric",
    "Modality",
    "ModelConfig",
    "MultiMAEError",
    "NormalsMetrics",
    "PatchInput",
    "PluginError",
    "Predictor",
    "SegmentationMetrics",
    "SpatialOutput",
    "Task",
    "Teacher",
    "TeacherRequest",
    "TokenLayout",
    "UnknownModalityError",
    "Weights",
    "__version__",
    "as_path",
    "atomic_write_bytes",
    "build_task_model",
    "by_size",
    "create_model",
    "create_objective",
    "decode_array",
    "decode_image",
    "decode_labels",
    "file_bytes",
    "find_checkpoint",
    "hookimpl",
    "load_model",
    "protocols",
    "read_array",
    "read_image",
    "read_labels",
    "save_model",
    "working_size",
    "write_array",
    "write_checked",
    "write_image",
    "write_palette_png",
]
