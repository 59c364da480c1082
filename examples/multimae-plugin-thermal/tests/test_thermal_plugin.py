"""The thermal plugin: the conformance kit, its file formats, and the whole CLI path with rgb.

These tests need the plugin installed (`pip install -e examples/multimae-plugin-thermal`): multimae must find
it through its entry point, as it would for a user.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("multimae_thermal", reason="multimae-plugin-thermal is not installed "
                    "(pip install -e examples/multimae-plugin-thermal)")

from multimae_cli import read_image, write_image
from multimae_cli.testing import check_modality, check_plugin, registered_modality

TINY = ["--set", "model.image_size=32", "--set", "model.depth=2", "--set", "model.dim=64",
        "--set", "model.num_heads=2", "--set", "model.decoder_dim=32", "--set", "model.decoder_num_heads=2",
        "--set", "model.decoder_depth=1", "--set", "data.workers=0", "--set", "optim.lr=0.002",
        "--set", "log_every=2", "--set", "checkpoint_every=4", "--set", "preview_every=4"]


def multimae(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    """`multimae ARGS` in a fresh interpreter, as a user runs it."""
    result = subprocess.run([sys.executable, "-m", "multimae_cli", *args], capture_output=True, text=True, cwd=cwd,
                            env={**os.environ, "MULTIMAE_LOAD_PLUGINS": "rgb,thermal"}, timeout=300)
    assert result.returncode == 0, f"multimae {' '.join(args)}: {result.stderr}"
    return result


def scene(rng: np.random.Generator, size: int = 48) -> tuple[np.ndarray, np.ndarray]:
    """An rgb picture of warm discs on a cool background and its 16-bit thermal image."""
    rows, cols = np.mgrid[:size, :size]
    heat = np.full((size, size), 290.0)
    for _ in range(3):
        r, c = rng.integers(8, size - 8, 2)
        radius = rng.integers(4, 10)
        heat[(rows - r) ** 2 + (cols - c) ** 2 < radius**2] += rng.uniform(5, 20)
    rgb = np.stack([(heat - 285) * 8, np.full_like(heat, 60), 255 - (heat - 285) * 8], -1)
    return np.clip(rgb, 0, 255).astype(np.uint8), np.rint(heat * 100).astype(np.uint16)  # centikelvin


def test_plugin_conforms():
    info = check_plugin("multimae_thermal")
    assert info.api == 3 and info.modalities == ["thermal"]
    check_modality(registered_modality("thermal"))


def test_reads_16_bit_8_bit_and_npy_alike(tmp_path):
    thermal = registered_modality("thermal")
    counts = np.arange(12, dtype=np.uint16).reshape(3, 4) * 5000
    write_image(tmp_path / "a.png", counts)
    write_image(tmp_path / "b.png", (counts // 257).astype(np.uint8))
    np.save(tmp_path / "c.npy", counts.astype(np.float32) / 100)  # kelvin
    sixteen, eight, kelvin = (thermal.read(tmp_path / name) for name in ("a.png", "b.png", "c.npy"))
    assert sixteen.dtype == np.float32 and np.array_equal(sixteen, counts)
    assert np.abs(eight - counts).max() <= 257
    import torch

    same = [thermal.normalize(torch.from_numpy(a)[None]) for a in (sixteen, kelvin)]
    torch.testing.assert_close(same[0], same[1], atol=1e-4, rtol=0)  # gain control ignores the unit


def test_refuses_colour_pictures(tmp_path):
    from multimae_cli import InputError

    write_image(tmp_path / "ironbow.png", np.zeros((4, 4, 3), np.uint8))
    with pytest.raises(InputError, match=r"ironbow.png: thermal images have one channel, got shape \(4, 4, 3\)"):
        registered_modality("thermal").read(tmp_path / "ironbow.png")


def test_pretrain_predict_export_with_rgb(tmp_path):
    rng = np.random.default_rng(0)
    for i in range(8):
        rgb, heat = scene(rng)
        for modality, image in (("rgb", rgb), ("thermal", heat)):
            (tmp_path / "data" / "train" / modality).mkdir(parents=True, exist_ok=True)
            write_image(tmp_path / "data" / "train" / modality / f"{i:03d}.png", image)

    summary = json.loads(multimae("pretrain", "--modalities", "rgb,thermal", "--data", "data", "--steps", "4",
                                  "--batch-size", "4", "--device", "cpu", "--name", "rgbt", "--json", *TINY,
                                  cwd=tmp_path).stdout)
    assert np.isfinite(summary["final_loss"])
    run = tmp_path / "runs" / "rgbt"
    assert sorted(json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()) == [2, 4]
    assert list((run / "previews").glob("*.png")), "the preview grid draws thermal with its colour map"

    multimae("predict", "data/train/rgb", "--task", "thermal", "--out", "pred", "--checkpoint", "runs/rgbt",
             "--colorize", "--device", "cpu", "--quiet", cwd=tmp_path)
    predicted = read_image(tmp_path / "pred" / "thermal" / "000.png", color=False)
    assert predicted.dtype == np.uint16 and predicted.shape == (48, 48)
    picture = read_image(tmp_path / "pred" / "thermal-color" / "000.png", color=True)
    assert picture.shape == (48, 48, 3)
    registered_modality("thermal").read(tmp_path / "pred" / "thermal" / "000.png")  # predictions train again

    for kind, name in (("official", "model.pth"), ("native", "model.safetensors")):
        multimae("export", "runs/rgbt/last/model.safetensors", "--format", kind, "--out", name, cwd=tmp_path)
    info = json.loads(multimae("info", "model.safetensors", "--json", cwd=tmp_path).stdout)
    assert "thermal" in json.dumps(info)
    from multimae_cli import load_model

    for name in ("model.pth", "model.safetensors"):
        model = load_model(tmp_path / name, **({"inputs": ("rgb", "thermal")} if name.endswith(".pth") else {}))
        assert model.input_adapters["thermal"].proj.weight.shape[1] == 1, name
