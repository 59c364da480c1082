"""`multimae plugins`: what is loaded, from where, and what it adds."""

from __future__ import annotations

import json

import typer


def list_plugins() -> list[dict]:
    """Every discovered plugin as a dict: name, module, source (built-in, a distribution or registered in code),
    builtin, distribution, version, api (its MULTIMAE_API), modalities, tasks, teachers, error."""
    from ..registry import get_registry

    registry = get_registry()
    registry.modalities()  # collect registrations, recording plugins that fail in their hooks
    registry.tasks()
    registry.teachers()
    return [info.as_dict() for info in registry.plugins.values()]


def register(app: typer.Typer) -> None:
    @app.command("plugins", short_help="List the loaded plugins, what each adds, and why any failed.")
    def plugins_command(as_json: bool = typer.Option(False, "--json", help="Print JSON.")) -> None:
        """List the loaded plugins: where each comes from (built-in or its distribution), its version, what it
        adds, and why it failed if it did."""
        rows = list_plugins()
        if as_json:
            typer.echo(json.dumps(rows, indent=2))
            return
        from rich.console import Console
        from rich.table import Table

        from .. import API_VERSION, __version__

        table = Table("plugin", "source", "version", "api", "adds", "status",
                      caption=f"multimae {__version__}, plugin API {API_VERSION}")
        for row in rows:
            status = f"[red]failed: {row['error']}[/red]" if row["error"] else "ok"
            adds = [f"{kind}: {', '.join(row[kind])}" for kind in ("modalities", "tasks", "teachers") if row[kind]]
            api = "" if row["api"] is None else str(row["api"])
            table.add_row(row["name"], row["source"], row["version"] or "", api, "; ".join(adds), status)
        Console().print(table)
