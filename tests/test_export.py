"""`multimae export` / `multimae import`: every format re-loads to the same model; failures leave nothing."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import run_cli

from multimae_cli import ModelConfig, create_model, load_model, save_model
from multimae_cli.errors import CheckpointError, ConfigError, InputError, MultiMAEError
from multimae_cli.formats.export import export_model, import_model
from multimae_cli.formats.official import read_torch_checkpoint


def test_official_export_import_round_trip_is_bit_exact(tmp_path, tiny_pth):
    exported = tmp_path / "official.pth"
    export_model(tiny_pth, "official", exported)
    original, _ = read_torch_checkpoint(tiny_pth)
    written, args = read_torch_checkpoint(exported)
    assert original.keys() == written.keys()
    assert all(torch.equal(original[k], written[k]) for k in original)
    assert args["num_heads"] == load_model(tiny_pth).config.num_heads
    result = run_cli("import", "official", str(exported), "--out", str(tmp_path / "back.safetensors"))
    assert result.returncode == 0, result.stderr
    back = load_model(tmp_path / "back.safetensors").state_dict()
    assert all(torch.equal(original[k], back[k]) for k in original) and back.keys() == original.keys()


def test_timm_export_loads_in_timm_with_our_features(tmp_path):
    """timm's ViT ends in a LayerNorm MultiViT lacks: the export sets it to identity affine, so timm's
    features are LayerNorm(ours) without affine, cls token first where our global token is last."""
    timm = pytest.importorskip("timm")
    torch.manual_seed(0)
    config = ModelConfig.from_preset("tiny", inputs=("rgb",), outputs=(), image_size=32, num_encoded_tokens=2)
    model = create_model(config).eval()
    save_model(model, tmp_path / "ours.safetensors")
    summary = export_model(tmp_path / "ours.safetensors", "timm", tmp_path / "vit.safetensors")
    assert summary["timm_model"] == "vit_tiny_patch16_224"
    vit = timm.create_model("vit_tiny_patch16_224", num_classes=0, img_size=32,
                            checkpoint_path=str(tmp_path / "vit.safetensors")).eval()
    image = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        ours = torch.nn.functional.layer_norm(model.forward_features({"rgb": image}), (config.dim,), eps=1e-6)
        theirs = vit.forward_features(image)
    torch.testing.assert_close(theirs[:, 1:], ours[:, :-1], atol=1e-5, rtol=0)
    torch.testing.assert_close(theirs[:, 0], ours[:, -1], atol=1e-5, rtol=0)
    imported = import_model("timm", tmp_path / "vit.safetensors", tmp_path / "back.safetensors")
    assert imported["inputs"] == ["rgb"]
    back = load_model(tmp_path / "back.safetensors").eval()
    with torch.no_grad():
        torch.testing.assert_close(back.forward_features({"rgb": image}), model.forward_features({"rgb": image}))


def test_timm_export_of_an_unnamed_architecture(tmp_path, tiny_pth, tiny_io):
    summary = export_model(tiny_pth, "timm", tmp_path / "vit.pth")
    assert summary["timm_model"] is None and "VisionTransformer(" in summary["load_with"]
    # dim 96 with 3 heads: not the 64 channels per head a bare timm file is assumed to have, so a safetensors
    # export records the head count and importing it back gives the same model
    export_model(tiny_pth, "timm", tmp_path / "vit.safetensors")
    assert import_model("timm", tmp_path / "vit.safetensors", tmp_path / "back.safetensors")["num_heads"] == 3
    image = {"rgb": tiny_io["in.rgb"]}
    with torch.no_grad():
        torch.testing.assert_close(load_model(tmp_path / "back.safetensors").eval().forward_features(image),
                                   load_model(tiny_pth).eval().forward_features(image))


def test_onnx_matches_torch(tmp_path, tiny_pth):
    onnxruntime = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    out = tmp_path / "model.onnx"
    summary = export_model(tiny_pth, "onnx", out, inputs=["rgb"], outputs=["depth", "semseg"],
                           image_size=(64, 96), batch_size=2)
    assert max(summary["max_abs_error"].values()) < 1e-4
    model = load_model(tiny_pth).eval()
    image = torch.randn(2, 3, 64, 96)
    session = onnxruntime.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    depth, semseg = session.run(["depth_pred", "semseg_pred"], {"rgb": image.numpy()})
    with torch.no_grad():
        expected = model.decode(model.encode({"rgb": image}, mask_inputs=False), ["depth", "semseg"])
    torch.testing.assert_close(torch.from_numpy(depth), expected["depth"], atol=1e-4, rtol=0)
    torch.testing.assert_close(torch.from_numpy(semseg), expected["semseg"], atol=1e-4, rtol=0)


def test_onnx_of_fine_tuned_checkpoints(tmp_path):
    """The deployment path of a fine-tuned model: its inputs to its head's output, as in torch."""
    onnxruntime = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    from multimae_cli.formats.load import load_task_model
    from multimae_cli.plugin.factory import build_task_model
    from multimae_cli.plugin.registry import get_registry

    config = ModelConfig(inputs=("rgb", "depth"), outputs=(), image_size=(32, 48), patch_size=8, dim=32, depth=4,
                         num_heads=2, num_encoded_tokens=4)
    for task, head, outputs, options, shape in (
            ("depth", "dpt", 1, {"feature_dim": 16, "layer_dims": [8, 16, 16, 32]}, (2, 1, 32, 48)),
            ("classification", "linear", 3, {}, (2, 3))):
        torch.manual_seed(0)
        model = build_task_model(create_model(config), get_registry().task(task), head, outputs, options)
        model.task_info = {"task": task, "head": head, "head_options": options, "num_outputs": outputs,
                           "classes": None, "depth_scale": 1.0, "reduce_zero_label": False}
        save_model(model, tmp_path / f"{task}.safetensors")
        out = tmp_path / f"{task}.onnx"
        summary = export_model(tmp_path / f"{task}.safetensors", "onnx", out, batch_size=2)
        assert summary["inputs"] == ["rgb", "depth"] and summary["outputs"] == [task]
        images = {"rgb": torch.randn(2, 3, 32, 48), "depth": torch.randn(2, 1, 32, 48)}
        session = onnxruntime.InferenceSession(str(out), providers=["CPUExecutionProvider"])
        (found,) = session.run([f"{task}_pred"], {name: value.numpy() for name, value in images.items()})
        with torch.no_grad():
            expected = load_task_model(tmp_path / f"{task}.safetensors").eval()(images)
        assert tuple(expected.shape) == shape
        torch.testing.assert_close(torch.from_numpy(found), expected, atol=1e-4, rtol=0)
    with pytest.raises(ConfigError, match="takes the inputs it was trained on"):
        export_model(tmp_path / "depth.safetensors", "onnx", tmp_path / "x.onnx", inputs=["rgb"])


