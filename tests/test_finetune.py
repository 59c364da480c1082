"""`multimae finetune` / `multimae eval`: every built-in task trains and evaluates; DDP eval; bad inputs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import interrupt_after_step, run_cli

from multimae_cli.config import FinetuneConfig, build_config
from multimae_cli.errors import ConfigError, InputError, UnknownModalityError
from multimae_cli.formats.load import load_task_model
from multimae_cli.train.evaluate import evaluate_checkpoint
from multimae_cli.train.finetune import finetune

SMALL_DPT = {"feature_dim": 16, "layer_dims": [8, 16, 16, 32]}


def settings(tmp_path, **values) -> FinetuneConfig:
    base = {"image_size": 32, "batch_size": 4, "steps": 4, "eval_every": 4, "checkpoint_every": 4,
            "log_every": 2, "device": "cpu", "out_dir": str(tmp_path / "runs"),
            "data": {"synthetic_scenes": 32, "val_scenes": 16, "render_size": 48, "workers": 0}}
    return build_config(FinetuneConfig, {**base, **values})


@pytest.mark.parametrize(("task", "head_options", "main"), [
    ("depth", SMALL_DPT, "delta1"),
    ("semseg", {"embed_dim": 64, "depth": 1}, "mIoU"),
    ("normals", SMALL_DPT, "mean"),
])
def test_dense_tasks_train_save_and_evaluate(tmp_path, encoder, task, head_options, main):
    summary = finetune(settings(tmp_path, task=task, checkpoint=str(encoder), inputs=["rgb"], name=task,
                                head_options=head_options), quiet=True)
    assert summary["steps"] == 4 and np.isfinite(summary["final_loss"]) and main in summary["metrics"]
    best = tmp_path / "runs" / task / "best" / "model.safetensors"
    model = load_task_model(best)
    assert model.task_info["task"] == task and model.config.inputs == ("rgb",)
    result = evaluate_checkpoint(best, split="val", batch_size=4, device="cpu", synthetic_scenes=8)
    assert result["samples"] == 8 and set(result["metrics"]) == set(summary["metrics"])
    if task == "semseg":
        assert model.task_info["num_outputs"] == 6  # the synthetic scenes' classes


@pytest.mark.parametrize("inputs", [["rgb", "depth"], ["rgb"]])
def test_resume_continues_exactly(tmp_path, encoder, monkeypatch, inputs):
    """Weights equal the run never stopped. With rgb alone the drop path draws showed it: a resumed run's new
    loader iterator once took a draw from the global RNG just restored."""
    from multimae_cli.errors import TrainingStopped

    common = {"task": "depth", "checkpoint": str(encoder), "inputs": inputs, "head_options": SMALL_DPT,
              "val_split": None, "steps": 4}
    straight = finetune(settings(tmp_path, name="straight", **common), quiet=True)
    undo = interrupt_after_step(monkeypatch, 2)
    with pytest.raises(TrainingStopped, match="interrupted at step 2"):
        finetune(settings(tmp_path, name="resumed", **common), quiet=True)
    undo()
    resumed = finetune(settings(tmp_path, name="resumed", **common), resume=tmp_path / "runs" / "resumed", quiet=True)
    assert resumed["steps"] == 4
    a = load_task_model(tmp_path / "runs" / "straight" / "last" / "model.safetensors").state_dict()
    b = load_task_model(tmp_path / "runs" / "resumed" / "last" / "model.safetensors").state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert straight["final_loss"] == resumed["final_loss"]


def test_classification_from_class_folders(tmp_path, encoder):
    from multimae_plugins import rgb

    rng = np.random.default_rng(0)
    for split, count in (("train", 12), ("val", 6)):
        for label, colour in (("red", (200, 30, 30)), ("blue", (30, 30, 200))):
            folder = tmp_path / "data" / split / "rgb" / label
            folder.mkdir(parents=True)
            for i in range(count):
                image = np.clip(np.array(colour) + rng.integers(-20, 20, (40, 40, 3)), 0, 255).astype(np.uint8)
                rgb.write(folder / f"{i}.png", image)
    summary = finetune(settings(tmp_path, task="classification", checkpoint=str(encoder), inputs=["rgb"],
                                name="cls", steps=6,
                                data={"source": "folder", "path": str(tmp_path / "data"), "workers": 0},
                                mixup={"mixup_alpha": 0.8, "cutmix_alpha": 1.0, "label_smoothing": 0.1}),
                       quiet=True)
    assert set(summary["metrics"]) == {"top1", "top5"}
    model = load_task_model(tmp_path / "runs" / "cls" / "best" / "model.safetensors")
    assert model.task_info["classes"] == ["blue", "red"]
    result = run_cli("eval", str(tmp_path / "runs" / "cls"), "--data",  # a run folder means its best/
                     str(tmp_path / "data"), "--json", "--device", "cpu")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["samples"] == 12
    bad = run_cli("eval", str(tmp_path / "runs" / "cls"), "--workers", "many")
    assert bad.returncode == 2 and bad.stderr.strip() == ("error: --workers: expected 'auto' or a number of loader "
                                                          "processes >= 0, got 'many'"), bad.stderr
    info = run_cli("info", str(tmp_path / "runs" / "cls" / "last"))
    assert info.returncode == 0 and "inputs:  rgb" in info.stdout, info.stderr
    empty = run_cli("info", str(tmp_path / "data"))
    assert empty.returncode == 2 and "no model.safetensors in this folder, nor in its best/ or last/" in empty.stderr


def test_official_fixture_into_each_head_at_another_resolution(tmp_path, tiny_pth):
    for task, head, options in (("classification", "linear", {}), ("semseg", "convnext", {"embed_dim": 64}),
                                ("semseg", "dpt", SMALL_DPT), ("depth", "dpt", SMALL_DPT)):
        from multimae_cli.formats.load import load_model
        from multimae_cli.plugin.factory import build_task_model
        from multimae_cli.plugin.registry import get_registry

        backbone = load_model(tiny_pth, inputs=("rgb",), outputs=(), image_size=(96, 128))
        model = build_task_model(backbone, get_registry().task(task), head, 5, options).eval()
        out = model({"rgb": torch.randn(2, 3, 96, 128)})
        assert out.shape == ((2, 5) if task == "classification" else (2, 5, 96, 128))


def test_eval_under_two_processes_equals_one(tmp_path, encoder):
    finetune(settings(tmp_path, task="depth", checkpoint=str(encoder), inputs=["rgb"], name="d",
                      head_options=SMALL_DPT, steps=2, val_split=None), quiet=True)
    ckpt = tmp_path / "runs" / "d" / "last" / "model.safetensors"
    single = evaluate_checkpoint(ckpt, split="val", batch_size=3, device="cpu", synthetic_scenes=7)
    result = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_port=29533",
         "-m", "multimae_cli", "eval", str(ckpt), "--json", "--device", "cpu", "--batch-size", "3",
         "--scenes", "7"],
        capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stderr[-3000:]
    assert single["metrics"]["delta1"] < 1  # with random weights: a non-trivial set of sums to compare
    ddp = json.loads(result.stdout.strip().splitlines()[-1])
    assert ddp["samples"] == single["samples"]
    for key, value in single["metrics"].items():
        assert ddp["metrics"][key] == pytest.approx(value, rel=1e-9, abs=1e-12), key


def test_bad_inputs(tmp_path, encoder):
    with pytest.raises(Exception, match="unknown task 'segmentation'"):
        finetune(settings(tmp_path, task="segmentation", checkpoint=str(encoder)), quiet=True)
    with pytest.raises(ConfigError, match="semseg not in the checkpoint"):
        finetune(settings(tmp_path, task="depth", checkpoint=str(encoder), inputs=["rgb", "semseg"],
                          head_options=SMALL_DPT), quiet=True)
    with pytest.raises(UnknownModalityError, match="sonar"):
        finetune(settings(tmp_path, task="depth", checkpoint=str(encoder), inputs=["sonar"]), quiet=True)
    data = tmp_path / "data" / "train" / "rgb" / "s"
    data.mkdir(parents=True)
    from multimae_plugins import rgb

    rgb.write(data / "a.png", np.zeros((32, 32, 3), np.uint8))
    with pytest.raises(InputError, match="missing folder for modality 'depth'"):
        finetune(settings(tmp_path, task="depth", checkpoint=str(encoder), inputs=["rgb"],
                          data={"source": "folder", "path": str(tmp_path / "data")}), quiet=True)
    result = run_cli("finetune", "--task", "depth", "--set", "layer_decay=2", "--device", "cpu")
    assert result.returncode == 2 and "layer_decay" in result.stderr and "Traceback" not in result.stderr


def test_validation_split_missing_named_or_broken(tmp_path):
    from multimae_cli.data.synthetic.io import MODALITIES, write_synthetic
    from multimae_cli.plugin.registry import get_registry

    modalities = {name: get_registry().modality(name) for name in MODALITIES}
    write_synthetic(tmp_path / "data", 4, (32, 32), modalities)  # a train split only
    folder = {"source": "folder", "path": str(tmp_path / "data"), "workers": 0}
    summary = finetune(settings(tmp_path, name="noval", steps=2, data=folder), quiet=True)
    assert summary["steps"] == 2 and summary["metrics"] == {}  # the default split is absent: no evaluation
    resumed = finetune(settings(tmp_path, name="noval", steps=2, data=folder), resume=tmp_path / "runs" / "noval",
                       quiet=True)  # the saved config names the default split: still no error
    assert resumed["steps"] == 2
    with pytest.raises(InputError, match=r"val_split: .*data/valid: no such folder"):
        finetune(settings(tmp_path, name="typo", steps=2, data=folder, val_split="valid"), quiet=True)
    (tmp_path / "data" / "val" / "rgb").mkdir(parents=True)  # a broken split is an error, never skipped
    with pytest.raises(InputError, match=r"data/val/depth: missing folder for modality 'depth'"):
        finetune(settings(tmp_path, name="broken", steps=2, data=folder), quiet=True)
    with pytest.raises(InputError, match=r"data/test: no such folder \(its splits: train, val\)"):
        evaluate_checkpoint(tmp_path / "runs" / "noval", data=tmp_path / "data", split="test", device="cpu")


def test_classification_on_synthetic_scenes_asks_for_class_folders(tmp_path):
    with pytest.raises(InputError, match="classification reads class folders: give a folder dataset"):
        finetune(settings(tmp_path, task="classification"), quiet=True)  # was an AttributeError


def test_labels_out_of_range_name_the_file(tmp_path, encoder):
    from multimae_plugins import depth, rgb, semseg

    for split in ("train", "val"):
        for i in range(4):
            stem = tmp_path / "data" / split
            for name in ("rgb", "semseg", "depth"):
                (stem / name / "s").mkdir(parents=True, exist_ok=True)
            rgb.write(stem / "rgb" / "s" / f"{i}.png", np.zeros((32, 32, 3), np.uint8))
            depth.write(stem / "depth" / "s" / f"{i}.png", np.full((32, 32), 1000.0))
            semseg.write(stem / "semseg" / "s" / f"{i}.png", np.full((32, 32), 9 if i == 2 else 1))
    result = run_cli("finetune", "--task", "semseg", "--checkpoint", str(encoder), "--inputs", "rgb", "--data",
                     str(tmp_path / "data"), "--set", "num_classes=5", "--set", "data.workers=1", "--steps", "4",
                     "--batch-size", "2", "--device", "cpu", "--out", str(tmp_path / "runs"),
                     "--set", "head_options.embed_dim=64")
    assert result.returncode == 2, result.stderr[-2000:]
    line = result.stderr.strip()
    assert len(line.splitlines()) == 1 and "2.png: label 9 outside the 5 classes" in line, line


def test_label_255_is_ignored_not_refused(tmp_path, encoder):
    """ADE20K style: 255 marks pixels to ignore. The semseg modality has 133 classes for pretraining, but a
    fine-tuning target is checked against the task's classes, 255 allowed (it was refused as out of range)."""
    from multimae_plugins import rgb, semseg

    labels = np.ones((32, 32), np.int64)
    labels[:8] = 255
    for split in ("train", "val"):
        for i in range(4):
            stem = tmp_path / "data" / split
            for name in ("rgb", "semseg"):
                (stem / name / "s").mkdir(parents=True, exist_ok=True)
            rgb.write(stem / "rgb" / "s" / f"{i}.png", np.full((32, 32, 3), 40 * i, np.uint8))
            semseg.write(stem / "semseg" / "s" / f"{i}.png", labels)
    folder = {"source": "folder", "path": str(tmp_path / "data"), "workers": 0}
    summary = finetune(settings(tmp_path, task="semseg", checkpoint=str(encoder), inputs=["rgb"], name="ignore",
                                num_classes=5, head_options={"embed_dim": 64}, data=folder), quiet=True)
    assert summary["steps"] == 4 and 0 <= summary["metrics"]["mIoU"] <= 100
    result = evaluate_checkpoint(tmp_path / "runs" / "ignore", data=tmp_path / "data", device="cpu")
    assert result["samples"] == 4


