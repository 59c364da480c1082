"""The model card of a run folder: `runs/<name>/README.md`, with Hugging Face front matter so the folder can be
uploaded as it is. Written by rank 0 when a run ends; it says what was trained, on what, from which weights
(and their licence), the final figures, the hardware, and how to load the result."""

from __future__ import annotations

import json
import platform
from pathlib import Path
from typing import Any

import torch

from .._version import __version__
from ..formats.weights import record_of
from ..io import atomic_write_bytes
from .distributed import DistInfo


def _hardware(device: torch.device, world: int) -> str:
    if device.type == "cuda":
        return f"{world} x {torch.cuda.get_device_name(device)}"
    threads = torch.get_num_threads()
    return f"{world} x CPU ({platform.processor() or platform.machine()}, {threads} thread{'s' * (threads != 1)})"


def _data(config) -> str:
    data = config.data
    if data.source == "synthetic":
        return f"the embedded synthetic scenes ({data.synthetic_scenes} per epoch, seed {config.seed})"
    return f"the folder dataset `{data.path}` (split `{data.split}`)"


def _origin(checkpoint: str | None) -> tuple[str, str, str]:
    """(what the run started from, the licence id and the licence text that puts on the result): a named
    weights file carries its registered licence; other files' licences are not known here."""
    if not checkpoint:
        return "random initialisation", "other", ""
    record = record_of(checkpoint)
    if record is None:
        return f"`{checkpoint}`", "other", ""
    return f"`{checkpoint}` ({record.description or record.name}; {record.licence})", record.licence_id, record.licence


def write_model_card(run: Path, kind: str, config, model_config, summary: dict[str, Any], device: torch.device,
                     info: DistInfo) -> Path | None:
    """`run/README.md` for a finished `pretrain` / `finetune` run, written by rank 0 (None on other ranks)."""
    if not info.is_main:
        return None
    start, licence, licence_text = _origin(getattr(config, "checkpoint", None))
    task = summary.get("task")
    tags = list(dict.fromkeys(["multimae", "masked-autoencoder", *model_config.inputs, *([task] if task else [])]))
    front = ["---", "library_name: multimae", f"license: {licence}", "tags:", *[f"- {tag}" for tag in tags], "---"]
    figures = [f"- loss: {summary['first_loss']:.4f} -> {summary['final_loss']:.4f}"
               if summary.get("first_loss") is not None and summary.get("final_loss") is not None
               else "- loss: no step was run"]
    for name, entry in ((summary.get("cross_modal") or {}).get("outputs") or {}).items():
        guesses = ", ".join(f"{label} {entry[key]:.4g}" for key, label in (("average_scene", "average scene"),
                                                                           ("constant", "constant"))
                            if entry.get(key) is not None)
        figures.append(f"- held out, {name} from {summary['cross_modal']['source']} alone: {entry['metric']} "
                       f"{entry['value']:.4g}" + (f" (guesses that ignore the input: {guesses})" if guesses else ""))
    if summary.get("metrics"):
        best = f" (best {summary['main_metric']} {summary['best']:.4g}, kept in `best/`)" \
            if summary.get("best") is not None else ""
        rounded = {key: round(value, 4) for key, value in summary["metrics"].items()}
        figures.append(f"- validation at the end: {json.dumps(rounded)}{best}")
    what = f"fine-tuned for `{task}`" if task else "pretrained (masked multi-modal autoencoding)"
    load = ("multimae predict photo.jpg --out out/ --checkpoint " + str(run) if not task else
            f"multimae predict photo.jpg --out out/ --checkpoint {run}\nmultimae eval {run} --split test")
    python = (f"from multimae_cli import load_model\nmodel = load_model(\"{run}/last/model.safetensors\")" if not task
              else "from multimae_cli.formats.load import load_task_model\n"
                   f"model = load_task_model(\"{run}\")  # best/ when it exists, else last/")
    lines = [
        *front, "", f"# {run.name}", "",
        f"A MultiMAE model {what} with multimae {__version__} (`multimae {kind}`).", "",
        "| | |", "|---|---|",
        f"| inputs | {', '.join(model_config.inputs)} |",
        f"| outputs | {', '.join(model_config.outputs) or task or '-'} |",
        f"| encoder | {model_config.depth} blocks, dim {model_config.dim}, {model_config.num_heads} heads, patch "
        f"{model_config.patch_size}, {model_config.image_size[0]}x{model_config.image_size[1]} px |",
        f"| data | {_data(config)} |",
        f"| started from | {start} |",
        f"| steps | {summary['steps']} at batch {config.batch_size} per process |",
        f"| hardware | {_hardware(device, info.world)} |",
        "", "## Results", "", *figures, "",
        "## Use", "", "```bash", load, "```", "", "```python", python, "```", "",
        "The full configuration is `config.yaml`; the training log is `metrics.jsonl`. Licence of these weights: "
        + (f"{licence_text}, inherited from the weights they start from." if licence_text
           else "set by their author (the multimae code is Apache-2.0)."),
        "",
    ]
    path = run / "README.md"
    atomic_write_bytes(path, "\n".join(lines).encode())
    return path