def test_native_and_official_exports_of_a_fine_tuned_checkpoint(tmp_path, tiny_pth):
    """native keeps the head (it used to be dropped silently); official and timm write the encoder and say so
    (official used to fail: the decoder settings of an encoder without decoders cannot be read back)."""
    from multimae_cli.cli.info import checkpoint_info
    from multimae_cli.formats.load import load_task_model
    from multimae_cli.plugin.factory import build_task_model
    from multimae_cli.plugin.registry import get_registry

    options = {"feature_dim": 16, "layer_dims": [8, 16, 16, 32]}
    model = build_task_model(load_model(tiny_pth, outputs=()), get_registry().task("depth"), "dpt", 1, options)
    model.task_info = {"task": "depth", "head": "dpt", "head_options": options, "num_outputs": 1, "classes": None,
                       "depth_scale": 1.0, "reduce_zero_label": False}
    save_model(model, tmp_path / "tuned.safetensors")
    summary = export_model(tmp_path / "tuned.safetensors", "native", tmp_path / "copy.safetensors")
    assert summary["task"] == "depth"
    copy = load_task_model(tmp_path / "copy.safetensors")
    assert copy.task_info == model.task_info
    assert all(torch.equal(copy.state_dict()[key], value) for key, value in model.state_dict().items())
    info = checkpoint_info(tmp_path / "copy.safetensors")
    assert info["task"]["head"] == "dpt" and info["head_elements"] == sum(
        p.numel() for p in model.head.parameters())
    official = export_model(tmp_path / "tuned.safetensors", "official", tmp_path / "encoder.pth")
    assert "encoder only" in official["note"]
    encoder = load_model(tmp_path / "encoder.pth")
    assert encoder.config.outputs == () and torch.equal(
        encoder.state_dict()["encoder.0.attn.qkv.weight"], model.backbone.state_dict()["encoder.0.attn.qkv.weight"])