def test_mixup_for_classification_only(tmp_path, encoder):
    with pytest.raises(ConfigError, match="mixup: only for classification"):
        finetune(settings(tmp_path, task="depth", checkpoint=str(encoder), inputs=["rgb"],
                          mixup={"mixup_alpha": 0.8}, head_options=SMALL_DPT), quiet=True)


@pytest.mark.parametrize("path", sorted((Path(__file__).parents[1] / "examples" / "configs").glob("finetune-*.yaml")),
                         ids=lambda p: p.name)
def test_example_finetune_configs_are_valid(path):
    from multimae_cli.config import load_config
    from multimae_cli.plugin.registry import get_registry

    config = load_config(FinetuneConfig, str(path))
    task = get_registry().task(config.task)
    assert config.head is None or config.head in task.heads
    assert config.loss is None or config.loss in task.losses
    if "official" in path.name:
        assert config.checkpoint and config.data.source == "folder" and config.epochs


def test_finetune_from_timm_weights(tmp_path, encoder):
    """A timm ViT file (as MAE or DeiT weights come) initialises the encoder, mapped as the official converter."""
    from multimae_cli.formats.export import export_model

    export_model(encoder, "timm", tmp_path / "vit.pth")
    summary = finetune(settings(tmp_path, task="depth", checkpoint=str(tmp_path / "vit.pth"), inputs=["rgb"],
                                name="from-timm", head_options=SMALL_DPT, val_split=None, num_heads=2), quiet=True)
    assert summary["steps"] == 4 and np.isfinite(summary["final_loss"])


