"""What a fine-tuning task is: the record a plugin registers with `register_tasks`, and the model it trains.

A `Task` names the modality its labels come from (none for classification, whose labels are class folders),
the heads it can use, its losses and its metrics. The core builds a `FinetuneModel` (MultiViT encoder + head)
from it
and never names a task.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    import torch
    from torch import nn

    from .protocols import Metric


@dataclass(frozen=True)
class HeadContext:
    """What a head factory needs to know about the encoder it sits on."""

    dim: int
    depth: int
    patch_size: int
    image_size: tuple[int, int]
    inputs: tuple[str, ...]
    num_outputs: int
    options: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Task:
    """One fine-tuning task.

    `target`: the modality whose files are the labels (read by its plugin, kept at their own resolution for
    metrics); None for classification, whose label is a sample's class folder. `num_outputs`: channels or
    classes (None: the target modality's channel count, or the number of class folders). `heads` and
    `losses` map names to factories (a loss factory takes the config's `loss_options`); the first of each is
    the default. A loss is called as `loss(prediction, target)` with the target at the prediction's size.
    `prepare_target(tensor, depth_scale)` turns the target modality's file-space tensor into what loss and
    metrics take (e.g. depth file units to metres); `to_file(prediction, task_info)` turns one predicted map
    (C, H, W, or class ids (H, W)) back into the array the target modality's `write` takes (default: ids as
    they are, shifted back by one after `reduce_zero_label`; dense maps channels-last).
    """

    name: str
    kind: Literal["classification", "dense"]
    heads: Mapping[str, Callable[[HeadContext], nn.Module]]
    losses: Mapping[str, Callable[[Mapping[str, Any]], nn.Module]]
    metrics: Callable[[int], Metric]
    target: str | None = None
    num_outputs: int | None = None
    prepare_target: Callable[[torch.Tensor, float], torch.Tensor] | None = None
    to_file: Callable[[torch.Tensor, Mapping[str, Any]], Any] | None = None
    description: str = ""
