"""Fine-tuning heads on a real (tiny) encoder: shapes, token selection, DPT hooks, official names and sizes."""

from __future__ import annotations

import pytest
import torch
from torch.testing import assert_close

from multimae_cli import ModelConfig, create_model
from multimae_cli.errors import InputError
from multimae_cli.model.heads import ConvNeXtHead, DPTHead, LinearHead, default_hooks

SIZE = (32, 48)  # non-square: a 2 x 3 token grid at 16 px patches (odd width)


def tiny_encoder(patch_size: int = 16, depth: int = 4):
    torch.manual_seed(0)
    config = ModelConfig(inputs=("rgb", "depth"), outputs=(), image_size=SIZE, patch_size=patch_size, dim=32,
                         depth=depth, num_heads=2, num_encoded_tokens=4)
    return create_model(config).eval()


def encode(model, size=SIZE, modalities=("rgb", "depth"), all_layers=False):
    gen = torch.Generator().manual_seed(1)
    channels = {"rgb": 3, "depth": 1}
    inputs = {m: torch.randn(2, channels[m], *size, generator=gen) for m in modalities}
    _, layout = model.tokenize(inputs)
    return model.forward_features(inputs, return_all_layers=all_layers), layout


def tiny_dpt(**kwargs) -> DPTHead:
    kwargs.setdefault("main_modalities", ("rgb",))
    return DPTHead(32, kwargs.pop("num_outputs", 1), layer_dims=(8, 16, 24, 32), feature_dim=16, **kwargs)


def tiny_convnext(**kwargs) -> ConvNeXtHead:
    kwargs.setdefault("main_modalities", ("rgb",))
    return ConvNeXtHead(32, kwargs.pop("num_classes", 5), embed_dim=64, depth=2, **kwargs)


@pytest.fixture(scope="module")
def encoder():
    return tiny_encoder()


# ---------------------------------------------------------------- shapes and token selection


def test_shapes_on_a_non_square_multimodal_encoder(encoder):
    tokens, layout = encode(encoder)
    layers, _ = encode(encoder, all_layers=True)
    assert layout.modalities == ("rgb", "depth") and layout.grid == (2, 3)
    assert [LinearHead.needs_all_layers, ConvNeXtHead.needs_all_layers, DPTHead.needs_all_layers] == [
        False, False, True]
    assert LinearHead(32, 10)(tokens, layout, SIZE).shape == (2, 10)
    assert tiny_convnext()(tokens, layout, SIZE).shape == (2, 5, *SIZE)
    assert tiny_convnext(main_modalities=("rgb", "depth"))(tokens, layout, SIZE).shape == (2, 5, *SIZE)
    assert tiny_dpt(num_outputs=3)(layers, layout, SIZE).shape == (2, 3, *SIZE)
    assert tiny_dpt(num_outputs=4, head_type="semseg")(layers, layout, SIZE).shape == (2, 4, *SIZE)


def test_dpt_other_patch_sizes_and_grids_reach_image_size():
    model = tiny_encoder(patch_size=8)  # fused map at 16x the grid = 2x the image: resized down
    layers, layout = encode(model, size=(40, 24), all_layers=True)  # 5 x 3 grid
    assert tiny_dpt()(layers, layout, (40, 24)).shape == (2, 1, 40, 24)


def test_heads_read_only_their_modalities(encoder):
    tokens, layout = encode(encoder)
    layers, _ = encode(encoder, all_layers=True)
    start, end = layout.span("depth")

    def poke(x: torch.Tensor, where: slice) -> torch.Tensor:
        x = x.clone()
        x[:, where] += torch.linspace(-1, 1, x.shape[-1])  # not a constant: LayerNorm would remove that
        return x

    depth_tokens, global_token = slice(start, end), slice(layout.num_tokens, None)
    linear, convnext, dpt = LinearHead(32, 4), tiny_convnext(), tiny_dpt()
    for where in (depth_tokens, global_token):  # rgb heads ignore depth tokens and global tokens
        assert_close(convnext(poke(tokens, where), layout, SIZE), convnext(tokens, layout, SIZE))
        assert_close(dpt([poke(x, where) for x in layers], layout, SIZE), dpt(layers, layout, SIZE))
        # the linear head pools everything, the global token included (official mean pooling)
        assert not torch.allclose(linear(poke(tokens, where), layout, SIZE), linear(tokens, layout, SIZE))
    depth_head = tiny_convnext(main_modalities=("depth",))
    rgb_only, rgb_layout = encode(encoder, modalities=("rgb",))
    with pytest.raises(InputError, match=r"'depth'.*'rgb'"):
        depth_head(rgb_only, rgb_layout, SIZE)


