"""ONNX export of the encoder and chosen decoders (or a fine-tuned model's head), checked in onnxruntime
before it is kept.

The exported graph takes the model's inputs fully visible (no masking: the official demo's cross-modal
prediction), named as the modalities (`rgb`, ...), and returns the chosen outputs in model space, named
`<modality>_pred` (a modality may be both an input and an output). A fine-tuned checkpoint gives its head's
output, named `<task>_pred` (class logits, or a map at the input size). Sizes are fixed at export (`image_size`,
`batch_size`): the token grid is computed from the input shape in Python, which `torch.export`
specialises.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import ConfigError, MultiMAEError
from .load import load_model, load_task_model, read_task_info

EXTRA_HINT = "pip install 'multimae[onnx]'"


class CrossModalPredictor(nn.Module):
    """inputs (positional, in the given order) -> outputs (a tuple, in the given order), nothing masked."""

    def __init__(self, model: nn.Module, inputs: Sequence[str], outputs: Sequence[str]) -> None:
        super().__init__()
        self.model = model
        self.inputs = list(inputs)
        self.outputs = list(outputs)

    def forward(self, *tensors: torch.Tensor) -> tuple[torch.Tensor, ...]:
        encoded = self.model.encode(dict(zip(self.inputs, tensors, strict=True)), mask_inputs=False)
        predictions = self.model.decode(encoded, self.outputs)
        return tuple(predictions[name] for name in self.outputs)


class TaskPredictor(nn.Module):
    """A fine-tuned model: inputs (positional, in the given order) -> (its head's output,)."""

    def __init__(self, model: nn.Module, inputs: Sequence[str]) -> None:
        super().__init__()
        self.model = model
        self.inputs = list(inputs)

    def forward(self, *tensors: torch.Tensor) -> tuple[torch.Tensor]:
        return (self.model(dict(zip(self.inputs, tensors, strict=True))),)


def example_inputs(model: nn.Module, inputs: Sequence[str], image_size: tuple[int, int],
                   batch_size: int) -> list[torch.Tensor]:
    """Random inputs of the right shapes and dtypes (labels as class ids)."""
    from ..plugin.factory import resolve_modalities

    modalities = resolve_modalities(model.config)
    generator = torch.Generator().manual_seed(0)
    tensors = []
    for name in inputs:
        modality = modalities[name]
        size = (image_size[0] // modality.stride, image_size[1] // modality.stride)
        if modality.kind == "labels":
            tensors.append(torch.randint(0, modality.channels, (batch_size, *size), generator=generator))
        else:
            tensors.append(torch.randn(batch_size, modality.channels, *size, generator=generator))
    return tensors


def export_onnx(checkpoint: str | Path, out: Path, inputs: Sequence[str] | None = None,
                outputs: Sequence[str] | None = None,
                image_size: tuple[int, int] | None = None, batch_size: int = 1,
                tolerance: float = 1e-4) -> dict[str, Any]:
    try:
        import onnxruntime
        import onnxscript  # noqa: F401  (torch's ONNX exporter needs it)
    except ImportError:
        raise MultiMAEError(f"--format onnx needs the optional ONNX extra: {EXTRA_HINT}") from None
    from ..io import write_checked

    task_info = read_task_info(checkpoint)
    if task_info is not None:
        model, names, outputs, wrapper = _task_graph(checkpoint, task_info, inputs, outputs)
    else:
        model, names, outputs, wrapper = _cross_modal_graph(checkpoint, inputs, outputs)
    config = model.config
    size = tuple(image_size or config.image_size)
    if any(side % config.patch_size for side in size):
        raise ConfigError(f"--image-size {size[0]}x{size[1]}: must be a multiple of the patch size {config.patch_size}")
    tensors = example_inputs(model, names, size, batch_size)

    def write(tmp: Path) -> None:
        import contextlib
        import io
        import logging
        import warnings

        logging.getLogger("torch.onnx").setLevel(logging.ERROR)
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()), \
                contextlib.redirect_stderr(io.StringIO()):
            warnings.simplefilter("ignore")
            try:
                torch.onnx.export(wrapper, tuple(tensors), str(tmp), input_names=names,
                                  output_names=[f"{name}_pred" for name in outputs], dynamo=True,
                                  external_data=False, verbose=False)
            except Exception as exc:
                first = next((line for line in str(exc).splitlines() if line.strip()), type(exc).__name__)
                raise MultiMAEError(f"ONNX export of {checkpoint} failed: {first}") from None

    error: dict[str, float] = {}

    def check(tmp: Path) -> None:
        session = onnxruntime.InferenceSession(str(tmp), providers=["CPUExecutionProvider"])
        found = session.run(None, {name: tensor.numpy() for name, tensor in zip(names, tensors, strict=True)})
        with torch.no_grad():
            expected = wrapper(*tensors)
        for name, ours, theirs in zip(outputs, expected, found, strict=True):
            error[name] = float((ours - torch.from_numpy(theirs)).abs().max())
        worst = max(error.values())
        if worst > tolerance:
            raise MultiMAEError(f"{out}: onnxruntime differs from torch by {worst:.2e} (> {tolerance:g})")

    write_checked(out, write, check)
    return {"format": "onnx", "out": str(out), "source": str(checkpoint), "inputs": names,
            "outputs": outputs, "image_size": list(size), "batch_size": batch_size, "max_abs_error": error}


def _cross_modal_graph(checkpoint, inputs: Sequence[str] | None, outputs: Sequence[str] | None):
    """A pretraining checkpoint: the chosen inputs and decoders (default: all)."""
    model = load_model(checkpoint).eval()
    config = model.config
    names = list(inputs or config.inputs)
    absent = [name for name in names if name not in config.inputs]
    if absent:
        raise ConfigError(f"--inputs {', '.join(absent)}: not an input of this checkpoint "
                          f"(inputs: {', '.join(config.inputs)})")
    outputs = list(outputs or config.outputs)
    unknown = [name for name in outputs if name not in config.outputs]
    if unknown:
        raise ConfigError(f"--outputs {', '.join(unknown)}: not an output of this checkpoint "
                          f"(outputs: {', '.join(config.outputs) or 'none'})")
    if not outputs:
        raise ConfigError("--format onnx: the checkpoint has no outputs to export (an encoder only)")
    return model, names, outputs, CrossModalPredictor(model, names, outputs).eval()


def _task_graph(checkpoint, task_info: dict[str, Any], inputs: Sequence[str] | None,
                outputs: Sequence[str] | None):
    """A fine-tuned checkpoint: all its inputs (its head reads them) to its head's output."""
    model = load_task_model(checkpoint).eval()
    names = list(model.config.inputs)
    task = task_info["task"]
    if inputs and list(inputs) != names:
        raise ConfigError(f"--inputs: a fine-tuned checkpoint takes the inputs it was trained on "
                          f"({', '.join(names)})")
    if outputs and list(outputs) != [task]:
        raise ConfigError(f"--outputs: a fine-tuned {task} checkpoint has one output, {task}")
    return model, names, [task], TaskPredictor(model, names).eval()
