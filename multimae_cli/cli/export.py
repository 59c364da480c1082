"""`multimae export` (weights out: native, official, timm, ONNX) and `multimae import` (official/timm in)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import typer

from ..errors import ConfigError


def parse_size(text: str | None) -> tuple[int, int] | None:
    """`224` or `224x320` (height x width)."""
    if text is None:
        return None
    parts = text.lower().split("x")
    try:
        sizes = [int(part) for part in parts]
    except ValueError:
        raise ConfigError(f"--image-size {text}: expected N or HxW, e.g. 224 or 224x320") from None
    if len(sizes) not in (1, 2) or min(sizes) < 1:
        raise ConfigError(f"--image-size {text}: expected N or HxW, e.g. 224 or 224x320")
    return (sizes[0], sizes[-1])


def _names(text: str | None) -> list[str] | None:
    return [name.strip() for name in text.split(",") if name.strip()] if text else None


def register(app: typer.Typer) -> None:
    @app.command("export")
    def export_command(
        checkpoint: Path = typer.Argument(..., help="Native .safetensors, official .pth or timm file, or a run / "
                                                    "checkpoint folder."),
        format: str = typer.Option(..., "--format", help="native | official | timm | onnx."),
        out: Path = typer.Option(..., "--out", help="File to write (.safetensors, .pth or .onnx)."),
        inputs: str | None = typer.Option(None, "--inputs", help="ONNX: inputs of the graph (default: all)."),
        outputs: str | None = typer.Option(None, "--outputs", help="ONNX: decoders to include (default: all)."),
        image_size: str | None = typer.Option(None, "--image-size", help="ONNX: input size N or HxW."),
        batch_size: int = typer.Option(1, "--batch-size", help="ONNX: batch size of the graph."),
        overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing file."),
        as_json: bool = typer.Option(False, "--json", help="Print a JSON summary."),
    ) -> None:
        """Write a checkpoint in another format; the file is re-loaded and checked before it is kept."""
        size = parse_size(image_size)
        from ..formats.export import export_model
        from .output import working

        with working(as_json, f"exporting {out} ({format}), then re-loading and checking it"):
            summary = export_model(checkpoint, format, out, inputs=_names(inputs), outputs=_names(outputs),
                                   image_size=size, batch_size=batch_size, overwrite=overwrite)
        if as_json:
            typer.echo(json.dumps(summary))
        else:
            what = f", fine-tuned {summary['task']} model" if "task" in summary else ""
            note = f"; {summary['note']}" if "note" in summary else ""
            typer.echo(f"wrote {out} ({format}{what}, verified){note}")
            if "model_card" in summary:
                card = summary["model_card"]
                typer.echo(f"model card: {card}" if card.startswith("not copied") else f"model card copied to {card}")
            if "load_with" in summary:
                typer.echo(f"load it with: {summary['load_with']}")

    @app.command("import")
    def import_command(
        kind: str = typer.Argument(..., help="official | timm."),
        source: Path = typer.Argument(..., help="The .pth / .safetensors file to convert."),
        out: Path = typer.Option(..., "--out", help="Native checkpoint to write (.safetensors)."),
        assignments: list[str] = typer.Option(None, "--set", help="Config a file cannot tell, e.g. num_heads=16."),
        overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing file."),
        as_json: bool = typer.Option(False, "--json", help="Print a JSON summary."),
    ) -> None:
        """Convert official MultiMAE or timm ViT weights into a native checkpoint (verified)."""
        if kind not in ("official", "timm"):
            raise ConfigError(f"import {kind}: expected 'official' or 'timm'")
        from ..config import parse_assignment

        overrides: dict[str, Any] = {}
        for assignment in assignments or []:
            overrides.update(parse_assignment(assignment))
        from ..formats.export import import_model
        from .output import working

        with working(as_json, f"importing {source} into {out}, then checking it"):
            summary = import_model(kind, source, out, overwrite=overwrite, **overrides)
        if as_json:
            typer.echo(json.dumps(summary))
        else:
            typer.echo(f"wrote {out}: inputs {', '.join(summary['inputs'])}, outputs "
                       f"{', '.join(summary['outputs']) or 'none'}, dim {summary['dim']}, depth {summary['depth']}, "
                       f"{summary['num_heads']} heads (set another count with --set num_heads=N)")
