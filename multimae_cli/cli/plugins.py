"""`multimae plugins`: what is loaded, from where, and what it adds."""

from __future__ import annotations

import json

import typer


def list_plugins() -> list[dict]:
    """Every discovered plugin as a dict: name, module, source, version, modalities, error."""
    from ..registry import get_registry

    registry = get_registry()
    registry.modalities()  # collects registrations and records plugins that fail in their hook
    return [info.as_dict() for info in registry.plugins.values()]


def register(app: typer.Typer) -> None:
    @app.command("plugins")
    def plugins_command(as_json: bool = typer.Option(False, "--json", help="Print JSON.")) -> None:
        """List the loaded plugins with their version, source and modalities."""
        rows = list_plugins()
        if as_json:
            typer.echo(json.dumps(rows, indent=2))
            return
        from rich.console import Console
        from rich.table import Table

        table = Table("plugin", "source", "version", "modalities", "status")
        for row in rows:
            status = f"[red]{row['error']}[/red]" if row["error"] else "ok"
            table.add_row(row["name"], row["source"], row["version"] or "", ", ".join(row["modalities"]), status)
        Console().print(table)
