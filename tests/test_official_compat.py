"""The official-compat fixture through the public API: outputs, tokens and losses within 1e-5 (fp32, CPU)."""

from __future__ import annotations

import argparse

import pytest
import torch
from conftest import fixture_inputs, fixture_masks
from torch.testing import assert_close

from multimae_cli import create_objective, load_model, save_model

TOL = {"atol": 1e-5, "rtol": 1e-5}
OUTPUTS = ("rgb", "depth", "semseg", "norm_rgb")


def test_config_inferred_from_keys(tiny_model):
    config = tiny_model.config
    assert config.inputs == ("rgb", "depth", "semseg")
    assert config.outputs == OUTPUTS
    assert (config.dim, config.depth, config.num_heads, config.decoder_dim, config.decoder_depth) == (96, 2, 3, 64, 1)
    assert config.decoder_num_heads == 2 and config.image_size == (64, 64) and config.channels["semseg"] == 133


def test_masked_forward_predictions(tiny_model, tiny_io):
    with torch.no_grad():
        preds, masks = tiny_model(fixture_inputs(tiny_io), task_masks=fixture_masks(tiny_io))
    assert list(preds) == list(OUTPUTS)
    for name in OUTPUTS:
        assert_close(preds[name], tiny_io[f"pretrain.pred.{name}"], **TOL)
    for name, mask in fixture_masks(tiny_io).items():
        assert torch.equal(masks[name], mask)


def test_masked_encoder_tokens_in_visible_order(tiny_model, tiny_io):
    with torch.no_grad():
        encoded = tiny_model.encode(fixture_inputs(tiny_io), task_masks=fixture_masks(tiny_io))
    assert torch.equal(encoded.ids_keep, tiny_io["pretrain.visible_index"])
    assert_close(encoded.tokens, tiny_io["pretrain.encoder_tokens"], **TOL)


@pytest.mark.parametrize("size", [64, 96])
def test_forward_features(tiny_model, tiny_io, size):
    with torch.no_grad():
        tokens = tiny_model.forward_features(fixture_inputs(tiny_io, size))
    expected = tiny_io["multivit.encoder_tokens" if size == 64 else "multivit96.encoder_tokens"]
    assert_close(tokens, expected, **TOL)


def test_all_visible_masked_forward_equals_multivit(tiny_model, tiny_io):
    with torch.no_grad():
        encoded = tiny_model.encode(fixture_inputs(tiny_io), mask_inputs=False)
    assert_close(encoded.tokens, tiny_io["multivit.encoder_tokens"], **TOL)


@pytest.mark.parametrize("reduction", ["masked", "unmasked"])
def test_losses(tiny_model, tiny_io, reduction):
    inputs = fixture_inputs(tiny_io)
    objective = create_objective(tiny_model.config)
    with torch.no_grad():
        preds, masks = tiny_model(inputs, task_masks=fixture_masks(tiny_io))
        total, losses = objective(preds, inputs, masks if reduction == "masked" else None)
    for name in OUTPUTS:
        assert_close(losses[name], tiny_io[f"loss.{reduction}.{name}"], **TOL)
    assert_close(total, tiny_io[f"loss.{reduction}.total"], **TOL)


def test_fully_visible_sample_gives_finite_gradients(tiny_model, tiny_io):
    """Sample 1 has depth fully visible: its depth loss is 0/0 officially; ours must not poison gradients."""
    inputs = fixture_inputs(tiny_io)
    objective = create_objective(tiny_model.config)
    preds, masks = tiny_model.train()(inputs, task_masks=fixture_masks(tiny_io))
    total, _ = objective(preds, inputs, masks)
    total.backward()
    grads = [p.grad for p in tiny_model.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)


def test_generated_positions_equal_official(tiny_pth):
    from multimae_cli import create_model

    stored = torch.load(tiny_pth, weights_only=True)["model"]
    fresh = create_model(load_model(tiny_pth).config).state_dict()
    for key in stored:
        if key.endswith("pos_emb"):
            assert_close(fresh[key], stored[key], atol=1e-6, rtol=0)


def test_official_native_official_bit_exact(tmp_path, tiny_pth, tiny_io):
    original = torch.load(tiny_pth, weights_only=True)["model"]
    native = tmp_path / "tiny.safetensors"
    save_model(load_model(tiny_pth), native)
    reloaded = load_model(native)
    assert reloaded.config == load_model(tiny_pth).config
    state = reloaded.state_dict()
    assert set(state) == set(original)
    for key, value in original.items():
        assert torch.equal(state[key], value), key
    with torch.no_grad():
        preds, _ = reloaded.eval()(fixture_inputs(tiny_io), task_masks=fixture_masks(tiny_io))
    assert_close(preds["depth"], tiny_io["pretrain.pred.depth"], **TOL)


def test_wrapped_variants_load(tmp_path, tiny_pth, tiny_io):
    """DDP `module.` prefixes, an argparse.Namespace `args`, a plain safetensors copy, no norm_rgb."""
    from safetensors.torch import save_file

    state = torch.load(tiny_pth, weights_only=True)["model"]
    ddp = tmp_path / "ddp.pth"
    args = argparse.Namespace(num_heads=3, decoder_num_heads=2, model="pretrain_multimae_tiny")
    torch.save({"model": {f"module.{k}": v for k, v in state.items()}, "args": args, "epoch": 3}, ddp)
    plain = tmp_path / "plain.safetensors"
    save_file(state, str(plain))
    no_norm_rgb = tmp_path / "no_norm_rgb.pth"
    torch.save({"model": {k: v for k, v in state.items() if ".norm_rgb." not in k}}, no_norm_rgb)

    inputs, masks = fixture_inputs(tiny_io), fixture_masks(tiny_io)
    for path, heads in ((ddp, {}), (plain, {"num_heads": 3, "decoder_num_heads": 2}),
                        (no_norm_rgb, {"num_heads": 3, "decoder_num_heads": 2})):
        model = load_model(path, **heads).eval()
        with torch.no_grad():
            preds, _ = model(inputs, task_masks=masks)
        assert_close(preds["semseg"], tiny_io["pretrain.pred.semseg"], **TOL)
    assert "norm_rgb" not in load_model(no_norm_rgb, num_heads=3, decoder_num_heads=2).output_adapters


def test_encoder_only_subset(tiny_pth, tiny_io):
    model = load_model(tiny_pth, inputs=("rgb", "semseg"), outputs=()).eval()
    assert not model.output_adapters and list(model.input_adapters) == ["rgb", "semseg"]
    with torch.no_grad():
        tokens = model.forward_features(fixture_inputs(tiny_io, 96))
    assert_close(tokens, tiny_io["multivit96.encoder_tokens"], **TOL)


def test_other_resolution_resamples_positions(tiny_pth, tiny_io):
    """Loading at 96 px resamples the stored 4x4 grids bicubically; rgb tokens then equal the runtime resize."""
    at96 = load_model(tiny_pth, image_size=96, inputs=("rgb", "semseg"), outputs=()).eval()
    assert at96.input_adapters["rgb"].pos_emb.shape[-2:] == (6, 6)
    with torch.no_grad():
        tokens = at96.forward_features({"rgb": tiny_io["in96.rgb"]})
        reference = load_model(tiny_pth).eval().forward_features({"rgb": tiny_io["in96.rgb"]})
    assert_close(tokens, reference, **TOL)