def test_failed_export_keeps_the_old_file_and_leaves_no_temporary(tmp_path, tiny_pth):
    pytest.importorskip("onnxruntime")
    out = tmp_path / "model.onnx"
    out.write_bytes(b"previous export")
    with pytest.raises(MultiMAEError, match="differs from torch"):
        export_model(tiny_pth, "onnx", out, inputs=["rgb"], outputs=["depth"], overwrite=True, tolerance=-1.0)
    assert out.read_bytes() == b"previous export"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.onnx"]


def test_export_and_import_errors(tmp_path, tiny_pth):
    with pytest.raises(ConfigError, match="unknown format"):
        export_model(tiny_pth, "tflite", tmp_path / "x")
    with pytest.raises(InputError, match="does not exist"):
        export_model(tiny_pth, "native", tmp_path / "missing" / "x.safetensors")
    (tmp_path / "taken.pth").write_bytes(b"x")
    with pytest.raises(InputError, match="already exists"):
        export_model(tiny_pth, "official", tmp_path / "taken.pth")
    with pytest.raises(CheckpointError, match="not timm weights"):
        import_model("timm", tiny_pth, tmp_path / "y.safetensors")
    depth_only = create_model(ModelConfig(inputs=("depth",), outputs=(), image_size=32, patch_size=16, dim=32,
                                          depth=1, num_heads=2, num_encoded_tokens=2))
    save_model(depth_only, tmp_path / "depth.safetensors")
    with pytest.raises(ConfigError, match="no rgb input"):
        export_model(tmp_path / "depth.safetensors", "timm", tmp_path / "vit.pth")
    assert not (tmp_path / "vit.pth").exists()


def test_missing_onnx_extra_is_one_line(tmp_path, tiny_pth):
    fake = tmp_path / "fake"
    (fake / "onnxruntime").mkdir(parents=True)
    (fake / "onnxruntime" / "__init__.py").write_text("raise ImportError('not installed')\n")
    result = run_cli("export", str(tiny_pth), "--format", "onnx", "--out", str(tmp_path / "m.onnx"),
                     env={"PYTHONPATH": str(fake)})
    assert result.returncode == 2
    assert result.stderr.strip() == "error: --format onnx needs the optional ONNX extra: pip install 'multimae[onnx]'"


def test_export_cli_json(tmp_path, tiny_pth):
    result = run_cli("export", str(tiny_pth), "--format", "native", "--out", str(tmp_path / "n.safetensors"),
                     "--json")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["format"] == "native"
    assert (tmp_path / "n.safetensors").stat().st_mode & 0o044  # readable by others, as files usually are


def test_export_of_a_run_brings_its_model_card_along(tmp_path):
    """The run's README.md goes next to the exported file with a section on that file; one already there stays."""
    from test_pretrain import tiny

    from multimae_cli.formats.export import export_model
    from multimae_cli.train.pretrain import pretrain

    pretrain(tiny(tmp_path, name="carded", steps=2), quiet=True)
    run = tmp_path / "runs" / "carded"
    (tmp_path / "hub").mkdir()
    summary = export_model(run / "last" / "model.safetensors", "timm", tmp_path / "hub" / "vit.safetensors")
    card = (tmp_path / "hub" / "README.md").read_text()
    assert summary["model_card"] == str(tmp_path / "hub" / "README.md")
    assert card.startswith((run / "README.md").read_text().rstrip()) and "## This export" in card
    assert "`vit.safetensors`: the timm format" in card and "Load it with: `timm.models." in card
    again = export_model(run, "native", tmp_path / "hub" / "model.safetensors")
    assert again["model_card"].startswith("not copied: ") and (tmp_path / "hub" / "README.md").read_text() == card
    (tmp_path / "bare").mkdir()
    loose = tmp_path / "bare" / "in.safetensors"  # a checkpoint outside any run folder has no card to bring
    loose.write_bytes((run / "last" / "model.safetensors").read_bytes())
    assert "model_card" not in export_model(loose, "native", tmp_path / "bare" / "out.safetensors")
    assert not (tmp_path / "bare" / "README.md").exists()
