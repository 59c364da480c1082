"""`multimae finetune` and `multimae eval`: a task head on a pretrained encoder, and its metrics."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import typer

from ..errors import ConfigError
from .output import complete_names, config_yaml, summary_line


def _print_metrics(title: str, metrics: dict[str, float]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title)
    table.add_column("metric")
    table.add_column("value", justify="right")
    for key, value in metrics.items():
        table.add_row(key, f"{value:.4f}")
    Console().print(table)


def register(app: typer.Typer) -> None:
    register_finetune(app)
    register_eval(app)


def register_finetune(app: typer.Typer) -> None:
    @app.command("finetune")
    def finetune_command(
        task: str | None = typer.Option(None, "--task", help="classification | semseg | depth | normals | ...",
                                        autocompletion=complete_names("tasks")),
        checkpoint: Path | None = typer.Option(None, "--checkpoint", help="Pretrained weights (native, official "
                                               ".pth or timm); none: a fresh encoder."),
        inputs: str | None = typer.Option(None, "--inputs", help="Input modalities, e.g. rgb or rgb,depth."),
        config: Path | None = typer.Option(None, "--config", help="YAML file of FinetuneConfig keys."),
        assignments: list[str] = typer.Option(None, "--set", help="key=value, e.g. layer_decay=0.65 (repeatable)."),
        data: Path | None = typer.Option(None, "--data", help="Folder dataset root (default: synthetic scenes)."),
        image_size: int | None = typer.Option(None, "--image-size"),
        batch_size: int | None = typer.Option(None, "--batch-size"),
        steps: int | None = typer.Option(None, "--steps"),
        epochs: float | None = typer.Option(None, "--epochs"),
        precision: str | None = typer.Option(None, "--precision", help="auto | bf16 | fp16 | fp32."),
        device: str | None = typer.Option(None, "--device", help="auto | cpu | cuda."),
        out_dir: Path | None = typer.Option(None, "--out", help="Folder of runs (default: runs)."),
        name: str | None = typer.Option(None, "--name"),
        seed: int | None = typer.Option(None, "--seed"),
        logger: list[str] = typer.Option(None, "--logger", help="Also log to this registered logger, e.g. "
                                         "tensorboard (repeatable; `multimae plugins` lists them).",
                                         autocompletion=complete_names("loggers")),
        resume: Path | None = typer.Option(None, "--resume", help="Continue runs/<name> exactly where it stopped."),
        quiet: bool = typer.Option(False, "--quiet"),
        as_json: bool = typer.Option(False, "--json", help="Print a JSON summary at the end."),
        print_config: bool = typer.Option(False, "--print-config", help="Print the resolved config as YAML (what "
                                          "--config reads) and exit without training."),
        print_schema: bool = typer.Option(False, "--print-schema", help="Print the JSON schema of --config files "
                                          "(for editors) and exit."),
    ) -> None:
        """Fine-tune a task head (and the encoder) from a pretrained checkpoint."""
        from ..config import FinetuneConfig, load_config

        if print_schema:
            typer.echo(json.dumps(FinetuneConfig.model_json_schema(), indent=2))
            return
        flags: dict[str, Any] = {}
        if inputs:
            flags["inputs"] = [m.strip() for m in inputs.split(",") if m.strip()]
        if data is not None:
            flags["data"] = {"source": "folder", "path": str(data)}
        for key, value in (("task", task), ("checkpoint", str(checkpoint) if checkpoint else None),
                           ("image_size", image_size), ("batch_size", batch_size), ("steps", steps),
                           ("epochs", epochs), ("precision", precision), ("device", device), ("name", name),
                           ("seed", seed), ("out_dir", str(out_dir) if out_dir else None)):
            if value is not None:
                flags[key] = value
        if logger:
            flags["loggers"] = [name.strip() for value in logger for name in value.split(",") if name.strip()]
        if resume is not None:
            if flags or config or assignments:
                raise ConfigError("--resume continues a run with its saved config.yaml; give no other settings")
            from ..train.checkpoint import saved_config

            settings = saved_config(FinetuneConfig, resume)
        else:
            settings = load_config(FinetuneConfig, str(config) if config else None, flags, assignments)
        if print_config:
            typer.echo(config_yaml(settings), nl=False)
            return
        from ..train.finetune import finetune

        summary = finetune(settings, resume=resume, quiet=quiet or as_json)
        if as_json:
            typer.echo(json.dumps(summary))
        elif not quiet:
            typer.echo(summary_line(summary))
            if summary["metrics"]:
                _print_metrics(f"{summary['task']} (validation)", summary["metrics"])


def register_eval(app: typer.Typer) -> None:
    @app.command("eval")
    def eval_command(
        checkpoint: Path = typer.Argument(..., help="A fine-tuned checkpoint: a file or a run folder "
                                                    "(runs/<name>: its best/, else last/)."),
        data: Path | None = typer.Option(None, "--data", help="Folder dataset root (default: synthetic scenes)."),
        split: str = typer.Option("val", "--split"),
        batch_size: int = typer.Option(16, "--batch-size"),
        device: str = typer.Option("auto", "--device", help="auto | cpu | cuda."),
        workers: str = typer.Option("auto", "--workers", help="Loader processes, or auto (the CPUs less one, 2-16)."),
        scenes: int = typer.Option(64, "--scenes", help="Synthetic scenes to evaluate when no --data is given."),
        as_json: bool = typer.Option(False, "--json", help="Print the metrics as JSON."),
    ) -> None:
        """Metrics of a fine-tuned checkpoint over a whole split (works under torchrun)."""
        if device not in ("auto", "cpu", "cuda"):
            raise ConfigError(f"--device {device}: expected auto, cpu or cuda")
        from ..config import workers_setting

        try:
            workers_setting(workers)
        except ValueError as exc:
            raise ConfigError(f"--workers: {exc}") from None
        from ..train.evaluate import evaluate_checkpoint
        from .output import progress

        with progress(as_json or os.environ.get("RANK", "0") != "0") as bar:
            handle = bar.add_task(f"evaluating {split}", total=None)
            result = evaluate_checkpoint(checkpoint, data, split, batch_size, device, workers, scenes,
                                         progress=lambda done, total: bar.update(handle, advance=done, total=total))
        if os.environ.get("RANK", "0") != "0":  # under torchrun, rank 0 reports the summed metrics
            return
        if as_json:
            typer.echo(json.dumps(result))
            return
        _print_metrics(f"{result['task']} on {result['split']} ({result['samples']} samples)", result["metrics"])
        if split == "val":
            typer.echo("note: the val split is where fine-tuning chooses best/ by default, so this figure is "
                       "optimistic; --split test scores held-out data", err=True)
