"""`multimae data synth`, `multimae data check` and `multimae data shard`."""

from __future__ import annotations

import json
import math
from pathlib import Path

import typer

from ..errors import ConfigError


def parse_size(text: str) -> tuple[int, int]:
    """`224` or `160x224` (height x width)."""
    try:
        parts = [int(p) for p in text.lower().split("x")]
    except ValueError:
        raise ConfigError(f"--size: expected N or HxW, got {text!r}") from None
    if len(parts) == 1:
        parts *= 2
    if len(parts) != 2 or min(parts) < 8:
        raise ConfigError(f"--size: expected N or HxW of at least 8 pixels, got {text!r}")
    return parts[0], parts[1]


def parse_bytes(text: str) -> int:
    """`256MB`, `1.5GB`, `500k`, `4096` (bytes; decimal units)."""
    units = {"": 1, "b": 1, "k": 10**3, "kb": 10**3, "m": 10**6, "mb": 10**6, "g": 10**9, "gb": 10**9}
    number = text.strip().lower().rstrip("abgkm")
    unit = text.strip().lower()[len(number):]
    try:
        value = float(number) * units[unit]
    except (ValueError, KeyError):
        value = math.nan
    if not 0 < value < 1e15:  # NaN and inf fail too
        raise ConfigError(f"--shard-size: expected a size such as 256MB or 1GB, got {text!r}")
    return int(value)


def parse_modalities(text: str) -> dict:
    from ..plugin.registry import get_registry

    registry = get_registry()
    names = [n.strip() for n in text.split(",") if n.strip()]
    if not names:
        raise ConfigError("--modalities: name at least one modality")
    return {name: registry.modality(name) for name in names}


def register(app: typer.Typer) -> None:
    data = typer.Typer(help="Make and check multi-modal datasets.", no_args_is_help=True)
    app.add_typer(data, name="data")

    @data.command("synth")
    def synth_command(
        out: Path = typer.Option(..., "--out", help="Dataset folder to write."),
        n: int = typer.Option(100, "--n", help="Number of scenes."),
        size: str = typer.Option("224", "--size", help="N or HxW."),
        split: str = typer.Option("train", "--split"),
        seed: int = typer.Option(0, "--seed"),
        workers: int = typer.Option(1, "--workers", help="Render processes."),
        preview: Path | None = typer.Option(None, "--preview", help="Also write a picture grid of samples."),
        rgb_format: str = typer.Option("png", "--rgb-format",
                                       help="png (lossless) or jpg (quality 95, as ImageNet; decodes 2.5x faster)."),
        overwrite: bool = typer.Option(False, "--overwrite", help="Replace the scenes of an existing split."),
        quiet: bool = typer.Option(False, "--quiet"),
        as_json: bool = typer.Option(False, "--json", help="Print a JSON summary."),
    ) -> None:
        """Render procedural 3-D scenes (rgb, depth, normals, semseg) into the folder layout."""
        import time

        from rich.progress import BarColumn, MofNCompleteColumn, TimeRemainingColumn

        from ..data.synthetic.io import MODALITIES, write_preview, write_synthetic
        from .output import progress

        hw = parse_size(size)
        modalities = parse_modalities(",".join(MODALITIES))
        if preview is not None and not (preview.parent.is_dir() or preview.parent.resolve() == out.resolve()):
            raise ConfigError(f"--preview: folder {preview.parent} does not exist")  # --out is made on the way
        started = time.perf_counter()
        with progress(quiet or as_json, "[progress.description]{task.description}", BarColumn(), MofNCompleteColumn(),
                      TimeRemainingColumn()) as bar:
            task = bar.add_task(f"rendering {split}", total=n)
            write_synthetic(out, n, hw, modalities, split=split, seed=seed, workers=workers, overwrite=overwrite,
                            progress=lambda k: bar.advance(task, k), rgb_format=rgb_format)
        if preview is not None:
            write_preview(preview, modalities, hw, split=split, seed=seed, count=min(n, 6))
        if as_json:
            typer.echo(json.dumps({"out": str(out / split), "scenes": n, "size": list(hw), "seed": seed,
                                   "rgb_format": rgb_format, "preview": str(preview) if preview else None,
                                   "dataset_json": str(out / "dataset.json"),
                                   "seconds": round(time.perf_counter() - started, 3)}))
        elif not quiet:
            typer.echo(f"wrote {n} scenes to {out / split}" + (f", preview {preview}" if preview else ""))

    @data.command("check")
    def check_command(
        root: Path = typer.Argument(..., help="Dataset folder (root/<split>/<modality>/...)."),
        modalities: str = typer.Option("rgb,depth,semseg", "--modalities"),
        split: list[str] = typer.Option(None, "--split", help="Check only this split (repeatable)."),
        as_json: bool = typer.Option(False, "--json"),
    ) -> None:
        """Check a dataset folder: pairing, readability, sizes, label ranges, NaN. Exit 0 only when clean."""
        from ..data.check import check_dataset

        report = check_dataset(root, parse_modalities(modalities), split or None)
        if as_json:
            typer.echo(json.dumps(report, indent=2))
        else:
            for name, result in report["splits"].items():
                typer.echo(f"{name}: {result['samples']} samples, {len(result['problems'])} problem(s)")
                for problem in result["problems"][:20]:
                    typer.echo(f"  {problem}")
                if len(result["problems"]) > 20:
                    typer.echo(f"  ... and {len(result['problems']) - 20} more (see --json)")
            typer.echo("clean" if report["clean"] else "problems found")
        if not report["clean"]:
            raise typer.Exit(1)

    _add_shard_command(data)


def _add_shard_command(data: typer.Typer) -> None:
    @data.command("shard")
    def shard_command(
        root: Path = typer.Argument(..., help="Dataset folder (root/<split>/<modality>/...)."),
        out: Path = typer.Option(..., "--out", help="The shard folder to make (must not exist)."),
        modalities: str = typer.Option("rgb,depth,semseg", "--modalities"),
        shard_size: str = typer.Option("256MB", "--shard-size", help="Target size of one shard (e.g. 256MB, 1GB)."),
        split: list[str] = typer.Option(None, "--split", help="Pack only this split (repeatable; default: all)."),
        skip_bad: bool = typer.Option(False, "--skip-bad", help="Leave out (and list) samples with a bad file."),
        quiet: bool = typer.Option(False, "--quiet"),
        as_json: bool = typer.Option(False, "--json"),
    ) -> None:
        """Pack a dataset folder into tar shards (the webdataset layout) that training streams: few large files
        instead of several small ones per sample. Every file is read (checked) and stored as it is."""
        size = parse_bytes(shard_size)
        chosen = parse_modalities(modalities)
        from ..data.shard_writer import write_shards
        from .output import progress

        with progress(quiet or as_json) as bar:
            handle = bar.add_task("sharding", total=None)
            summary = write_shards(root, out, chosen, size, split or None, skip_bad,
                                   lambda done, total: bar.update(handle, advance=done, total=total))
        if as_json:
            typer.echo(json.dumps(summary))
        elif not quiet:
            for name, counts in summary["splits"].items():
                typer.echo(f"{name}: {counts['samples']} samples in {counts['shards']} shard(s), "
                           f"{counts['bytes'] / 1e6:.1f} MB")
            skipped = f", {summary['skipped']} sample(s) skipped" if summary["skipped"] else ""
            typer.echo(f"-> {summary['out']} ({summary['mb_per_s']} MB/s{skipped})")
            for line in summary["skipped_files"][:20]:
                typer.echo(f"  skipped: {line}")
