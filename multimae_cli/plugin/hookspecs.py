"""The plugin contract: pluggy hook specifications of the `multimae` project.

Every hook receives a `register` callback (the simonw/llm style), so a plugin states what it adds and the
core decides what to do with it. The built-in plugins use exactly these hooks.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pluggy

# The plugin API version: what a plugin may rely on (the hooks here, the fields and factories of `Modality`,
# `Task`, `Teacher`, and `multimae_cli.testing`). Adding a hook, a field with a default or a factory keeps it; it
# goes up by one when a plugin written for the previous version could break (a hook, field or argument removed,
# renamed or given another meaning), and `API_CHANGES` says what changed. A plugin module states the version it is
# written for as `MULTIMAE_API = N`; the registry refuses a plugin written for another version (an older one with
# the changes since, so its author knows what to update). See docs/plugins.md.
API_VERSION = 3
API_CHANGES = {
    2: "Modality.normalize takes a batch (B, C, H, W) (labels (B, H, W)) on the training device",
    3: "the hook register_pseudolabelers is renamed register_teachers; plugins import only from multimae_cli "
       "(internal modules moved: multimae_cli.plugin, multimae_cli.infer); see docs/plugins.md, 'Moving to API 3'",
}

PROJECT = "multimae"
hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)


@hookspec
def register_modalities(register: Callable[[Any], None]) -> None:
    """Call `register(Modality(...))` once for every modality the plugin adds."""


@hookspec
def register_tasks(register: Callable[[Any], None]) -> None:
    """Call `register(Task(...))` once for every fine-tuning task the plugin adds."""


@hookspec
def register_teachers(register: Callable[[Any], None]) -> None:
    """Call `register(Teacher(...))` once for every pseudo-labelling teacher the plugin adds."""


@hookspec
def register_weights(register: Callable[[Any], None]) -> None:
    """Call `register(Weights(...))` once for every named pretrained weights file the plugin publishes."""


@hookspec
def register_loggers(register: Callable[[Any], None]) -> None:
    """Call `register(Logger(...))` once for every run logger the plugin adds (TensorBoard, W&B, MLflow, ...)."""


@hookspec
def register_commands(app: Any) -> None:
    """Add commands to the `multimae` Typer app (`@app.command()`); called once when the CLI starts."""
