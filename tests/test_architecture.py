"""Architecture: official key sets, position embeddings on any grid, timm interop, model API."""

from __future__ import annotations

import pytest
import torch
from conftest import fixture_inputs
from torch.testing import assert_close

from multimae_cli import ModelConfig, create_model, create_objective
from multimae_cli.model.layers import sincos_pos_embed_2d


def read_key_listing(path):
    rows = {}
    for line in path.read_text().splitlines():
        if line.startswith("#") or not line.strip():
            continue
        key, shape, _dtype, *flag = line.split("\t")
        rows[key] = (tuple(int(s) for s in shape.strip("[]").split(",") if s.strip()), flag[0] if flag else None)
    return rows


def test_base_preset_builds_the_official_351_keys(fixture_dir):
    expected = read_key_listing(fixture_dir / "multivit_b_pretrain_keys.txt")
    assert len(expected) == 351
    with torch.device("meta"):
        model = create_model(ModelConfig())
    params = dict(model.named_parameters())
    state = model.state_dict()
    assert set(state) == set(expected)
    for key, (shape, flag) in expected.items():
        assert tuple(state[key].shape) == shape, key
        assert params[key].requires_grad == (flag == "trainable"), key
    assert sum(p.numel() for p in params.values()) == 98_569_360
    assert sum(p.numel() for p in params.values() if p.requires_grad) == 97_917_072


def test_tiny_fixture_keys(fixture_dir, tiny_model):
    expected = read_key_listing(fixture_dir / "tiny_keys.txt")
    state = tiny_model.state_dict()
    assert {k: tuple(v.shape) for k, v in state.items()} == {k: s for k, (s, _) in expected.items()}


def test_sincos_layout_square_and_non_square():
    emb = sincos_pos_embed_2d((3, 5), 16)
    assert emb.shape == (1, 16, 3, 5)
    omega = 1.0 / 10000 ** (torch.arange(4) / 4)
    for i in range(3):
        for j in range(5):
            row, col = i * omega, j * omega
            expected = torch.cat([row.sin(), row.cos(), col.sin(), col.cos()])
            assert_close(emb[0, :, i, j], expected)
    # on square grids the rows are encoded first: transposing the grid swaps the two halves
    square = sincos_pos_embed_2d((4, 4), 16)
    assert_close(square.transpose(-1, -2)[:, :8], square[:, 8:])


def test_non_square_images_and_global_token_last():
    torch.manual_seed(0)
    config = ModelConfig(inputs=("rgb", "depth"), outputs=("depth",), image_size=(32, 64), patch_size=16, dim=32,
                         depth=1, num_heads=2, decoder_dim=16, decoder_depth=1, decoder_num_heads=2,
                         num_encoded_tokens=6)
    model = create_model(config).eval()
    assert model.input_adapters["rgb"].pos_emb.shape[-2:] == (2, 4)
    rgb, depth = torch.randn(2, 3, 32, 64), torch.randn(2, 1, 32, 64)
    tokens = model.forward_features({"rgb": rgb, "depth": depth})
    assert tokens.shape == (2, 2 * 8 + 1, 32)
    rgb_only = model.forward_features({"rgb": rgb})
    assert rgb_only.shape == (2, 9, 32)
    preds, masks = model({"rgb": rgb, "depth": depth})
    assert preds["depth"].shape == (2, 1, 32, 64) and masks["rgb"].shape == (2, 8)
    # an image of another aspect: positions resampled at run time
    preds, _ = model({"rgb": torch.randn(1, 3, 48, 48)}, num_encoded_tokens=4)
    assert preds["depth"].shape == (1, 1, 48, 48)


def test_no_weight_decay_and_layer_groups(tiny_model):
    names = tiny_model.no_weight_decay()
    assert {"global_tokens", "input_adapters.rgb.pos_emb", "input_adapters.semseg.class_emb.weight",
            "output_adapters.depth.mask_token", "output_adapters.depth.task_embeddings.rgb"} <= names
    params = dict(tiny_model.named_parameters())
    assert names <= set(params)
    assert tiny_model.get_num_layers() == 2
    from timm.optim import param_groups_layer_decay

    groups = param_groups_layer_decay(tiny_model, weight_decay=0.05, no_weight_decay_list=names, layer_decay=0.75)
    scales = sorted({group["lr_scale"] for group in groups})
    assert len(scales) == 4  # stem, 2 blocks, decoders


def test_timm_export_matches_forward_features(tiny_model, tiny_io):
    """The rgb encoder as a timm ViT: same tokens (cls first) once timm's fresh final norm is bypassed."""
    from timm.models.vision_transformer import VisionTransformer

    from multimae_cli.formats.official import official_to_timm, timm_to_official

    state = official_to_timm(tiny_model.state_dict())
    vit = VisionTransformer(img_size=64, patch_size=16, embed_dim=96, depth=2, num_heads=3, num_classes=0).eval()
    missing, unexpected = vit.load_state_dict(state, strict=False)
    assert set(missing) == {"norm.weight", "norm.bias"} and not unexpected
    vit.norm = torch.nn.Identity()
    rgb = tiny_io["in.rgb"]
    with torch.no_grad():
        ours = tiny_model.forward_features({"rgb": rgb})
        theirs = vit.forward_features(rgb)
    assert_close(theirs[:, 1:], ours[:, :-1], atol=1e-5, rtol=1e-5)
    assert_close(theirs[:, :1], ours[:, -1:], atol=1e-5, rtol=1e-5)
    back = timm_to_official(state)
    for key, value in back.items():
        assert torch.equal(value, tiny_model.state_dict()[key]), key


