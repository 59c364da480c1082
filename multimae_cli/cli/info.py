"""`multimae info CKPT`: what a checkpoint holds (architecture, modalities, parameter count)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import typer


def checkpoint_info(path: Path) -> dict:
    """The config a checkpoint rebuilds to, its tensor and parameter counts (encoder and decoders; a fine-tuned
    file's head apart), and a fine-tuned file's task record."""
    from ..formats.load import checkpoint_file, read_checkpoint, read_task_info

    state_dict, config = read_checkpoint(path)
    info = {
        "path": str(path),
        "config": config.model_dump(mode="json"),
        "tensors": len(state_dict),
        "elements": int(sum(t.numel() for t in state_dict.values())),
        "task": read_task_info(path),
    }
    if info["task"] is not None:
        from safetensors import safe_open

        with safe_open(str(checkpoint_file(path)), framework="pt") as handle:
            names = handle.keys()  # a safetensors handle, not a dict
            head = [handle.get_slice(key).get_shape() for key in names if key.startswith("head.")]
        info["head_tensors"] = len(head)
        info["head_elements"] = sum(math.prod(shape) for shape in head)
    return info


def register(app: typer.Typer) -> None:
    @app.command("info")
    def info_command(
        checkpoint: Path = typer.Argument(..., help="Native .safetensors, official .pth or timm ViT file, or a "
                                                    "run / checkpoint folder."),
        as_json: bool = typer.Option(False, "--json", help="Print JSON."),
    ) -> None:
        """Show the architecture and modalities a checkpoint holds."""
        info = checkpoint_info(checkpoint)
        if as_json:
            typer.echo(json.dumps(info, indent=2))
            return
        config = info["config"]
        typer.echo(f"{info['path']}: {info['tensors']} tensors, {info['elements']:,} elements")
        typer.echo(f"  inputs:  {', '.join(config['inputs'])}")
        task = info["task"]
        if task is not None:
            typer.echo(f"  task:    {task['task']}, {task['head']} head, {task['num_outputs']} output(s) "
                       f"({info['head_tensors']} tensors, {info['head_elements']:,} elements)")
        else:
            typer.echo(f"  outputs: {', '.join(config['outputs']) or '(none: encoder only)'}")
        for key in ("image_size", "patch_size", "dim", "depth", "num_heads", "decoder_dim", "decoder_depth",
                    "decoder_num_heads", "channels"):
            typer.echo(f"  {key}: {config[key]}")
        if task is None:
            grid = (config["image_size"][0] // config["patch_size"]) * (config["image_size"][1] // config["patch_size"])
            tokens = len(config["inputs"]) * grid
            visible = config["num_encoded_tokens"]
            typer.echo(f"  masking: {visible} of {tokens} input tokens visible ({1 - visible / tokens:.0%} masked), "
                       f"alphas {config['alphas']}")
