"""A run's log: `metrics.jsonl` (always), the loggers its config names (`loggers`), and `curves.png` at the end.

Rank 0 alone writes. A logger that fails mid-run (a lost connection, a full disk of its own) is dropped with one
warning: a multi-hour run does not stop for its dashboard.
"""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path
from typing import Any

from ..errors import ConfigError
from ..io import append_line
from ..plugin.logger import Logger
from ..plugin.protocols import LogWriter, missing
from .curves import draw_curves


def append_metrics(run: Path, record: dict[str, Any]) -> None:
    """One record as a line of `run/metrics.jsonl`."""
    append_line(run / "metrics.jsonl", json.dumps(record))


def resolve_loggers(names: list[str]) -> list[Logger]:
    """The registered loggers a config names (checked before a run starts)."""
    from ..plugin.registry import get_registry

    known = get_registry().loggers()
    unknown = [name for name in names if name not in known]
    if unknown:
        raise ConfigError(f"loggers: unknown logger {unknown[0]!r} (registered: {', '.join(sorted(known)) or 'none'})")
    for logger in (known[name] for name in names):
        absent = [module for module in logger.requires if importlib.util.find_spec(module) is None]
        if absent:
            raise ConfigError(_not_installed(logger, absent[0]))
    return [known[name] for name in names]


def _not_installed(logger: Logger, module: str | None) -> str:
    hint = f"pip install '{logger.install}'" if logger.install else f"install {module}"
    return f"loggers: {logger.name} needs {module}, which is not installed ({hint})"


class RunLog:
    """Where a training loop's records go: `record(record)` at logging steps, `image(step, tag, path)` after a
    preview is written, `close()` when the run ends however it ends (a context manager; it draws `curves.png`)."""

    def __init__(self, run: Path, loggers: list[Logger], settings: dict[str, Any], is_main: bool) -> None:
        self.run, self.is_main = run, is_main
        self.writers: dict[str, LogWriter] = {}
        for logger in loggers if is_main else []:
            try:
                writer = logger.open(run, settings)
            except ImportError as exc:
                self._each("close")  # the ones already open
                raise ConfigError(_not_installed(logger, exc.name)) from None
            if missing(writer, LogWriter):
                self._each("close")
                raise ConfigError(f"loggers: {logger.name}'s writer lacks {', '.join(missing(writer, LogWriter))}")
            self.writers[logger.name] = writer

    def __enter__(self) -> RunLog:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def record(self, record: dict[str, Any]) -> None:
        if not self.is_main:
            return
        append_metrics(self.run, record)
        values = {k: float(v) for k, v in record.items() if k != "step" and isinstance(v, int | float)}
        self._each("scalars", record["step"], values)

    def image(self, step: int, tag: str, path: Path) -> None:
        if self.is_main and self.writers and path.is_file():
            from ..io import read_image

            self._each("image", step, tag, read_image(path, color=True))

    def close(self) -> Path | None:
        """Close every logger and draw `curves.png` (None: fewer than two logged steps, or not rank 0)."""
        self._each("close")
        self.writers.clear()
        return draw_curves(self.run / "metrics.jsonl", self.run / "curves.png") if self.is_main else None

    def _each(self, method: str, *args: Any) -> None:
        for name in list(self.writers):
            self._call(name, method, *args)

    def _call(self, name: str, method: str, *args: Any) -> None:
        try:
            getattr(self.writers[name], method)(*args)
        except Exception as exc:
            print(f"warning: logger {name!r} failed in {method} ({type(exc).__name__}: {exc}); it is left out for "
                  "the rest of the run", file=sys.stderr)
            self.writers.pop(name, None)
