"""User-facing errors: each says in one line what is wrong and names the culprit (file, key, modality).

The CLI prints `error: <message>` and exits 2 for any of these; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations


class MultiMAEError(Exception):
    """Base class of every error caused by bad input rather than by a bug."""


class UnknownModalityError(MultiMAEError, KeyError):
    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0])


class InputError(MultiMAEError, ValueError):
    """An input tensor or mask has the wrong shape, dtype, size or values."""


class CheckpointError(MultiMAEError, ValueError):
    """A file is no checkpoint, is unsafe to load, or does not fit the model."""


class ConfigError(MultiMAEError, ValueError):
    """A configuration key is unknown or its value invalid."""


class OutputError(MultiMAEError):
    """The system refused to write `path`: full disk, quota, permissions, read-only file system."""

    def __init__(self, path, reason: str) -> None:
        super().__init__(f"{path}: cannot write ({reason})")
        self.path, self.reason = path, reason


class PluginError(MultiMAEError, RuntimeError):
    """A plugin could not be loaded or breaks the plugin contract."""


class TrainingStopped(MultiMAEError):
    """The run stopped early (non-finite loss, interruption); its last good checkpoint is kept."""


def one_line(exc: BaseException) -> str:
    """The error's message; one re-raised from a DataLoader worker carries the worker's traceback, of which the
    last line holds the original message."""
    text = str(exc)
    if "Original Traceback" in text:
        last = text.strip().splitlines()[-1]
        text = last.split(": ", 1)[1] if ": " in last else last
    return text
