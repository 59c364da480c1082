"""`multimae features`: deterministic embeddings of image files."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from conftest import run_cli

from multimae_cli import load_model, save_model
from multimae_cli.data.transforms import resize, to_device, to_tensor
from multimae_cli.errors import ConfigError, InputError
from multimae_cli.infer.features import extract_features, read_features
from multimae_cli.io import write_image
from multimae_cli.plugin.factory import resolve_modalities


@pytest.fixture()
def folder(tmp_path):
    rng = np.random.default_rng(0)
    images = tmp_path / "images"
    (images / "sub").mkdir(parents=True)
    write_image(images / "a.png", rng.integers(0, 256, (64, 64, 3), dtype=np.uint8))
    write_image(images / "b.png", rng.integers(0, 256, (48, 80, 3), dtype=np.uint8))
    write_image(images / "sub" / "c.png", rng.integers(0, 256, (64, 64, 3), dtype=np.uint8))
    return images


@pytest.fixture()
def checkpoint(tmp_path, tiny_pth):
    path = tmp_path / "model.safetensors"
    save_model(load_model(tiny_pth), path)
    return path


def test_features_are_the_unmasked_encoder_output_deterministic_and_batch_free(tmp_path, folder, checkpoint):
    """Rows in sorted key order; `pooled` is the mean of the patch tokens of `forward_features` of the image at the
    model's size; two runs, and batch sizes 1 and 3, give the same numbers."""
    summary = extract_features([folder], tmp_path / "f.safetensors", checkpoint, tokens=True, batch_size=3)
    keys, tensors = read_features(tmp_path / "f.safetensors")
    assert keys == ["a", "b", "sub/c"] and summary["images"] == 3
    model = load_model(checkpoint).eval()
    dim, globals_ = model.config.dim, model.config.num_global_tokens
    patches = (64 // 16) ** 2
    assert tensors["pooled"].shape == (3, dim) and tensors["tokens"].shape == (3, patches + globals_, dim)

    modalities = resolve_modalities(model.config, names=["rgb"])
    from multimae_cli.io import read_image

    array = resize(read_image(folder / "b.png", color=True), (64, 64), modalities["rgb"].interpolation)
    with torch.inference_mode():
        expected = model.forward_features(to_device({"rgb": to_tensor(array, modalities["rgb"])[None]}, modalities,
                                                    torch.device("cpu")))
    torch.testing.assert_close(tensors["tokens"][1], expected[0])
    torch.testing.assert_close(tensors["pooled"][1], expected[0, :patches].mean(0))

    extract_features([folder], tmp_path / "again.safetensors", checkpoint, tokens=True, batch_size=1)
    _, again = read_features(tmp_path / "again.safetensors")
    torch.testing.assert_close(again["tokens"], tensors["tokens"], rtol=1e-5, atol=1e-5)
    extract_features([folder], tmp_path / "f.safetensors", checkpoint, tokens=True, batch_size=3, overwrite=True)
    assert torch.equal(read_features(tmp_path / "f.safetensors")[1]["pooled"], tensors["pooled"])


def test_global_pool_extra_inputs_and_bad_requests(tmp_path, folder, checkpoint):
    depth = tmp_path / "depth"
    (depth / "sub").mkdir(parents=True)
    for key, shape in (("a", (64, 64)), ("b", (48, 80)), ("sub/c", (64, 64))):
        write_image(depth / f"{key}.png", np.full(shape, 1500, np.uint16))
    out = tmp_path / "g.safetensors"
    extract_features([folder], out, checkpoint, {"depth": depth}, pool="global")
    keys, tensors = read_features(out)
    assert keys == ["a", "b", "sub/c"] and tensors["pooled"].shape[0] == 3 and "tokens" not in tensors
    from safetensors import safe_open

    with safe_open(str(out), framework="pt") as handle:
        layout = json.loads(handle.metadata()["multimae.layout"])
    assert layout["modalities"] == ["rgb", "depth"] and layout["grid"] == [4, 4]
    with pytest.raises(ConfigError, match="--pool max: expected one of mean, global"):
        extract_features([folder], tmp_path / "x.safetensors", checkpoint, pool="max")
    with pytest.raises(ConfigError, match=r"as a \.safetensors file"):
        extract_features([folder], tmp_path / "x.npy", checkpoint)
    with pytest.raises(InputError, match="already exists"):
        extract_features([folder], out, checkpoint)
    with pytest.raises(InputError, match="not a features file"):
        read_features(checkpoint)


def test_features_cli(tmp_path, folder, checkpoint):
    result = run_cli("features", str(folder), "--out", str(tmp_path / "f.safetensors"), "--checkpoint",
                     str(checkpoint), "--json")
    assert result.returncode == 0 and result.stderr == "", result.stderr
    summary = json.loads(result.stdout)
    assert summary["images"] == 3 and summary["pooled"][0] == 3 and summary["tokens"] is None
