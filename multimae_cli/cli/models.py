"""`multimae models`: the named pretrained weights `--checkpoint NAME` accepts, and whether each is cached."""

from __future__ import annotations

import json

import typer


def list_models() -> list[dict]:
    """Every registered weights name: url, sha256, size, format, licence, description, and its cache path."""
    from ..formats.weights import cached_path, source_url
    from ..plugin.registry import get_registry

    registry = get_registry()
    rows = []
    for name, record in registry.weights().items():
        path = cached_path(record)
        origin = registry.origin("weights", name) or {}
        rows.append({"name": name, "url": source_url(record), "sha256": record.sha256, "size": record.size,
                     "format": record.format, "licence": record.licence, "description": record.description,
                     "plugin": origin.get("plugin"), "cached": path.is_file(), "path": str(path)})
    return rows


def register(app: typer.Typer) -> None:
    @app.command("models", short_help="List the named pretrained weights (--checkpoint NAME) and what is cached.")
    def models_command(as_json: bool = typer.Option(False, "--json", help="Print JSON.")) -> None:
        """List the named pretrained weights that `--checkpoint NAME` and `load_model(NAME)` accept: downloaded on
        first use into the cache ($MULTIMAE_HOME), verified by their sha256."""
        rows = list_models()
        if as_json:
            typer.echo(json.dumps(rows, indent=2))
            return
        from rich.console import Console
        from rich.table import Table

        table = Table("name", "cached", "size", "licence", "description")
        for row in rows:
            size = f"{row['size'] / 1e6:.0f} MB" if row["size"] else ""
            table.add_row(row["name"], "yes" if row["cached"] else "no", size, row["licence"], row["description"])
        Console().print(table)
