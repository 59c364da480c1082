"""The plugin contract: pluggy hook specifications of the `multimae` project.

Every hook receives a `register` callback (the simonw/llm style), so a plugin states what it adds and the
core decides what to do with it. The built-in plugins use exactly these hooks.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import pluggy

if TYPE_CHECKING:
    from .modality import Modality
    from .task import Task
    from .teacher import Teacher

PROJECT = "multimae"
hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)


@hookspec
def register_modalities(register: Callable[[Modality], None]) -> None:
    """Call `register(Modality(...))` once for every modality the plugin adds."""


@hookspec
def register_tasks(register: Callable[[Task], None]) -> None:
    """Call `register(Task(...))` once for every fine-tuning task the plugin adds."""


@hookspec
def register_pseudolabelers(register: Callable[[Teacher], None]) -> None:
    """Call `register(Teacher(...))` once for every pseudo-labelling teacher the plugin adds."""


@hookspec
def register_commands(app: Any) -> None:
    """Add commands to the `multimae` Typer app (`@app.command()`); called once when the CLI starts."""
