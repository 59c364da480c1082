"""`multimae demo`: a local web page to upload an image, move each input's visible tokens, see every output."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from ..errors import ConfigError

MEGABYTE = 1_000_000


def register(app: typer.Typer) -> None:
    @app.command("demo")
    def demo_command(
        checkpoint: str | None = typer.Option(None, "--checkpoint", help="Weights file, run folder or weights name "
                                              "(default: $MULTIMAE_CHECKPOINT, else the newest run under ./runs)."),
        host: str = typer.Option("127.0.0.1", "--host", help="Interface to listen on; anything but loopback "
                                 "makes the page reachable from other machines."),
        port: int = typer.Option(7860, "--port", help="Port (0 picks a free one)."),
        device: str = typer.Option("auto", "--device", help="auto | cpu | cuda."),
        max_upload_mb: float = typer.Option(10.0, "--max-upload-mb", help="Largest upload accepted, in MB."),
        export_space: Path | None = typer.Option(None, "--export-space", help="Write a Hugging Face Space folder "
                                                 "that runs this demo, instead of serving."),
        requirement: str | None = typer.Option(None, "--requirement", help="With --export-space: the pip line that "
                                               "installs multimae in the Space (default: multimae==VERSION)."),
        verbose: bool = typer.Option(False, "--verbose", help="Log every request."),
        as_json: bool = typer.Option(False, "--json", help="Print the URL (or the exported Space) as JSON."),
    ) -> None:
        """Serve an interactive demo of a checkpoint: masked inputs and every prediction, as the official demo.

        A pretraining checkpoint gets a slider per input (visible tokens) or a Dirichlet draw with a seed; a
        fine-tuned one shows its task's output. Examples: a bundled photo and held-out synthetic scenes.
        """
        if device not in ("auto", "cpu", "cuda"):
            raise ConfigError(f"--device {device}: expected auto, cpu or cuda")
        if not 0 <= port <= 65535:
            raise ConfigError(f"--port {port}: expected 0-65535")
        if not 0 < max_upload_mb < 1e6:  # NaN fails too
            raise ConfigError(f"--max-upload-mb must be a positive number of megabytes, got {max_upload_mb}")
        if export_space is not None:
            from ..infer.demo.space import export_space as export
            from ..infer.predictor import find_checkpoint

            source = checkpoint if checkpoint else str(find_checkpoint(None))
            written = export(export_space, source, requirement=requirement)
            typer.echo(json.dumps(written) if as_json else f"Space written to {written['folder']} "
                       f"({', '.join(written['files'])}); push it to a Docker Space on huggingface.co")
            return
        from ..infer.demo.engine import Demo
        from ..infer.demo.server import LOOPBACK, serve
        from .output import working

        loaded: list[Demo] = []

        def load() -> Demo:
            with working(as_json, "loading the checkpoint"):
                loaded.append(Demo.from_checkpoint(checkpoint, device, round(max_upload_mb * MEGABYTE)))
            return loaded[0]

        def ready(url: str) -> None:
            if as_json:
                typer.echo(json.dumps({"url": url, "checkpoint": loaded[0].label}))
                return
            typer.echo(f"MultiMAE demo of {loaded[0].label} at {url} (Ctrl+C to stop)")
            if host not in LOOPBACK:
                typer.echo(f"warning: listening on {host}: other machines can reach this page", err=True)

        serve(load, host, port, quiet=not verbose, ready=ready)
