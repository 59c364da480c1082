"""What the commands print: progress on stderr, and the line a finished training run ends with."""

from __future__ import annotations


def progress(quiet: bool, *columns):
    """A rich progress bar on stderr, shown on a terminal only (a log file or pipe gets no bar and no blank
    line), cleared when done."""
    from rich.console import Console
    from rich.progress import Progress

    console = Console(stderr=True)
    return Progress(*columns, console=console, disable=quiet or not console.is_terminal, transient=True)


def working(quiet: bool, what: str):
    """A spinner with the time elapsed for one long step without a count (an export and its check), on a
    terminal only."""
    from rich.progress import SpinnerColumn, TextColumn, TimeElapsedColumn

    bar = progress(quiet, SpinnerColumn(), TextColumn(what), TimeElapsedColumn())
    bar.add_task(what, total=None)
    return bar


def summary_line(summary: dict) -> str:
    """What a finished (or already finished) training run reports: steps, loss first -> last, checkpoint."""
    first, final = summary["first_loss"], summary["final_loss"]
    if final is None:  # no step run (the run was complete); `first_loss` is the run's, kept across resumes
        return f"nothing to do: the run is already at step {summary['steps']}; checkpoint {summary['checkpoint']}"
    loss = f"{final:.4f}" if first == final else f"{first:.4f} -> {final:.4f}"
    return f"done: {summary['steps']} steps, loss {loss}; checkpoint {summary['checkpoint']}"


def config_yaml(config) -> str:
    """A resolved config as the YAML a run folder keeps (`config.yaml`), which `--config` reads back."""
    import yaml

    return yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False)


def complete_names(kind: str):
    """A shell-completion callback offering the registered `kind` (tasks, loggers, modalities); for a
    comma-separated list, the names that may follow what is typed."""
    def complete(incomplete: str) -> list[str]:
        from ..plugin.registry import get_registry

        names = sorted(getattr(get_registry(), kind)())
        done, _, last = incomplete.rpartition(",")
        prefix = f"{done}," if done else ""
        return [prefix + name for name in names if name.startswith(last) and name not in done.split(",")]
    return complete
