"""`multimae features`: embeddings of image files, as one safetensors file."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from ..errors import ConfigError


def register(app: typer.Typer) -> None:
    @app.command("features")
    def features_command(
        images: list[Path] = typer.Argument(..., help="Image files or folders (read as the checkpoint's first input)."),
        out: Path = typer.Option(..., "--out", help="The .safetensors file to write."),
        checkpoint: Path | None = typer.Option(None, "--checkpoint", help="Weights file, run folder or weights name "
                                               "(default: $MULTIMAE_CHECKPOINT, else the newest run under ./runs)."),
        extra: list[str] = typer.Option(None, "--input", help="Extra input MODALITY=PATH (a file, or a folder "
                                        "matched by name), e.g. depth=depth/."),
        pool: str = typer.Option("mean", "--pool", help="mean (of the patch tokens) | global (first global token)."),
        tokens: bool = typer.Option(False, "--tokens", help="Also write every token (N, T, dim)."),
        batch_size: int = typer.Option(16, "--batch-size"),
        device: str = typer.Option("auto", "--device", help="auto | cpu | cuda."),
        overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing file."),
        skip_bad: bool = typer.Option(False, "--skip-bad", help="Skip (and list) unreadable images."),
        quiet: bool = typer.Option(False, "--quiet"),
        as_json: bool = typer.Option(False, "--json", help="Print a JSON summary."),
    ) -> None:
        """Encode images whole (no masking, deterministic) and write pooled features, and tokens with --tokens.

        Rows follow the files' sorted keys, listed in the file's header (`multimae.keys`); read them back with
        `multimae_cli.infer.features.read_features(path)`.
        """
        if device not in ("auto", "cpu", "cuda"):
            raise ConfigError(f"--device {device}: expected auto, cpu or cuda")
        from ..infer.features import extract_features
        from ..infer.inputs import parse_inputs
        from .output import progress

        inputs = parse_inputs(extra)
        with progress(quiet or as_json) as bar:
            handle = bar.add_task("encoding", total=None)
            summary = extract_features(images, out, checkpoint, inputs, pool, tokens, batch_size, device, overwrite,
                                       skip_bad, lambda done, total: bar.update(handle, advance=done, total=total))
        if as_json:
            typer.echo(json.dumps(summary))
        elif not quiet:
            shapes = f"pooled {tuple(summary['pooled'])}" + (f", tokens {tuple(summary['tokens'])}"
                                                              if summary["tokens"] else "")
            typer.echo(f"{summary['images']} image(s) -> {out}: {shapes} ({summary['seconds']:.2f} s)")
        for line in summary["skipped_files"]:
            typer.echo(f"skipped: {line}", err=True)
