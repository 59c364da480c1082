"""What the training commands print when they finish."""

from __future__ import annotations


def summary_line(summary: dict) -> str:
    """What a finished (or already finished) training run reports: steps, loss first -> last, checkpoint."""
    first, final = summary["first_loss"], summary["final_loss"]
    if first is None:
        return f"nothing to do: the run is already at step {summary['steps']}; checkpoint {summary['checkpoint']}"
    loss = f"{final:.4f}" if first == final else f"{first:.4f} -> {final:.4f}"
    return f"done: {summary['steps']} steps, loss {loss}; checkpoint {summary['checkpoint']}"


def config_yaml(config) -> str:
    """A resolved config as the YAML a run folder keeps (`config.yaml`), which `--config` reads back."""
    import yaml

    return yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False)
