"""`multimae pretrain`: flags map onto the PretrainConfig; `--set a.b=value` reaches any key."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import typer

from ..errors import ConfigError
from .output import complete_names, config_yaml, summary_line


def register(app: typer.Typer) -> None:
    @app.command("pretrain")
    def pretrain_command(
        modalities: str | None = typer.Option(None, "--modalities", help="Inputs and outputs, e.g. rgb,depth,semseg.",
                                              autocompletion=complete_names("modalities")),
        config: Path | None = typer.Option(None, "--config", help="YAML file of PretrainConfig keys."),
        assignments: list[str] = typer.Option(None, "--set", help="key=value, e.g. optim.blr=1.5e-4 (repeatable)."),
        preset: str | None = typer.Option(None, "--preset", help="tiny | small | base | large."),
        image_size: int | None = typer.Option(None, "--image-size"),
        mask_ratio: float | None = typer.Option(None, "--mask-ratio", help="Fraction of input tokens masked, e.g. "
                                                "0.75 (default: 5/6, the official 98 of 588 visible)."),
        batch_size: int | None = typer.Option(None, "--batch-size"),
        steps: int | None = typer.Option(None, "--steps"),
        epochs: float | None = typer.Option(None, "--epochs"),
        data: Path | None = typer.Option(None, "--data", help="Folder dataset root (default: synthetic scenes)."),
        precision: str | None = typer.Option(None, "--precision", help="auto | bf16 | fp16 | fp32."),
        device: str | None = typer.Option(None, "--device", help="auto | cpu | cuda."),
        out_dir: Path | None = typer.Option(None, "--out", help="Folder of runs (default: runs)."),
        name: str | None = typer.Option(None, "--name", help="Run name (default: pretrain-<time>)."),
        seed: int | None = typer.Option(None, "--seed"),
        logger: list[str] = typer.Option(None, "--logger", help="Also log to this registered logger, e.g. "
                                         "tensorboard (repeatable; `multimae plugins` lists them).",
                                         autocompletion=complete_names("loggers")),
        resume: Path | None = typer.Option(None, "--resume", help="Continue runs/<name> exactly where it stopped."),
        quiet: bool = typer.Option(False, "--quiet", help="No progress bar."),
        as_json: bool = typer.Option(False, "--json", help="Print a JSON summary at the end."),
        print_config: bool = typer.Option(False, "--print-config", help="Print the resolved config as YAML (what "
                                          "--config reads) and exit without training."),
        print_schema: bool = typer.Option(False, "--print-schema", help="Print the JSON schema of --config files "
                                          "(for editors) and exit."),
    ) -> None:
        """Pretrain MultiMAE (default: the tiny preset on synthetic scenes, CPU-friendly)."""
        from ..config import PretrainConfig, load_pretrain_config

        if print_schema:
            typer.echo(json.dumps(PretrainConfig.model_json_schema(), indent=2))
            return
        flags: dict[str, Any] = {}
        model: dict[str, Any] = {}
        if modalities:
            model["inputs"] = [m.strip() for m in modalities.split(",") if m.strip()]
        if image_size is not None:
            model["image_size"] = image_size
        if model:
            flags["model"] = model
        if data is not None:
            flags["data"] = {"source": "folder", "path": str(data)}
        for key, value in (("preset", preset), ("mask_ratio", mask_ratio), ("batch_size", batch_size),
                           ("steps", steps), ("epochs", epochs), ("precision", precision), ("device", device),
                           ("name", name), ("seed", seed), ("out_dir", str(out_dir) if out_dir else None)):
            if value is not None:
                flags[key] = value
        if logger:
            flags["loggers"] = [name.strip() for value in logger for name in value.split(",") if name.strip()]
        if resume is not None:
            if flags or config or assignments:
                raise ConfigError("--resume continues a run with its saved config.yaml; give no other settings")
            from ..train.checkpoint import saved_config

            settings = saved_config(PretrainConfig, resume)
        else:
            settings = load_pretrain_config(str(config) if config else None, flags, assignments)
        if print_config:
            typer.echo(config_yaml(settings), nl=False)
            return
        from ..train.pretrain import pretrain

        summary = pretrain(settings, resume=resume, quiet=quiet or as_json)
        if as_json:
            typer.echo(json.dumps(summary))
        elif not quiet:
            typer.echo(summary_line(summary))
            if summary.get("cross_modal") and summary["cross_modal"]["outputs"]:
                from ..train.crossmodal import quality_line

                typer.echo(quality_line(summary["cross_modal"]))