def test_linear_head_is_mean_norm_linear(encoder):
    tokens, layout = encode(encoder)
    head = LinearHead(32, 7)
    assert set(head.state_dict()) == {"norm.weight", "norm.bias", "head.weight", "head.bias"}
    assert head.norm.eps == 1e-6 and torch.count_nonzero(head.head.bias) == 0
    expected = torch.nn.functional.layer_norm(tokens.mean(1), (32,), eps=1e-6) @ head.head.weight.T
    assert_close(head(tokens, layout, SIZE), expected)


def test_convnext_sub_patch_layout():
    """Each projected token vector is (sub-position, channel), sub-positions a row-major 4 x 4 grid (spec 1.7.3)."""
    model = tiny_encoder()
    tokens, layout = encode(model, modalities=("rgb",))
    # 4 channels per sub-pixel
    head = ConvNeXtHead(32, 4, embed_dim=64, preds_per_patch=16, depth=0, main_modalities=("rgb",))
    with torch.no_grad():
        head.final_layer.weight.copy_(torch.eye(4)[:, :, None, None])
        head.final_layer.bias.zero_()
    projected = head.proj_dec(tokens[:, : layout.num_tokens])  # (B, 6, 64)
    out = head(tokens, layout, (8, 12))  # the map's own size: no resampling
    gh, gw = layout.grid
    for gy in range(gh):
        for gx in range(gw):
            for py in range(4):
                for px in range(4):
                    p = py * 4 + px
                    assert_close(out[:, :, gy * 4 + py, gx * 4 + px], projected[:, gy * gw + gx, 4 * p: 4 * p + 4])


def test_bad_inputs_raise(encoder):
    tokens, layout = encode(encoder)
    layers, _ = encode(encoder, all_layers=True)
    with pytest.raises(InputError, match="unmasked"):
        LinearHead(32, 3)(tokens[:, :5], layout, SIZE)
    with pytest.raises(InputError, match="return_all_layers"):
        tiny_dpt()(tokens, layout, SIZE)
    with pytest.raises(InputError, match="do not fit an encoder of 4 layers"):
        tiny_dpt(hooks=[2, 5, 8, 11])(layers, layout, SIZE)
    with pytest.raises(ValueError, match="preds_per_patch"):
        ConvNeXtHead(32, 3, embed_dim=60, preds_per_patch=8, main_modalities=("rgb",))


# ---------------------------------------------------------------- DPT hooks


def test_default_hooks_for_any_depth():
    assert default_hooks(12) == [2, 5, 8, 11]  # official
    assert default_hooks(24) == [5, 11, 17, 23]
    assert default_hooks(4) == [0, 1, 2, 3]
    assert default_hooks(2) == [0, 0, 1, 1]


@pytest.mark.parametrize("depth", [4, 12, 24])
def test_dpt_default_hooks_follow_the_encoder(depth):
    torch.manual_seed(0)
    layers = [torch.randn(1, 6 + 1, 32) for _ in range(depth)]
    _, layout = encode(tiny_encoder(), modalities=("rgb",))
    auto = tiny_dpt()
    explicit = tiny_dpt(hooks=default_hooks(depth))
    explicit.load_state_dict(auto.state_dict())
    out = auto(layers, layout, SIZE)
    assert_close(out, explicit(layers, layout, SIZE))
    unused = [i for i in range(depth) if i not in default_hooks(depth)]
    if unused:  # layers off the hooks do not matter
        changed = [x + 1 if i in unused else x for i, x in enumerate(layers)]
        assert_close(auto(changed, layout, SIZE), out)


# ---------------------------------------------------------------- gradients


