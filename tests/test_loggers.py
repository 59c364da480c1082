"""Run loggers (`register_loggers`): TensorBoard built in, third-party loggers through the same hook, `curves.png`."""

from __future__ import annotations

import json
from typing import ClassVar

import cv2
import pytest
from test_pretrain import tiny

from multimae_cli import Logger, hookimpl
from multimae_cli.errors import ConfigError
from multimae_cli.plugin.registry import get_registry
from multimae_cli.train.finetune import finetune
from multimae_cli.train.pretrain import pretrain


def records(run) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def test_tensorboard_logger_writes_what_metrics_jsonl_holds_and_the_previews(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    pretrain(tiny(tmp_path, name="tb", steps=8, preview_every=4, loggers=["tensorboard"]), quiet=True)
    run = tmp_path / "runs" / "tb"
    events = EventAccumulator(str(run / "tensorboard"), size_guidance={"images": 0, "scalars": 0}).Reload()
    logged = [r for r in records(run) if "loss" in r]
    assert [(e.step, round(e.value, 5)) for e in events.Scalars("loss")] == \
        [(r["step"], round(r["loss"], 5)) for r in logged]
    assert {"loss/rgb", "loss/depth", "loss/semseg", "lr", "img_per_s"} <= set(events.Tags()["scalars"])
    assert any(tag.startswith("heldout/rgb->semseg") for tag in events.Tags()["scalars"])
    assert [image.step for image in events.Images("preview")] == [4, 8]
    assert "config/text_summary" in events.Tags()["tensors"]


def test_curves_png_has_a_panel_per_kind_of_series(tmp_path, encoder):
    pretrain(tiny(tmp_path, name="p", steps=6), quiet=True)
    picture = cv2.imread(str(tmp_path / "runs" / "p" / "curves.png"))
    assert picture.shape == (2 * 280, 960, 3)  # losses, learning rate (one held-out point is no curve)
    summary = finetune(_finetune_config(tmp_path, checkpoint=str(encoder)), quiet=True)
    picture = cv2.imread(str(tmp_path / "runs" / "ft" / "curves.png"))
    assert summary["steps"] == 6 and picture.shape == (3 * 280, 960, 3)  # losses, learning rate, validation


def _finetune_config(tmp_path, **changes):
    from multimae_cli.config import FinetuneConfig

    values = {"task": "depth", "steps": 6, "eval_every": 2, "batch_size": 4, "log_every": 2, "device": "cpu",
              "image_size": 32, "inputs": ["rgb"], "head_options": {"feature_dim": 16, "layer_dims": [8, 16, 16, 32]},
              "data": {"synthetic_scenes": 16, "val_scenes": 8, "workers": 0}, "out_dir": str(tmp_path / "runs"),
              "name": "ft", **changes}
    return FinetuneConfig.model_validate(values)


class Recording:
    """A third-party logger registered in code, through the hook the built-ins use."""

    calls: ClassVar[list] = []

    class Writer:
        def __init__(self, run, settings) -> None:
            Recording.calls.append(("open", settings["steps"]))

        def scalars(self, step, values) -> None:
            Recording.calls.append(("scalars", step, sorted(values)))
            if step == 4:
                raise ConnectionError("dashboard unreachable")

        def image(self, step, tag, image) -> None:
            Recording.calls.append(("image", step, image.shape))

        def close(self) -> None:
            Recording.calls.append(("close",))

    @hookimpl
    def register_loggers(self, register):
        register(Logger(name="recording", open=Recording.Writer))
        register(Logger(name="needs-lib", open=_missing_library, requires=("not_a_real_library",),
                        install="multimae-plugin-x[lib]"))


def _missing_library(run, settings):
    import not_a_real_library  # noqa: F401


@pytest.fixture()
def recording():
    registry = get_registry()
    registry.register(Recording(), name="recording")
    Recording.calls = []
    yield Recording.calls
    registry.unregister("recording")


def test_hook_register_loggers_gets_every_record_and_a_failing_logger_never_stops_the_run(tmp_path, recording, capfd):
    summary = pretrain(tiny(tmp_path, name="r", steps=8, loggers=["recording"]), quiet=True)
    assert summary["steps"] == 8
    assert recording[0] == ("open", 8) and recording[1] == ("scalars", 2, ["img_per_s", "loss", "loss/depth",
                                                                           "loss/norm_rgb", "loss/rgb",
                                                                           "loss/semseg", "lr"])
    assert [call[1] for call in recording if call[0] == "scalars"] == [2, 4]  # dropped after its failure at 4
    assert "warning: logger 'recording' failed in scalars (ConnectionError: dashboard unreachable)" in \
        capfd.readouterr().err
    assert [r["step"] for r in records(tmp_path / "runs" / "r") if "loss" in r] == [2, 4, 6, 8]


def test_unknown_or_uninstalled_loggers_are_refused_before_a_run_starts(tmp_path, recording):
    with pytest.raises(ConfigError, match=r"loggers: unknown logger 'wandb' \(registered: ") as refused:
        pretrain(tiny(tmp_path, name="u", steps=2, loggers=["wandb"]), quiet=True)
    listed = str(refused.value).split("registered: ")[1].rstrip(")").split(", ")
    assert {"needs-lib", "recording", "tensorboard"} <= set(listed) and listed == sorted(listed)
    assert not (tmp_path / "runs" / "u").exists()
    with pytest.raises(ConfigError, match=r"loggers: needs-lib needs not_a_real_library, which is not installed "
                                          r"\(pip install 'multimae-plugin-x\[lib\]'\)"):
        pretrain(tiny(tmp_path, name="m", steps=2, loggers=["needs-lib"]), quiet=True)
    assert not (tmp_path / "runs" / "m").exists()
