"""Pure torch model code: no file I/O, no CLI, no modality names."""

from .losses import MaskedCrossEntropyLoss, MaskedL1Loss, MaskedMSELoss, PretrainObjective
from .multimae import Encoded, MultiMAE

__all__ = ["Encoded", "MaskedCrossEntropyLoss", "MaskedL1Loss", "MaskedMSELoss", "MultiMAE", "PretrainObjective"]
