"""`multimae info CKPT`: what a checkpoint holds (architecture, modalities, parameter count)."""

from __future__ import annotations

import json
from pathlib import Path

import typer


def checkpoint_info(path: Path) -> dict:
    """The config a checkpoint rebuilds to, and its tensor and parameter counts."""
    from ..formats import read_checkpoint

    state_dict, config = read_checkpoint(path)
    return {
        "path": str(path),
        "config": config.model_dump(mode="json"),
        "tensors": len(state_dict),
        "elements": int(sum(t.numel() for t in state_dict.values())),
    }


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
        typer.echo(f"  outputs: {', '.join(config['outputs']) or '(none: encoder only)'}")
        for key in ("image_size", "patch_size", "dim", "depth", "num_heads", "decoder_dim", "decoder_depth",
                    "decoder_num_heads", "channels"):
            typer.echo(f"  {key}: {config[key]}")
