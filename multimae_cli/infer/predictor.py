"""The prediction engine: a checkpoint (pretraining or fine-tuned) turned into per-sample predictions.

A pretraining checkpoint predicts across modalities through its decoders, as the official demo does: the given
inputs fully visible, the wanted outputs fully masked (or, with `mask_ratio`, the inputs partly masked for
reconstruction pictures); a fine-tuned one through its head. No files are read or written here except the
checkpoint (`predict.py` is the file-level front end; the `multimae:` teacher uses this directly).
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import CheckpointError, ConfigError
from ..plugin.modality import Modality

CHECKPOINT_ENV = "MULTIMAE_CHECKPOINT"
CLASSIFICATION = "classification"


def find_checkpoint(checkpoint: str | Path | None = None, runs_dir: str | Path = "runs") -> Path:
    """The weights file to predict with: `checkpoint` (a file, a checkpoint folder or a run folder), else
    `$MULTIMAE_CHECKPOINT`, else the newest checkpoint of any run under `runs_dir`."""
    source = checkpoint or os.environ.get(CHECKPOINT_ENV)
    if source:
        from ..formats.load import checkpoint_file

        try:
            return checkpoint_file(source)
        except CheckpointError as exc:
            origin = "--checkpoint" if checkpoint else f"${CHECKPOINT_ENV}"
            raise CheckpointError(f"{exc} (from {origin})") from None
    found = sorted(Path(runs_dir).glob("*/*/model.safetensors"), key=lambda p: p.stat().st_mtime)
    found = [p for p in found if p.parent.name in ("last", "best")]
    if not found:
        raise CheckpointError(
            f"no checkpoint: pass --checkpoint FILE, set ${CHECKPOINT_ENV}, or make one under ./{runs_dir} with "
            "`multimae pretrain` (or convert official weights: `multimae import official FILE --out model.safetensors`)"
        )
    return found[-1]


def working_size(height: int, width: int, model_size: tuple[int, int], multiple: int) -> tuple[int, int]:
    """The image's aspect at about the model's pixel count, each side a multiple of the patch size."""
    scale = math.sqrt(model_size[0] * model_size[1] / (height * width))
    return (max(multiple, round(height * scale / multiple) * multiple),
            max(multiple, round(width * scale / multiple) * multiple))


def top_classes(probabilities, names: Sequence[str] | None, k: int = 5) -> list[dict[str, Any]]:
    """The `k` most probable classes, by name when the checkpoint knows the class folders."""
    values, indices = probabilities.topk(min(k, probabilities.numel()))
    return [{"class": names[i] if names else i, "probability": round(float(p), 6)}
            for p, i in zip(values.tolist(), indices.tolist(), strict=True)]


@dataclass
class Prediction:
    """One image's predictions at its own size, in model space (what the decoders output): dense outputs
    (C, H, W) float, label outputs (H, W) class ids. `pictures` are the rows of the demo grid."""

    key: str
    outputs: dict[str, Any]
    pictures: list[tuple[str, Any]] = field(default_factory=list)
    masks: dict[str, Any] = field(default_factory=dict)  # per masked input, its (rows, cols) token grid, True = hidden


class Predictor:
    """A loaded model that maps file-space arrays (what plugins `read`) to predictions."""

    def __init__(self, model, device: str = "auto") -> None:
        from ..plugin.factory import resolve_modalities
        from ..train.runtime import resolve_device

        self.device = resolve_device(device)
        self.model = model.to(self.device).eval()
        self.config = model.config
        self.task_info: dict[str, Any] | None = getattr(model, "task_info", None)
        self.task = None
        names = None
        if self.task_info is not None:  # a fine-tuned model: its head makes one output
            from ..plugin.registry import get_registry

            self.task = get_registry().task(self.task_info["task"])
            names = [*self.config.inputs, *([self.task.target] if self.task.target else [])]
        self.modalities: dict[str, Modality] = resolve_modalities(self.config, names=names)

    @classmethod
    def from_checkpoint(cls, checkpoint: str | Path, device: str = "auto") -> Predictor:
        """A pretraining checkpoint (any format `load_model` reads) or a fine-tuned one (`multimae finetune`)."""
        from ..formats.load import load_model, load_task_model, read_task_info

        if read_task_info(checkpoint) is not None:
            return cls(load_task_model(checkpoint), device)
        return cls(load_model(checkpoint), device)

    @property
    def tasks(self) -> list[str]:
        """Outputs this model can write: a fine-tuned model's task (its target modality, or `classification`);
        a pretraining model's outputs whose plugin has a writer (`norm_rgb`-style targets excluded)."""
        if self.task is not None:
            return [self.task.target or CLASSIFICATION]
        return [name for name in self.config.outputs if self.modalities[name].write is not None]

    def default_tasks(self, inputs: Sequence[str], masked: bool) -> list[str]:
        """Every writable output not given as an input; with masking, the inputs' reconstructions too."""
        if self.task is not None:
            return self.tasks
        return [name for name in self.tasks if masked or name not in inputs]

    def check_tasks(self, tasks: Sequence[str]) -> None:
        for name in tasks:
            if self.task is not None and name not in self.tasks:
                raise ConfigError(f"--task {name}: this fine-tuned checkpoint predicts {self.tasks[0]} only")
            if self.task is None and name not in self.config.outputs:
                raise ConfigError(f"--task {name}: this checkpoint cannot predict it "
                                  f"(it predicts: {', '.join(self.tasks) or 'nothing'})")
            if name not in self.tasks:
                raise ConfigError(f"--task {name}: the {name!r} plugin has no writer, so it cannot be saved")

    def check_inputs(self, names: Sequence[str]) -> None:
        unknown = [name for name in names if name not in self.config.inputs]
        if unknown:
            raise ConfigError(f"{', '.join(unknown)}: not an input of this checkpoint "
                              f"(inputs: {', '.join(self.config.inputs)})")

    def prepare(self, sample: Mapping[str, Any], size: tuple[int, int]) -> dict[str, Any]:
        """File-space arrays -> file-space tensors at `size` (each modality by its own resampling)."""
        from ..data.transforms import resize, to_tensor

        out = {}
        for name, array in sample.items():
            modality = self.modalities[name]
            array = resize(array, (size[0] // modality.stride, size[1] // modality.stride), modality.interpolation)
            out[name] = to_tensor(array, modality)
        return out

    def __call__(self, samples: Sequence[tuple[str, Mapping[str, Any]]], tasks: Sequence[str],
                 mask_ratio: float = 0.0, seed: int = 0, pictures: bool = False,
                 visible: Mapping[str, int] | None = None, alphas: float | None = None) -> list[Prediction]:
        """Predict `tasks` for samples `(key, {modality: file-space array})` that share one size.

        Masking: `mask_ratio` hides that share of all input tokens, spread across inputs by Dirichlet budgets
        (concentration `alphas`, default the model's); `visible` instead keeps exactly that many tokens of each
        input, at random places. Both are drawn from `seed`."""
        import torch
        import torch.nn.functional as F

        from ..data.transforms import to_device

        height, width = next(iter(samples[0][1].values())).shape[:2]
        size = working_size(height, width, self.config.image_size, self.config.patch_size)
        prepared = [self.prepare(sample, size) for _, sample in samples]
        inputs = to_device({name: torch.stack([p[name] for p in prepared]) for name in prepared[0]}, self.modalities,
                           self.device)
        if self.task is not None:
            return self._predict_task(samples, inputs, (height, width), pictures)
        per_input = (size[0] // self.config.patch_size) * (size[1] // self.config.patch_size)
        num_visible = max(1, round((1 - mask_ratio) * len(inputs) * per_input))
        masked = mask_ratio > 0 or visible is not None
        with torch.inference_mode(), torch.random.fork_rng(devices=[self.device] if self.device.type == "cuda" else []):
            torch.manual_seed(seed)
            masks = None if visible is None else self._masks(visible, list(inputs), len(samples), per_input)
            encoded = self.model.encode(inputs, task_masks=masks, num_encoded_tokens=None if masks else num_visible,
                                        alphas=alphas, mask_inputs=masked)
            outputs = self.model.decode(encoded, tasks)
        results = []
        for i, (key, _) in enumerate(samples):
            predicted = {}
            for name, value in outputs.items():
                value = F.interpolate(value[i:i + 1].float(), size=(height, width), mode="bilinear",
                                      align_corners=False)[0]
                predicted[name] = value.argmax(0) if self.modalities[name].kind == "labels" else value
            row = []
            if pictures:
                row = [(name, inputs[name][i].cpu()) for name in inputs]
                if masked:
                    drawn = [(f"masked {name}", self._masked_picture(name, inputs[name][i], encoded.masks[name][i],
                                                                     size)) for name in inputs]
                    row += [(title, picture) for title, picture in drawn if picture is not None]
                row += [(name, outputs[name][i].float().cpu()) for name in tasks]
            grid = (size[0] // self.config.patch_size, size[1] // self.config.patch_size)
            hidden = {name: encoded.masks[name][i].view(grid).bool().cpu().numpy() for name in inputs} if masked else {}
            results.append(Prediction(key, {k: v.cpu() for k, v in predicted.items()}, row, hidden))
        return results

    def _masks(self, visible: Mapping[str, int], names: Sequence[str], batch: int, per_input: int) -> dict[str, Any]:
        """Masks keeping exactly `visible[name]` tokens of each input (1 = masked), at places drawn at random."""
        import torch

        unknown = [name for name in visible if name not in names]
        if unknown:
            raise ConfigError(f"visible tokens given for {', '.join(unknown)}, which is not among the inputs "
                              f"({', '.join(names)})")
        masks = {}
        for name in names:
            count = visible.get(name, 0)
            if not 0 <= count <= per_input:
                raise ConfigError(f"{name}: {count} visible tokens asked, but it has {per_input}")
            order = torch.rand(batch, per_input).argsort(dim=1)
            masks[name] = (order >= count).long().to(self.device)
        if sum(visible.get(name, 0) for name in names) == 0:
            raise ConfigError("no token left visible: keep at least one token of one input")
        return masks

    def _predict_task(self, samples, inputs, size: tuple[int, int], pictures: bool) -> list[Prediction]:
        """A fine-tuned head's output per sample: class probabilities, or a map at the image's own size."""
        import torch
        import torch.nn.functional as F

        with torch.inference_mode():
            output = self.model(inputs).float()
        results = []
        for i, (key, _) in enumerate(samples):
            if self.task.target is None:
                results.append(Prediction(key, {CLASSIFICATION: output[i].softmax(0).cpu()}))
                continue
            value = F.interpolate(output[i:i + 1], size=size, mode="bilinear", align_corners=False)[0]
            name = self.task.target
            if self.modalities[name].kind == "labels":
                value = value.argmax(0)
            row = [(n, inputs[n][i].cpu()) for n in inputs] + [(name, output[i].cpu())] if pictures else []
            results.append(Prediction(key, {name: value.cpu()}, row))
        return results

    def _masked_picture(self, name: str, data, mask, size: tuple[int, int]):
        """The input drawn by its plugin, masked patches greyed out (None when it cannot be drawn)."""
        import numpy as np

        colorize = self.modalities[name].colorize
        if colorize is None:
            return None
        picture = colorize(data.cpu()).copy()
        grid = (size[0] // self.config.patch_size, size[1] // self.config.patch_size)
        masked = mask.view(grid).cpu().numpy().astype(bool)
        rows = np.arange(picture.shape[0]) * grid[0] // picture.shape[0]
        cols = np.arange(picture.shape[1]) * grid[1] // picture.shape[1]
        picture[masked[rows[:, None], cols[None, :]]] = 128
        return picture

    def file_array(self, name: str, value):
        """A model-space prediction as the array the modality's `write` takes."""
        modality = self.modalities[name]
        if self.task is not None:  # fine-tuned outputs are in the units loss and metrics saw
            if self.task.to_file is not None:
                return self.task.to_file(value, self.task_info)
            if modality.kind == "labels":
                ids = value.numpy()
                return ids + 1 if self.task_info.get("reduce_zero_label") else ids  # back to the files' ids
            array = value.float().numpy()
            return array[0] if array.shape[0] == 1 else array.transpose(1, 2, 0)
        if modality.kind == "labels":
            return value.numpy()
        array = modality.denormalize(value.unsqueeze(0))[0].float().numpy()
        return array[0] if array.shape[0] == 1 else array.transpose(1, 2, 0)
