"""Linear probing (`freeze_encoder`, dense `linear` heads), the logged fine-tuning lr, cross-modal quality of a
pretraining model on held-out samples, titled previews, and the transfer benchmark's bookkeeping."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from test_finetune import settings

from multimae_cli import ModelConfig
from multimae_cli.config import FinetuneConfig, build_config
from multimae_cli.data.preview import preview_grid
from multimae_cli.formats.load import load_model, load_task_model
from multimae_cli.model.heads import DenseLinearHead
from multimae_cli.model.layers import TokenLayout
from multimae_cli.plugin.registry import get_registry
from multimae_cli.train.crossmodal import align, cross_modal_quality, quality_line
from multimae_cli.train.finetune import finetune

REPO = Path(__file__).resolve().parents[1]


def test_dense_linear_head_is_one_linear_map_per_token():
    head = DenseLinearHead(8, 3, patch_size=4, main_modalities=("rgb",))
    layout = TokenLayout(("rgb",), (2, 2), 1)
    tokens = torch.randn(2, 5, 8)
    out = head(tokens, layout, (8, 8))
    assert out.shape == (2, 3, 8, 8)
    # the 4x4 pixels of the top-left patch depend on its token alone
    changed = tokens.clone()
    changed[:, 1] += torch.randn(8)  # the second patch token
    diff = (head(changed, layout, (8, 8)) - out).abs().sum(dim=(0, 1))
    assert diff[:4, :4].max() == 0 and diff[:4, 4:].min() > 1e-3
    assert [name for name, p in head.named_parameters()] == ["head.weight", "head.bias"]


@pytest.mark.parametrize(("task", "main"), [("depth", "delta1"), ("semseg", "mIoU")])
def test_linear_probe_trains_the_head_alone(tmp_path, encoder, task, main):
    summary = finetune(settings(tmp_path, task=task, checkpoint=str(encoder), inputs=["rgb"], name=task,
                                head="linear", freeze_encoder=True, drop_path_rate=0.1), quiet=True)
    assert main in summary["metrics"]
    before = load_model(encoder).state_dict()
    after = load_task_model(tmp_path / "runs" / task / "last" / "model.safetensors")
    encoder_keys = [k for k in after.backbone.state_dict() if k in before]
    assert encoder_keys and all(torch.equal(after.backbone.state_dict()[k], before[k]) for k in encoder_keys)
    fresh = finetune(settings(tmp_path, task=task, checkpoint=str(encoder), inputs=["rgb"], name=f"{task}-full",
                              head="linear"), quiet=True)
    tuned = load_task_model(Path(fresh["run"]) / "last" / "model.safetensors").backbone.state_dict()
    assert any(not torch.equal(tuned[k], before[k]) for k in encoder_keys)  # the same run unfrozen does move it


def test_frozen_encoder_stays_in_eval_mode(encoder):
    from multimae_cli.model.multimae import FinetuneModel

    backbone = load_model(encoder, inputs=("rgb",), outputs=(), drop_path_rate=0.5)
    model = FinetuneModel(backbone, DenseLinearHead(32, 1, 8, main_modalities=("rgb",))).freeze_backbone().train()
    assert model.head.training and not model.backbone.training
    inputs = {"rgb": torch.randn(2, 3, 32, 32)}
    assert torch.equal(model(inputs), model(inputs))  # no stochastic depth
    assert all(not p.requires_grad for p in model.backbone.parameters())


def test_logged_lr_is_the_heads_not_the_first_layer_groups(tmp_path, encoder):
    finetune(settings(tmp_path, task="depth", checkpoint=str(encoder), inputs=["rgb"], name="lr", steps=3, log_every=1,
                      head_options={"feature_dim": 16, "layer_dims": [8, 16, 16, 32]}, layer_decay=0.5,
                      optim={"lr": 1e-3, "warmup_steps": 0}), quiet=True)
    records = [json.loads(line) for line in (tmp_path / "runs" / "lr" / "metrics.jsonl").read_text().splitlines()]
    first = next(r for r in records if "lr" in r)
    assert first["lr"] == pytest.approx(1e-3)  # the first group (embeddings) has 1e-3 * 0.5**5


def test_align_recovers_scale_and_shift():
    target = torch.rand(2, 1, 6, 6) + 1
    valid = torch.ones_like(target, dtype=torch.bool)
    valid[0, 0, 0, 0] = False
    pred = (target - 3) / torch.tensor([2.0, 0.5]).view(2, 1, 1, 1)
    pred[0, 0, 0, 0] = 1000.0  # an invalid pixel does not take part in the fit
    aligned = align(pred, target, valid)
    assert torch.allclose(aligned[valid], target[valid], atol=1e-5)


class _Scenes:
    """Two held-out samples, file space."""

    def __init__(self):
        rng = np.random.default_rng(0)
        self.samples = []
        for i in range(2):
            labels = np.zeros((8, 8), np.uint8)
            labels[4:, :] = 1 + i
            self.samples.append({"rgb": rng.integers(0, 255, (32, 32, 3), dtype=np.uint8),
                                 "depth": (rng.random((32, 32)) * 3 + 1).astype(np.float32), "semseg": labels})

    def __len__(self):
        return len(self.samples)

    def read(self, index):
        return dict(self.samples[index])


class _Oracle(torch.nn.Module):
    """Decodes what the truth would give: depth as an affine map of it (relative), semseg as one-hot logits."""

    def __init__(self, scenes, config):
        super().__init__()
        self.config, self.scenes = config, scenes

    def encode(self, inputs, mask_inputs=True):
        assert not mask_inputs and set(inputs) == {"rgb"}
        return inputs["rgb"].shape[0]

    def decode(self, batch, outputs):
        depth = torch.stack([torch.from_numpy(s["depth"]) for s in self.scenes.samples[:batch]])[:, None]
        labels = torch.stack([torch.from_numpy(s["semseg"]).long() for s in self.scenes.samples[:batch]])
        semseg = torch.nn.functional.one_hot(labels, 6).permute(0, 3, 1, 2).float()
        return {"depth": 0.5 * depth - 2.0, "semseg": semseg}


def test_cross_modal_quality_scores_perfect_predictions_perfectly():
    registry = get_registry()
    modalities = {"rgb": registry.modality("rgb"), "depth": registry.modality("depth"),
                  "semseg": registry.modality("semseg").with_channels(6)}
    config = ModelConfig(inputs=("rgb", "depth", "semseg"), outputs=("rgb", "depth", "semseg", "norm_rgb"),
                         channels={"semseg": 6}, image_size=32, patch_size=8, num_encoded_tokens=8)
    scenes = _Scenes()
    report = cross_modal_quality(_Oracle(scenes, config), scenes, modalities, torch.device("cpu"))
    assert report["source"] == "rgb" and report["samples"] == 2 and set(report["outputs"]) == {"depth", "semseg"}
    depth, semseg = report["outputs"]["depth"], report["outputs"]["semseg"]
    assert depth["metric"] == "delta1" and depth["value"] == pytest.approx(1.0)
    assert depth["constant"] < 0.9 and depth["average_scene"] < 0.95  # noise maps: no scene in common
    assert semseg["metric"] == "mIoU" and semseg["value"] == pytest.approx(100.0)
    assert semseg["constant"] == pytest.approx(100 * (0.5 + 0 + 0) / 3)  # class 0 everywhere: IoU 0.5, 0, 0
    # the average scene: top half class 0 (right), bottom half class 1 (tie of 1 and 2, the first wins)
    assert semseg["average_scene"] == pytest.approx(100 * (1.0 + 0.5 + 0) / 3)
    line = quality_line(report)
    assert line.startswith("held-out cross-modal, rgb alone (2 samples): depth delta1 1 (constant ")
    assert "semseg mIoU 100 (constant 16.7, average scene 50)" in line


def test_average_scene_of_identical_depth_maps_is_perfect():
    from multimae_cli.train.crossmodal import _blind_guesses

    task = get_registry().task("depth")
    ramp = torch.linspace(1, 5, 16).view(1, 4, 4).repeat(3, 1, 1) * torch.tensor([1.0, 2.0, 3.0]).view(3, 1, 1)
    guesses = _blind_guesses(ramp, get_registry().modality("depth"), task, "delta1")
    assert guesses["average_scene"] == pytest.approx(1.0) and guesses["constant"] < 0.7


def test_preview_titles_name_each_column():
    rgb = get_registry().modality("rgb")
    picture = torch.zeros(3, 96, 96)
    plain = preview_grid([[("rgb", picture), ("rgb", picture)]], {"rgb": rgb})
    titled = preview_grid([[("rgb", picture, "rgb visible"), ("rgb", picture, "rgb truth")]], {"rgb": rgb},
                          titles=True)
    other = preview_grid([[("rgb", picture, "rgb visible"), ("rgb", picture, "rgb predicted")]], {"rgb": rgb},
                         titles=True)
    assert titled.shape[0] == plain.shape[0] + 22 and np.array_equal(titled[22:], plain)
    header = titled[:22]
    assert (header < 128).any() and not np.array_equal(header, other[:22])  # black text; the second title differs
    assert np.array_equal(header[:, :96], other[:22, :96])  # the first column's title is the same


def test_transfer_benchmark_rejects_unknown_scope_and_arm():
    for args in (["--set", "D.model.alphas=1"], ["--arms", "A,D"]):
        result = subprocess.run([sys.executable, str(REPO / "benchmarks" / "transfer.py"), "--quick", *args],
                                capture_output=True, text=True, timeout=60)
        assert result.returncode != 0 and len(result.stderr.strip().splitlines()) == 1, result.stderr


def test_finetune_lr_follows_the_official_recipe_of_the_tasks_kind():
    from multimae_cli.config import DENSE_LR, PROBE_LR

    default = build_config(FinetuneConfig, {})
    assert default.resolved_lr("dense", 16) == DENSE_LR == default.resolved_lr("dense", 1024)  # absolute
    assert default.resolved_lr("classification", 1024) == pytest.approx(2e-3)  # blr 5e-4 scaled
    assert build_config(FinetuneConfig, {"optim": {"blr": 2e-3}}).resolved_lr("dense", 16) == pytest.approx(1.25e-4)
    assert build_config(FinetuneConfig, {"optim": {"lr": 3e-4, "blr": 1.0}}).resolved_lr("dense", 16) == 3e-4
    probe = build_config(FinetuneConfig, {"freeze_encoder": True})
    assert probe.resolved_lr("dense", 16) == probe.resolved_lr("classification", 1024) == PROBE_LR > DENSE_LR


def test_pretraining_needs_an_lr_or_a_blr():
    from multimae_cli.config import PretrainConfig
    from multimae_cli.errors import ConfigError

    with pytest.raises(ConfigError, match="optim: give lr"):
        build_config(PretrainConfig, {"optim": {"blr": None}})