def test_nan_loss_is_named_at_its_step_and_no_checkpoint_follows_it(tmp_path, encoder, monkeypatch):
    """Losses are read at log steps and saves only: a bad step 3 is found at the save of step 4, which is not
    written; the checkpoint of step 2 stays."""
    from multimae_cli.errors import TrainingStopped
    from multimae_cli.train import checkpoint as ckpt
    from multimae_cli.train import finetune as finetune_module

    real, calls = finetune_module.to_device, {"n": 0}

    def poisoned(*args, **kwargs):
        calls["n"] += 1
        batch = real(*args, **kwargs)
        return {name: tensor * float("nan") for name, tensor in batch.items()} if calls["n"] == 3 else batch

    monkeypatch.setattr(finetune_module, "to_device", poisoned)
    config = settings(tmp_path, name="nan", task="depth", checkpoint=str(encoder), inputs=["rgb"], steps=6,
                      head_options=SMALL_DPT, val_split=None, checkpoint_every=2, log_every=4)
    with pytest.raises(TrainingStopped, match=r"non-finite loss at step 3; the last good checkpoint is kept"):
        finetune(config, quiet=True)
    folder = ckpt.find_checkpoint(tmp_path / "runs" / "nan")
    assert torch.load(folder / "state.pt", weights_only=True)["step"] == 2


def test_default_inputs_leave_out_the_task_target(tmp_path, encoder):
    """Without `inputs`, a depth head on an rgb + depth checkpoint sees rgb only; a semseg head sees both."""
    depth = finetune(settings(tmp_path, task="depth", checkpoint=str(encoder), name="d", steps=1,
                              head_options=SMALL_DPT), quiet=True)
    assert load_task_model(depth["checkpoint"]).config.inputs == ("rgb",)
    semseg = finetune(settings(tmp_path, task="semseg", checkpoint=str(encoder), name="s", steps=1,
                               head_options={"embed_dim": 64, "depth": 1}), quiet=True)
    assert load_task_model(semseg["checkpoint"]).config.inputs == ("rgb", "depth")
