"""Built-in fine-tuning tasks: classification, semantic segmentation, depth and surface normals.

Heads, losses and metrics as the official fine-tuning: a linear head on mean-pooled tokens for
classification, the ConvNeXt-style head (or DPT) for segmentation, DPT for depth and normals, and a per-token
linear head for every dense task (the linear probe of a frozen encoder, `freeze_encoder`); BerHu or L1
on valid depth pixels; cross-entropy ignoring label 255; the angle between normals.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from multimae_cli import HeadContext, Task, hookimpl

if TYPE_CHECKING:
    import torch
    from torch import nn

IGNORE_INDEX = 255


def _linear(ctx: HeadContext) -> nn.Module:
    from multimae_cli import LinearHead

    return LinearHead(ctx.dim, ctx.num_outputs, **ctx.options)


def _main_modalities(ctx: HeadContext) -> dict[str, Any]:
    """Dense heads read every input's tokens unless `main_modalities` says otherwise. The official rgb + depth
    recipes read rgb only (`head_options.main_modalities: [rgb]`); reading both measured 20-21 against 12 mIoU
    on the synthetic scenes (tiny encoder, 100 steps), where depth hardly reaches the rgb tokens."""
    options = dict(ctx.options)
    options.setdefault("main_modalities", ctx.inputs)
    return options


def _dense_linear(ctx: HeadContext) -> nn.Module:
    from multimae_cli import DenseLinearHead

    return DenseLinearHead(ctx.dim, ctx.num_outputs, ctx.patch_size, **_main_modalities(ctx))


def _convnext(ctx: HeadContext) -> nn.Module:
    from multimae_cli import ConvNeXtHead

    return ConvNeXtHead(ctx.dim, ctx.num_outputs, **_main_modalities(ctx))


def _dpt(head_type: str):
    def factory(ctx: HeadContext) -> nn.Module:
        from multimae_cli import DPTHead

        return DPTHead(ctx.dim, ctx.num_outputs, head_type=head_type, **_main_modalities(ctx))

    return factory


def _cross_entropy(options: Mapping[str, Any]) -> nn.Module:
    import torch

    return torch.nn.CrossEntropyLoss(ignore_index=IGNORE_INDEX, **options)


def _depth_loss(kind: str):
    def factory(options: Mapping[str, Any]) -> nn.Module:
        from multimae_cli import BerHuLoss

        return BerHuLoss(kind, **options)

    return factory


def _angular(options: Mapping[str, Any]) -> nn.Module:
    from multimae_cli import AngularLoss

    return AngularLoss(**options)


def _classification_metrics(num_outputs: int):
    from multimae_cli import ClassificationMetrics

    return ClassificationMetrics(num_outputs)


def _segmentation_metrics(num_outputs: int):
    from multimae_cli import SegmentationMetrics

    return SegmentationMetrics(num_outputs, ignore_index=IGNORE_INDEX)


def _depth_metrics(num_outputs: int):
    from multimae_cli import DepthMetrics

    return DepthMetrics()


def _normals_metrics(num_outputs: int):
    from multimae_cli import NormalsMetrics

    return NormalsMetrics()


def _depth_target(depth: torch.Tensor, depth_scale: float) -> torch.Tensor:
    """File units -> metres (0 and non-finite stay invalid)."""
    return depth.float() / depth_scale


def _depth_to_file(depth: torch.Tensor, task_info: Mapping[str, Any]):
    """Predicted metres -> millimetres, the usual 16-bit depth PNG unit (`.npy` keeps the fraction)."""
    return depth.float().numpy()[0] * 1000.0


def _labels_target(labels: torch.Tensor, depth_scale: float) -> torch.Tensor:
    return labels.long()


def _normals_target(normals: torch.Tensor, depth_scale: float) -> torch.Tensor:
    return normals.float()


@hookimpl
def register_tasks(register):
    register(Task(
        name="classification", kind="classification", description="image classes from class folders",
        heads={"linear": _linear}, losses={"cross_entropy": _cross_entropy}, metrics=_classification_metrics,
    ))
    register(Task(
        name="semseg", kind="dense", target="semseg", description="semantic segmentation (labels 255 ignored)",
        heads={"convnext": _convnext, "dpt": _dpt("semseg"), "linear": _dense_linear},
        losses={"cross_entropy": _cross_entropy}, metrics=_segmentation_metrics, prepare_target=_labels_target,
    ))
    register(Task(
        name="depth", kind="dense", target="depth", num_outputs=1, description="metric depth (DPT head)",
        heads={"dpt": _dpt("regression"), "linear": _dense_linear},
        losses={"berhu": _depth_loss("berhu"), "l1": _depth_loss("l1")}, metrics=_depth_metrics,
        prepare_target=_depth_target, to_file=_depth_to_file,
    ))
    register(Task(
        name="normals", kind="dense", target="normals", num_outputs=3, description="surface normals (DPT head)",
        heads={"dpt": _dpt("regression"), "linear": _dense_linear}, losses={"angular": _angular},
        metrics=_normals_metrics, prepare_target=_normals_target,
    ))
