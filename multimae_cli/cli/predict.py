"""`multimae predict`: depth, semseg, normals, ... from your own images."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from ..errors import ConfigError
from ..infer.inputs import parse_inputs


def register(app: typer.Typer) -> None:
    @app.command("predict")
    def predict_command(
        images: list[Path] = typer.Argument(..., help="Image files or folders (read as the checkpoint's first input)."),
        out: Path = typer.Option(..., "--out", help="A file for one image and one task, else a folder."),
        task: list[str] = typer.Option(None, "--task", help="Output to predict (repeatable or comma-separated; "
                                       "default: every output not given as an input)."),
        checkpoint: Path | None = typer.Option(None, "--checkpoint", help="Weights file or run folder (default: "
                                               "$MULTIMAE_CHECKPOINT, else the newest run under ./runs)."),
        extra: list[str] = typer.Option(None, "--input", help="Extra input MODALITY=PATH (a file, or a folder "
                                        "matched by name), e.g. depth=d.png."),
        colorize: bool = typer.Option(False, "--colorize", help="Also write coloured pictures (<task>-color/)."),
        viz: Path | None = typer.Option(None, "--viz", help="Write the demo grid: input, masked input, outputs."),
        mask_ratio: float = typer.Option(0.0, "--mask-ratio", help="Mask this share of input tokens."),
        seed: int = typer.Option(0, "--seed", help="Seed of the masks."),
        batch_size: int = typer.Option(8, "--batch-size"),
        device: str = typer.Option("auto", "--device", help="auto | cpu | cuda."),
        overwrite: bool = typer.Option(False, "--overwrite", help="Replace existing output files."),
        skip_bad: bool = typer.Option(False, "--skip-bad", help="Skip (and count) unreadable images."),
        quiet: bool = typer.Option(False, "--quiet"),
        as_json: bool = typer.Option(False, "--json", help="Print a JSON summary."),
    ) -> None:
        """Predict modalities for images with a pretrained or fine-tuned checkpoint."""
        if device not in ("auto", "cpu", "cuda"):
            raise ConfigError(f"--device {device}: expected auto, cpu or cuda")
        tasks = [name.strip() for value in task or [] for name in value.split(",") if name.strip()]
        inputs = parse_inputs(extra)
        from ..infer.predict import predict
        from .output import progress

        with progress(quiet or as_json) as bar:
            handle = bar.add_task("predicting", total=None)

            def advance(done: int, total: int) -> None:
                bar.update(handle, advance=done, total=total)

            summary = predict(images, out, tasks, checkpoint, inputs, colorize, viz, mask_ratio, seed, batch_size,
                              device, overwrite, skip_bad, advance)
        if as_json:
            typer.echo(json.dumps(summary))
        elif not quiet:
            skipped = f", {summary['skipped']} skipped" if summary["skipped"] else ""
            typer.echo(f"{summary['images']} image(s){skipped}: {', '.join(summary['tasks'])} -> {out} "
                       f"({summary['seconds']:.2f} s)")
            for key, ranked in summary.get("classes", {}).items():
                typer.echo(f"{key}: {ranked[0]['class']} ({ranked[0]['probability']:.1%})")
            for line in summary["skipped_files"]:
                typer.echo(f"skipped: {line}", err=True)
