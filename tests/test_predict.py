"""`multimae predict`: cross-modal prediction on a real photograph, outputs at the original size, errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import run_cli

from multimae_cli import ModelConfig, create_model

PHOTO_SHAPE = (600, 512)  # matplotlib's bundled grace_hopper.jpg: a real photograph, not downloaded


@pytest.fixture(scope="session")
def photo() -> Path:
    cbook = pytest.importorskip("matplotlib.cbook")
    return Path(cbook.get_sample_data("grace_hopper.jpg", asfileobj=False))


@pytest.fixture(scope="session")
def checkpoint(tmp_path_factory) -> Path:
    """A tiny rgb+depth+semseg pretraining model (random weights: the tests check plumbing, not quality)."""
    import torch

    from multimae_cli import ModelConfig, create_model, save_model

    torch.manual_seed(0)
    config = ModelConfig(inputs=("rgb", "depth", "semseg"), outputs=("rgb", "depth", "semseg", "norm_rgb"),
                         channels={"semseg": 6}, image_size=(32, 32), patch_size=8, dim=32, depth=2, num_heads=2,
                         decoder_dim=32, decoder_depth=1, decoder_num_heads=2, num_encoded_tokens=8)
    path = tmp_path_factory.mktemp("ckpt") / "model.safetensors"
    save_model(create_model(config), path)
    return path


def test_predict_photo_writes_every_output_at_the_original_size(tmp_path, photo, checkpoint):
    from multimae_plugins import depth, semseg

    out = tmp_path / "pred"
    result = run_cli("predict", str(photo), "--out", str(out), "--checkpoint", str(checkpoint), "--colorize",
                     "--viz", str(out / "grid.png"), "--json")  # inside the folder predict makes
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary["tasks"] == ["depth", "semseg"] and summary["images"] == 1
    depth_map = depth.read(out / "depth" / "grace_hopper.png")
    labels = semseg.read(out / "semseg" / "grace_hopper.png")
    assert depth_map.shape == PHOTO_SHAPE and labels.shape == PHOTO_SHAPE
    assert depth_map.min() >= 1 and depth_map.max() == 65535  # relative depth spread over the 16-bit range
    assert labels.min() >= 0 and labels.max() < 6
    import cv2

    assert cv2.imread(str(out / "depth-color" / "grace_hopper.png")).shape == (*PHOTO_SHAPE, 3)
    assert not (out / "semseg-color").exists()  # a palette PNG is a picture already
    grid = cv2.imread(str(out / "grid.png"))
    assert grid.shape[0] > 100 and grid.shape[1] > 3 * 100  # input, depth, semseg side by side
    manifest = json.loads((out / "predict.json").read_text())
    assert [entry["id"] for entry in manifest["legend"]["semseg"]] == list(range(6))


def test_predict_single_file_extra_input_and_masking(tmp_path, photo, checkpoint):
    from multimae_cli.infer.predict import predict
    from multimae_plugins import depth, rgb, semseg

    rgb_image = rgb.read(photo)
    depth_file = tmp_path / "d.png"
    depth.write(depth_file, np.linspace(500, 4000, rgb_image.shape[0] * rgb_image.shape[1]).reshape(PHOTO_SHAPE))
    summary = predict([photo], tmp_path / "labels.png", tasks=["semseg"], checkpoint=checkpoint,
                      extra_inputs={"depth": depth_file})
    assert summary["outputs"] == [str(tmp_path / "labels.png")]
    assert semseg.read(tmp_path / "labels.png").shape == PHOTO_SHAPE
    masked = predict([photo], tmp_path / "masked", checkpoint=checkpoint, mask_ratio=0.75, seed=3,
                     viz=tmp_path / "masked.png")
    assert masked["tasks"] == ["rgb", "depth", "semseg"]  # with masking the input's reconstruction too
    assert rgb.read(tmp_path / "masked" / "rgb" / "grace_hopper.png").shape == (*PHOTO_SHAPE, 3)
    again = predict([photo], tmp_path / "masked-again", checkpoint=checkpoint, mask_ratio=0.75, seed=3)
    first = depth.read(tmp_path / "masked" / "depth" / "grace_hopper.png")
    assert np.array_equal(first, depth.read(tmp_path / "masked-again" / "depth" / "grace_hopper.png"))
    assert again["images"] == 1


def test_predict_folder_mirrors_the_tree_and_any_aspect(tmp_path, checkpoint):
    from multimae_cli.infer.predict import predict
    from multimae_plugins import depth, rgb

    images = tmp_path / "images"
    (images / "sub").mkdir(parents=True)
    rng = np.random.default_rng(0)
    shapes = {"a": (40, 90), "b": (40, 90), "sub/c": (77, 31)}
    for key, shape in shapes.items():
        rgb.write(images / f"{key}.png", rng.integers(0, 255, (*shape, 3), dtype=np.uint8))
    (images / "notes.txt").write_text("not an image")
    summary = predict([images], tmp_path / "out", tasks=["depth"], checkpoint=checkpoint, batch_size=2)
    assert summary["images"] == 3
    for key, shape in shapes.items():
        assert depth.read(tmp_path / "out" / "depth" / f"{key}.png").shape == shape


def test_checkpoint_resolution(tmp_path, photo, checkpoint, monkeypatch):
    from multimae_cli.infer.predictor import CHECKPOINT_ENV, find_checkpoint

    monkeypatch.delenv(CHECKPOINT_ENV, raising=False)
    result = run_cli("predict", str(photo), "--out", str(tmp_path / "x"), cwd=tmp_path,
                     env={CHECKPOINT_ENV: ""})
    assert result.returncode == 2 and "multimae pretrain" in result.stderr and "Traceback" not in result.stderr
    for name, age in (("old", 100), ("new", 0)):
        folder = tmp_path / "runs" / name / "last"
        folder.mkdir(parents=True)
        (folder / "model.safetensors").write_bytes(checkpoint.read_bytes())
        import os
        import time

        stamp = time.time() - age
        os.utime(folder / "model.safetensors", (stamp, stamp))
    assert find_checkpoint(runs_dir=tmp_path / "runs") == tmp_path / "runs" / "new" / "last" / "model.safetensors"
    monkeypatch.setenv(CHECKPOINT_ENV, str(checkpoint))
    assert find_checkpoint(runs_dir=tmp_path / "runs") == checkpoint
    assert find_checkpoint(tmp_path / "runs" / "old") == tmp_path / "runs" / "old" / "last" / "model.safetensors"


def test_rgb_that_is_16_bit_grey_or_4_channel_is_converted(tmp_path, checkpoint):
    import cv2

    from multimae_cli.infer.predict import predict

    rng = np.random.default_rng(1)
    cv2.imwrite(str(tmp_path / "deep.png"), rng.integers(0, 65535, (48, 40, 3), dtype=np.uint16))
    cv2.imwrite(str(tmp_path / "alpha.png"), rng.integers(0, 255, (48, 40, 4), dtype=np.uint8))
    cv2.imwrite(str(tmp_path / "grey.png"), rng.integers(0, 255, (48, 40), dtype=np.uint8))
    summary = predict([tmp_path / "deep.png", tmp_path / "alpha.png", tmp_path / "grey.png"], tmp_path / "out",
                      tasks=["depth"], checkpoint=checkpoint)
    assert summary["images"] == 3


@pytest.mark.parametrize(("args", "message"), [
    (["--task", "normals"], "cannot predict it"),
    (["--task", "norm_rgb"], "no writer"),
    (["--input", "normals=x.png"], "not an input of this checkpoint"),
    (["--input", "depth"], "expected MODALITY=PATH"),
    (["--mask-ratio", "1.5"], "--mask-ratio"),
])
def test_predict_bad_options(tmp_path, photo, checkpoint, args, message):
    result = run_cli("predict", str(photo), "--out", str(tmp_path / "out"), "--checkpoint", str(checkpoint), *args)
    assert result.returncode == 2, result.stderr
    assert message in result.stderr and "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_predict_bad_files(tmp_path, photo, checkpoint):
    not_image = tmp_path / "fake.png"
    not_image.write_bytes(b"this is text")
    result = run_cli("predict", str(not_image), "--out", str(tmp_path / "out"), "--checkpoint", str(checkpoint))
    assert result.returncode == 2 and "fake.png" in result.stderr and "not a readable image" in result.stderr
    missing_parent = tmp_path / "nope" / "deeper"
    result = run_cli("predict", str(photo), "--out", str(missing_parent), "--checkpoint", str(checkpoint))
    assert result.returncode == 2 and "does not exist" in result.stderr
    out = tmp_path / "kept"
    assert run_cli("predict", str(photo), "--out", str(out), "--checkpoint", str(checkpoint)).returncode == 0
    before = (out / "depth" / "grace_hopper.png").read_bytes()
    result = run_cli("predict", str(photo), "--out", str(out), "--checkpoint", str(checkpoint), "--seed", "1")
    assert result.returncode == 2 and "already exists" in result.stderr
    assert (out / "depth" / "grace_hopper.png").read_bytes() == before
    mixed = tmp_path / "mixed"
    mixed.mkdir()
    (mixed / "good.jpg").write_bytes(photo.read_bytes())
    (mixed / "bad.jpg").write_bytes(photo.read_bytes()[:5000])
    result = run_cli("predict", str(mixed), "--out", str(tmp_path / "m"), "--checkpoint", str(checkpoint),
                     "--skip-bad", "--json")
    summary = json.loads(result.stdout)
    assert result.returncode == 0 and summary["images"] == 1 and summary["skipped"] == 1
    assert "truncated JPEG" in summary["skipped_files"][0]


def test_predict_with_fine_tuned_checkpoints(tmp_path, photo):
    """Task heads: metric depth written in millimetres, class ids, and top classes for classification."""
    from multimae_cli.formats.load import save_model
    from multimae_cli.infer.predict import predict
    from multimae_cli.plugin.factory import build_task_model
    from multimae_cli.plugin.registry import get_registry
    from multimae_plugins import depth

    config = ModelConfig(inputs=("rgb",), outputs=(), image_size=(32, 32), patch_size=8, dim=32, depth=4, num_heads=2,
                         num_encoded_tokens=4)
    registry = get_registry()
    for task, head, outputs, options in (("depth", "dpt", 1, {"feature_dim": 16, "layer_dims": [8, 16, 16, 32]}),
                                         ("classification", "linear", 3, {})):
        torch.manual_seed(0)
        model = build_task_model(create_model(config), registry.task(task), head, outputs, options)
        model.task_info = {"task": task, "head": head, "head_options": options, "num_outputs": outputs,
                           "classes": ["cat", "dog", "owl"] if task == "classification" else None,
                           "depth_scale": 1.0, "reduce_zero_label": False}
        save_model(model, tmp_path / f"{task}.safetensors")
    summary = predict([photo], tmp_path / "d", checkpoint=tmp_path / "depth.safetensors")
    assert summary["tasks"] == ["depth"]
    assert depth.read(tmp_path / "d" / "depth" / "grace_hopper.png").shape == PHOTO_SHAPE
    result = run_cli("predict", str(photo), "--out", str(tmp_path / "c"), "--checkpoint",
                     str(tmp_path / "classification.safetensors"), "--json")
    assert result.returncode == 0, result.stderr
    ranked = json.loads(result.stdout)["classes"]["grace_hopper"]
    assert [r["class"] for r in ranked] and {r["class"] for r in ranked} == {"cat", "dog", "owl"}
    assert abs(sum(r["probability"] for r in ranked) - 1) < 1e-4
    result = run_cli("predict", str(photo), "--out", str(tmp_path / "m"), "--checkpoint",
                     str(tmp_path / "depth.safetensors"), "--mask-ratio", "0.5")
    assert result.returncode == 2 and "fine-tuned checkpoint sees its inputs whole" in result.stderr


def test_out_file_names_its_task(tmp_path, tiny_pth):
    """`--out depth.png` with one image writes that file: the task the stem names, among several outputs; a name
    that chooses none is one line listing the choices; several images never make a folder named `x.png`."""
    from multimae_cli.io import read_image, write_image

    write_image(tmp_path / "scene.png", np.zeros((64, 64, 3), np.uint8))
    result = run_cli("predict", str(tmp_path / "scene.png"), "--out", str(tmp_path / "depth.png"),
                     "--checkpoint", str(tiny_pth))
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "depth.png").is_file() and read_image(tmp_path / "depth.png", color=False).shape == (64, 64)
    vague = run_cli("predict", str(tmp_path / "scene.png"), "--out", str(tmp_path / "picture.png"),
                    "--checkpoint", str(tiny_pth))
    assert vague.returncode == 2 and vague.stderr.startswith(f"error: --out {tmp_path / 'picture.png'}: names one "
                                                             "file, but this would write depth, semseg; pass --task")
    write_image(tmp_path / "other.png", np.zeros((64, 64, 3), np.uint8))
    several = run_cli("predict", str(tmp_path / "scene.png"), str(tmp_path / "other.png"), "--out",
                      str(tmp_path / "semseg.png"), "--checkpoint", str(tiny_pth))
    assert several.returncode == 2 and "2 images are given; give a folder" in several.stderr
    assert not (tmp_path / "picture.png").exists() and not (tmp_path / "semseg.png").exists()