def test_gradients_reach_every_head_parameter_and_the_encoder():
    model = tiny_encoder()
    for head, all_layers in ((LinearHead(32, 3), False), (tiny_convnext(), False), (tiny_dpt(), True)):
        model.zero_grad()
        features, layout = encode(model, all_layers=all_layers)
        head(features, layout, SIZE).square().mean().backward()
        for name, p in head.named_parameters():  # DDP needs a gradient for every parameter
            assert p.grad is not None and p.grad.abs().sum() > 0, f"{type(head).__name__}.{name}"
        assert model.encoder[0].attn.qkv.weight.grad.abs().sum() > 0


# ---------------------------------------------------------------- official names and sizes


def test_official_convnext_names_and_size():
    with torch.device("meta"):
        head = ConvNeXtHead(768, 40, main_modalities=("rgb",))
    shapes = {k: tuple(v.shape) for k, v in head.state_dict().items()}
    assert shapes["proj_dec.weight"] == (6144, 768)
    assert shapes["blocks.3.dwconv.weight"] == (384, 1, 7, 7)
    assert shapes["blocks.0.norm.weight"] == (384,)
    assert shapes["blocks.0.pwconv1.weight"] == (1536, 384) and shapes["blocks.0.pwconv2.weight"] == (384, 1536)
    assert shapes["final_layer.weight"] == (40, 384, 1, 1)
    assert "blocks.0.gamma" not in shapes and "blocks.4.dwconv.weight" not in shapes
    assert sum(p.numel() for p in head.parameters()) == 9_546_280  # spec 1.7.3, verified officially


def test_official_dpt_names_aliases_and_size():
    with torch.device("meta"):
        head = DPTHead(768, 1, main_modalities=("rgb",))
    shapes = {k: tuple(v.shape) for k, v in head.state_dict().items()}
    assert shapes["act_postprocess.0.1.weight"] == (96, 96, 4, 4)  # ConvTranspose x4
    assert shapes["act_postprocess.1.1.weight"] == (192, 192, 2, 2)
    assert shapes["act_postprocess.3.1.weight"] == (768, 768, 3, 3)
    assert shapes["scratch.layer_rn.2.weight"] == (256, 384, 3, 3) and "scratch.layer_rn.2.bias" not in shapes
    assert shapes["scratch.refinenet3.resConfUnit1.conv1.weight"] == (256, 256, 3, 3)
    assert not any(k.startswith(head.UNUSED) for k in shapes)
    assert shapes["scratch.refinenet1.out_conv.weight"] == (256, 256, 1, 1)
    assert [shapes[f"head.{i}.weight"] for i in (0, 2, 4)] == [(128, 256, 3, 3), (32, 128, 3, 3), (1, 32, 1, 1)]
    # spec 1.7.4: 20,065,921 unique parameters, less the unused refinenet4.resConfUnit1 (2 x 3x3 256->256 + bias)
    assert sum(p.numel() for p in head.parameters()) == 20_065_921 - 2 * (256 * 256 * 9 + 256)
    official = head.official_state_dict()
    assert sum(v.numel() for k, v in official.items() if not k.startswith(tuple(head.ALIASES))) == 20_065_921
    assert official["scratch.refinenet4.resConfUnit1.conv2.bias"].shape == (256,)
    assert official["act_4_postprocess.1.weight"] is official["act_postprocess.3.1.weight"]
    assert official["scratch.layer1_rn.weight"] is official["scratch.layer_rn.0.weight"]


def test_dpt_loads_official_alias_keys():
    source, target = tiny_dpt(), tiny_dpt()
    official = source.official_state_dict(prefix="output_adapters.depth.")
    assert "output_adapters.depth.act_1_postprocess.0.weight" in official
    wrapper = torch.nn.ModuleDict({"depth": target})
    wrapper.load_state_dict({k.removeprefix("output_adapters."): v for k, v in official.items()})  # strict
    only_aliases = {k: v for k, v in source.official_state_dict().items()
                    if not k.startswith(("act_postprocess.", "scratch.layer_rn."))}
    fresh = tiny_dpt()
    fresh.load_state_dict(only_aliases)
    for key, value in source.state_dict().items():
        assert torch.equal(target.state_dict()[key], value) and torch.equal(fresh.state_dict()[key], value), key
