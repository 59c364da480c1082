"""The `multimae` command line: a thin Typer layer over the Python API.

Bad input ends in one line, `error: ...`, and exit code 2; torch is imported only by commands that run a
model, so `--help` and early errors are instant.
"""

from __future__ import annotations

import sys

import typer

from ..errors import MultiMAEError, one_line
from . import data, demo, export, features, finetune, info, models, plugins, predict, pretrain, pseudolabel

try:  # newer typer runs on its own copy of click, whose errors derive from this
    from typer.exceptions import TyperException as CommandLineError
except ImportError:
    from click import ClickException as CommandLineError


def build_app() -> typer.Typer:
    app = typer.Typer(
        name="multimae",
        help="MultiMAE: multi-modal multi-task masked autoencoders. Pretrain, fine-tune, predict, export.",
        no_args_is_help=True,
        add_completion=True,
        pretty_exceptions_enable=False,
    )
    @app.callback()
    def root(version: bool = typer.Option(False, "--version", is_eager=True, callback=_print_version,
                                          help="Print multimae's version and plugin API, then exit.")) -> None:
        """MultiMAE: multi-modal multi-task masked autoencoders. Pretrain, fine-tune, predict, export."""

    pretrain.register(app)
    finetune.register(app)
    predict.register(app)
    features.register(app)
    demo.register(app)
    pseudolabel.register(app)
    export.register(app)
    plugins.register(app)
    info.register(app)
    models.register(app)
    data.register(app)
    from ..plugin.registry import get_registry

    get_registry().add_commands(app)
    return app


def _print_version(value: bool) -> None:
    if value:
        from .._version import __version__
        from ..plugin.hookspecs import API_VERSION

        typer.echo(f"multimae {__version__} (plugin API {API_VERSION})")
        raise typer.Exit()


def usage_line(exc: BaseException) -> str:
    """A command-line usage error in one line, pointing at the command's help."""
    context = getattr(exc, "ctx", None)
    message = exc.format_message()
    return f"{message} (see '{context.command_path} --help')" if context is not None else message


def main(argv: list[str] | None = None) -> None:
    """Console entry point."""
    try:
        code = build_app()(args=argv, prog_name="multimae", standalone_mode=False)
    except typer.Exit as exc:
        sys.exit(exc.exit_code)
    except typer.Abort:
        print("aborted", file=sys.stderr)
        sys.exit(130)
    except CommandLineError as exc:
        if exc.format_message():  # an empty one follows the help a bare `multimae` prints
            print(f"error: {usage_line(exc)}", file=sys.stderr)
        sys.exit(exc.exit_code)
    except MultiMAEError as exc:
        print(f"error: {one_line(exc)}", file=sys.stderr)
        sys.exit(2)
    except OSError as exc:  # the system refused a named file (permissions, full disk): the environment, not a bug
        if exc.filename is None:
            raise
        print(f"error: {exc.filename}: {(exc.strerror or str(exc)).lower()}", file=sys.stderr)
        sys.exit(2)
    if isinstance(code, int) and code:  # typer.Exit(n) returns n when click is not in standalone mode
        sys.exit(code)
