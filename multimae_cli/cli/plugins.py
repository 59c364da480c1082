"""`multimae plugins`: what is loaded, from where, and what it adds."""

from __future__ import annotations

import json
from pathlib import Path

import typer


def list_plugins() -> list[dict]:
    """Every discovered plugin as a dict: name, module, source (built-in, a distribution or registered in code),
    builtin, distribution, version, api (its MULTIMAE_API), modalities, tasks, teachers, error."""
    from ..plugin.registry import get_registry

    registry = get_registry()
    registry.modalities()  # collect registrations, recording plugins that fail in their hooks
    registry.tasks()
    registry.teachers()
    registry.weights()
    registry.loggers()
    return [info.as_dict() for info in registry.plugins.values()]


def register(app: typer.Typer) -> None:
    plugins = typer.Typer(no_args_is_help=False)
    app.add_typer(plugins, name="plugins",
                  short_help="List the loaded plugins, what each adds, and why any failed; `new` starts one.")

    @plugins.command("new")
    def new_command(
        name: str = typer.Argument(..., help="The plugin's name: lower-case letters, digits, _ (e.g. luma)."),
        out: Path = typer.Option(Path("."), "--out", help="Folder to write multimae-plugin-NAME/ into."),
    ) -> None:
        """Write a plugin package to start from: a modality, a fine-tuning task and a pseudo-labelling teacher
        named NAME, with tests that run the conformance kit (they pass as written)."""
        from ..plugin.template import new_plugin

        root = new_plugin(name, out)
        typer.echo(f"wrote {root}; next: pip install -e {root} && pytest {root / 'tests'}")

    @plugins.callback(invoke_without_command=True)
    def plugins_command(ctx: typer.Context,
                        as_json: bool = typer.Option(False, "--json", help="Print JSON.")) -> None:
        """List the loaded plugins: where each comes from (built-in or its distribution), its version, what it
        adds, and why it failed if it did. `multimae plugins new NAME` writes a plugin package to start from."""
        if ctx.invoked_subcommand is not None:
            return
        rows = list_plugins()
        if as_json:
            typer.echo(json.dumps(rows, indent=2))
            return
        from rich.console import Console
        from rich.table import Table

        from .._version import __version__
        from ..plugin.hookspecs import API_VERSION

        table = Table("plugin", "source", "version", "api", "adds", "status",
                      caption=f"multimae {__version__}, plugin API {API_VERSION}")
        for row in rows:
            status = f"[red]failed: {row['error']}[/red]" if row["error"] else "ok"
            adds = [f"{kind}: {', '.join(row[kind])}"
                    for kind in ("modalities", "tasks", "teachers", "weights", "loggers")
                    if row[kind]]
            api = "" if row["api"] is None else str(row["api"])
            table.add_row(row["name"], row["source"], row["version"] or "", api, "; ".join(adds), status)
        Console().print(table)
