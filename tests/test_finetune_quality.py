"""Fine-tuning learns: on synthetic scenes, from a short pretraining run, each task beats the best constant
guess, and rgb + depth input beats rgb alone on semseg. Tiny sizes; figures in the docstrings are from the
2-core CPU (torch 2.14)."""

from __future__ import annotations

import pytest

from multimae_cli.config import FinetuneConfig, PretrainConfig, build_config
from multimae_cli.data.tasks import TaskDataset, build_source
from multimae_cli.formats.load import load_task_model
from multimae_cli.plugin.factory import resolve_modalities
from multimae_cli.plugin.registry import get_registry
from multimae_cli.train.evaluate import constant_baseline
from multimae_cli.train.finetune import finetune
from multimae_cli.train.pretrain import pretrain

SIZE = 32
DATA = {"synthetic_scenes": 512, "val_scenes": 64, "workers": 0}


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory):
    out = tmp_path_factory.mktemp("quality")
    model = {"inputs": ["rgb", "depth", "semseg"], "image_size": SIZE, "patch_size": 8, "dim": 64, "depth": 4,
             "num_heads": 4, "decoder_dim": 64, "decoder_depth": 1, "decoder_num_heads": 4}
    pretrain(build_config(PretrainConfig, {
        "model": model, "steps": 100, "batch_size": 16, "device": "cpu", "out_dir": str(out), "name": "pre",
        "preview_every": 0, "log_every": 50, "checkpoint_every": 100, "optim": {"blr": 8e-3}, "data": DATA,
    }), quiet=True)
    return out


def tune(out, name: str, task: str, inputs: list[str], head_options: dict) -> dict:
    summary = finetune(build_config(FinetuneConfig, {
        "checkpoint": str(out / "pre" / "last" / "model.safetensors"), "task": task, "inputs": inputs,
        "image_size": SIZE, "steps": 100, "batch_size": 16, "device": "cpu", "out_dir": str(out), "name": name,
        "eval_every": 100, "checkpoint_every": 100, "log_every": 50, "optim": {"blr": 2e-3}, "data": DATA,
        "head_options": head_options, "seed": 1,
    }), quiet=True)
    model = load_task_model(out / name / "last" / "model.safetensors")
    task_record = get_registry().task(task)
    modalities = resolve_modalities(model.config, names=[*inputs, task_record.target])
    config = build_config(FinetuneConfig, {"task": task, "image_size": SIZE, "data": DATA})
    val = TaskDataset(build_source(config, modalities, "val", train=False), inputs, task_record, modalities,
                      (SIZE, SIZE), train=False)
    baseline = constant_baseline(task_record, val, model.task_info["num_outputs"])
    return {"model": summary["metrics"], "baseline": baseline}


def test_depth_beats_the_mean(pretrained):
    """Measured: delta1 0.44 against 0.30 for the set's own mean depth."""
    result = tune(pretrained, "depth", "depth", ["rgb"], {"feature_dim": 32, "layer_dims": [16, 32, 64, 64]})
    assert result["model"]["delta1"] > result["baseline"]["delta1"] + 0.05, result


def test_semseg_beats_the_majority_class_and_depth_input_helps(pretrained):
    """Measured: mIoU 12 (rgb) and 20-21 (rgb + depth) against 6.3 for the majority class everywhere."""
    head = {"embed_dim": 256, "depth": 1}
    rgb = tune(pretrained, "seg-rgb", "semseg", ["rgb"], head)
    rgbd = tune(pretrained, "seg-rgbd", "semseg", ["rgb", "depth"], head)
    assert rgb["model"]["mIoU"] > rgb["baseline"]["mIoU"] + 3, rgb
    assert rgbd["model"]["mIoU"] > rgb["model"]["mIoU"] + 3, (rgb, rgbd)
