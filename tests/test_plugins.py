"""The plugin contract: a new modality with no core change, entry-point discovery, restriction, failures."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest
import torch
from conftest import run_cli

from multimae_cli import MaskedL1, Modality, ModelConfig, PatchInput, SpatialOutput, create_model, hookimpl
from multimae_cli.errors import UnknownModalityError
from multimae_cli.registry import Registry

THERMAL_PLUGIN = '''
from multimae_cli import MaskedL1, Modality, PatchInput, SpatialOutput, hookimpl


@hookimpl
def register_modalities(register):
    register(Modality(name="thermal", channels=1, input_adapter=PatchInput(), output_adapter=SpatialOutput(),
                      loss=MaskedL1(), description="infrared intensity"))
'''


class ThermalPlugin:
    @hookimpl
    def register_modalities(self, register):
        register(Modality(name="thermal", channels=1, input_adapter=PatchInput(), output_adapter=SpatialOutput(),
                          loss=MaskedL1()))


@pytest.fixture()
def registry_with_thermal():
    registry = Registry()
    registry.load_entry_points()
    registry.register(ThermalPlugin(), name="thermal")
    return registry


def test_new_modality_trains_with_rgb(registry_with_thermal):
    from multimae_cli import create_objective

    torch.manual_seed(0)
    config = ModelConfig.from_preset("tiny", inputs=("rgb", "thermal"), outputs=("rgb", "thermal"), image_size=32,
                                     depth=2, num_encoded_tokens=4)
    model = create_model(config, registry=registry_with_thermal)
    assert model.input_adapters["thermal"].proj.weight.shape[1] == 1
    inputs = {"rgb": torch.randn(2, 3, 32, 32), "thermal": torch.randn(2, 1, 32, 32)}
    preds, masks = model(inputs)
    assert preds["thermal"].shape == (2, 1, 32, 32)
    total, losses = create_objective(config, registry=registry_with_thermal)(preds, inputs, masks)
    total.backward()
    assert torch.isfinite(total) and set(losses) == {"rgb", "thermal"}
    for name in ("input_adapters.thermal.proj.weight", "output_adapters.thermal.out_proj.weight"):
        grad = model.get_parameter(name).grad
        assert grad is not None and grad.abs().sum() > 0, name


def test_unknown_modality_lists_registered(registry_with_thermal):
    with pytest.raises(UnknownModalityError, match=r"unknown modality 'lidar' \(registered: depth, .*thermal"):
        create_model(ModelConfig(inputs=("rgb", "lidar")), registry=registry_with_thermal)


def test_builtins_and_channels_override():
    registry = Registry()
    registry.load_entry_points()
    assert {"rgb", "norm_rgb", "depth", "semseg", "normals"} <= set(registry.modalities())
    config = ModelConfig.from_preset("tiny", inputs=("rgb", "semseg"), outputs=("semseg",), channels={"semseg": 40},
                                     image_size=32, depth=1, num_encoded_tokens=4)
    model = create_model(config, registry=registry)
    assert model.input_adapters["semseg"].class_emb.weight.shape == (40, 64)
    assert model.output_adapters["semseg"].out_proj.weight.shape[0] == 40 * 4 * 4
    normals = registry.modality("normals")
    import numpy as np

    flipped = normals.flip(np.array([[[0.5, 0.1, 0.8], [-0.2, 0.3, 0.9]]], dtype=np.float32))
    np.testing.assert_allclose(flipped, [[[0.2, 0.3, 0.9], [-0.5, 0.1, 0.8]]])


def make_dist(site: Path, dist: str, module: str, source: str, entry_name: str) -> None:
    """A minimal installed distribution exposing `module` under the `multimae` entry-point group."""
    (site / f"{module}.py").write_text(textwrap.dedent(source))
    info = site / f"{dist.replace('-', '_')}-1.2.3.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 1.2.3\n")
    (info / "entry_points.txt").write_text(f"[multimae]\n{entry_name} = {module}\n")


@pytest.fixture()
def site(tmp_path):
    make_dist(tmp_path, "multimae-plugin-thermal", "thermal_plugin", THERMAL_PLUGIN, "thermal")
    make_dist(tmp_path, "broken-plugin", "broken_plugin", "import not_a_real_module_xyz\n", "broken")
    return tmp_path


def test_plugins_json_lists_builtins_third_party_and_failures(site):
    result = run_cli("plugins", "--json", env={"PYTHONPATH": str(site)})
    assert result.returncode == 0, result.stderr
    rows = {row["name"]: row for row in json.loads(result.stdout)}
    for name in ("rgb", "depth", "semseg", "normals"):
        assert rows[name]["source"] == "built-in" and not rows[name]["error"]
    assert rows["rgb"]["modalities"] == ["rgb", "norm_rgb"]
    assert rows["thermal"]["source"] == "multimae-plugin-thermal" and rows["thermal"]["version"] == "1.2.3"
    assert rows["thermal"]["modalities"] == ["thermal"]
    assert "ModuleNotFoundError" in rows["broken"]["error"] and not rows["broken"]["modalities"]
    warnings = [line for line in result.stderr.splitlines() if line.strip()]
    assert warnings == ["warning: plugin 'broken' failed to import: ModuleNotFoundError: "
                        "No module named 'not_a_real_module_xyz'"]


def test_load_plugins_env_restricts(site):
    result = run_cli("plugins", "--json", env={"PYTHONPATH": str(site), "MULTIMAE_LOAD_PLUGINS": "rgb,thermal"})
    assert result.returncode == 0 and not result.stderr.strip()
    assert sorted(row["name"] for row in json.loads(result.stdout)) == ["rgb", "thermal"]
    result = run_cli("plugins", "--json", env={"MULTIMAE_LOAD_PLUGINS": ""})
    assert json.loads(result.stdout) == []


def test_plugin_raising_in_hook_is_isolated():
    class Raising:
        @hookimpl
        def register_modalities(self, register):
            raise RuntimeError("boom")

    registry = Registry()
    registry.load_entry_points()
    registry.register(Raising(), name="raising")
    assert "rgb" in registry.modalities()
    assert registry.plugins["raising"].error == "raised in register_modalities: RuntimeError: boom"


def test_duplicate_modality_is_reported_not_fatal():
    class Duplicate:
        @hookimpl
        def register_modalities(self, register):
            register(Modality(name="rgb", channels=4))

    registry = Registry()
    registry.load_entry_points()
    registry.register(Duplicate(), name="dup")
    assert registry.modality("rgb").channels == 3
    assert "already registered" in registry.plugins["dup"].error
