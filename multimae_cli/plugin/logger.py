"""Run loggers: where a training run's scalars and previews go besides `metrics.jsonl`.

`metrics.jsonl` is always written (a resume truncates it to the checkpoint's step, `curves.png` is drawn from it);
a plugin adds destinations by registering a `Logger` (`register_loggers`), and a run names the ones it wants:
`loggers: [tensorboard]` (`--logger tensorboard`). The built-in `tensorboard` logger is registered this way.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class Logger:
    """One destination by name. `open(run, config)` gets the run folder and the run's resolved settings (as in
    `config.yaml`) and returns a `LogWriter`. `requires` names the modules it imports, checked before a run
    starts; a missing one (or an `ImportError` in `open`) is one line saying to `pip install` `install`."""

    name: str
    open: Callable[[Path, Mapping[str, Any]], Any]
    requires: tuple[str, ...] = ()
    install: str = ""
    description: str = ""