def test_forward_intermediates_follow_timm(tiny_model, tiny_io):
    """timm's API and meaning: all blocks by default, the last n for an int, chosen ones for a list; the final
    tokens are forward_features'; stop_early gives the same intermediates; timm's ViT agrees block by block."""
    from timm.models.vision_transformer import VisionTransformer

    from multimae_cli.formats.official import official_to_timm

    inputs = {"rgb": tiny_io["in.rgb"]}
    with torch.no_grad():
        final, every = tiny_model.forward_intermediates(inputs)
        assert len(every) == len(tiny_model.encoder) == 2
        assert_close(final, tiny_model.forward_features(inputs))
        assert_close(every[-1], final)
        (last,) = tiny_model.forward_intermediates(inputs, indices=1, intermediates_only=True)
        (first,) = tiny_model.forward_intermediates(inputs, indices=[0], stop_early=True, intermediates_only=True)
        assert_close(last, final) and assert_close(first, every[0])
        vit = VisionTransformer(img_size=64, patch_size=16, embed_dim=96, depth=2, num_heads=3, num_classes=0)
        vit.load_state_dict(official_to_timm(tiny_model.state_dict()), strict=False)
        theirs = vit.eval().forward_intermediates(inputs["rgb"], output_fmt="NLC", intermediates_only=True)
    for ours, timm_tokens in zip(every, theirs, strict=True):
        assert_close(timm_tokens, ours[:, :-1], atol=1e-5, rtol=1e-5)  # timm drops the prefix (global) token


@pytest.mark.parametrize("preset", ["tiny", "small"])
def test_presets_train_one_step(preset):
    torch.manual_seed(0)
    config = ModelConfig.from_preset(preset, image_size=32, depth=1, num_encoded_tokens=6)
    model = create_model(config)
    inputs = {"rgb": torch.randn(2, 3, 32, 32), "depth": torch.randn(2, 1, 32, 32),
              "semseg": torch.randint(0, 133, (2, 8, 8))}
    preds, masks = model(inputs)
    total, losses = create_objective(config)(preds, inputs, masks)
    total.backward()
    assert set(losses) == {"rgb", "depth", "semseg", "norm_rgb"} and torch.isfinite(total)
    assert model.encoder[0].attn.qkv.weight.grad is not None


def test_drop_path_is_stochastic_only_in_training(tiny_pth, tiny_io):
    from multimae_cli import load_model

    model = load_model(tiny_pth, drop_path_rate=0.5)  # block 1 drops its branches with probability 0.5
    with torch.no_grad():
        a = model.eval().forward_features(fixture_inputs(tiny_io))
        b = model.eval().forward_features(fixture_inputs(tiny_io))
        torch.manual_seed(0)
        trained = [model.train().forward_features(fixture_inputs(tiny_io)) for _ in range(4)]
    assert torch.equal(a, b)
    assert any(not torch.allclose(t, a) for t in trained)


@pytest.mark.parametrize("all_layers", [False, True])  # the pretraining encoder; the DPT heads' per-layer path
def test_activation_checkpointing_gives_the_same_gradients(all_layers):
    config = ModelConfig.from_preset("tiny", image_size=32, depth=3, num_encoded_tokens=6, drop_path_rate=0.3)
    inputs = {"rgb": torch.randn(2, 3, 32, 32), "depth": torch.randn(2, 1, 32, 32),
              "semseg": torch.randint(0, 133, (2, 8, 8))}
    grads = []
    for recompute in (False, True):
        torch.manual_seed(0)
        model = create_model(config).train()  # drop path on: recomputation must replay the same random draws
        model.set_grad_checkpointing(recompute)
        if all_layers:
            loss = sum(layer.square().mean() for layer in model.encode_unmasked(inputs, return_all_layers=True)[0])
        else:
            preds, masks = model(inputs)
            loss = create_objective(config)(preds, inputs, masks)[0]
        loss.backward()
        grads.append({name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None})
    assert grads[0].keys() == grads[1].keys() and len(grads[0]) > 10
    for name, grad in grads[0].items():
        assert_close(grads[1][name], grad, rtol=1e-5, atol=1e-7, msg=name)


def test_patch_projection_as_matrix_product_equals_the_official_convolution():
    """Input adapters apply the stored Conv2d kernel as one matrix product on flattened patches: the same tokens
    and the same kernel gradients as the strided convolution, on a non-square image and at a 1/4 stride."""
    from multimae_cli.model.adapters import ClassEmbeddingInputAdapter, PatchInputAdapter
    from multimae_cli.model.layers import grid_tokens

    torch.manual_seed(0)
    image = PatchInputAdapter("rgb", 3, 32, 8, (32, 48))
    labels = ClassEmbeddingInputAdapter("semseg", 7, 32, 8, (32, 48), stride=4, dim_class_emb=6)
    cases = [(image, torch.randn(2, 3, 32, 48), lambda a, x: x),
             (labels, torch.randint(0, 7, (2, 8, 12)), lambda a, x: a.class_emb(x).permute(0, 3, 1, 2))]
    for adapter, data, features in cases:
        ours = adapter(data)
        ours.square().sum().backward()
        grad = adapter.proj.weight.grad.clone()
        adapter.zero_grad()
        conv = adapter.proj(features(adapter, data))
        official = conv.flatten(2).transpose(1, 2) + grid_tokens(adapter.pos_emb, tuple(conv.shape[-2:]),
                                                                    adapter.pos_interpolation)
        official.square().sum().backward()
        assert ours.shape == (2, 4 * 6, 32)
        assert_close(ours, official, atol=1e-5, rtol=1e-5)
        assert_close(grad, adapter.proj.weight.grad, atol=1e-4, rtol=1e-4)
