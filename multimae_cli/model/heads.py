"""Fine-tuning heads on the MultiViT encoder: linear (classification, dense probes), ConvNeXt-style and DPT.

Every head is called as `head(tokens_or_layers, layout, image_size)`: the unmasked encoder output of
`MultiMAE.forward_features` (patch tokens of each modality in input order, global tokens last), its
`TokenLayout` and the input image size (H, W). `needs_all_layers` says whether the head wants the list of every
block's output (`forward_features(..., return_all_layers=True)`) instead of the last one. The encoder has no
final norm, so the heads read raw block outputs, as officially.

Parameter names follow the official output adapters (`norm`/`head`; `proj_dec`/`blocks`/`final_layer`;
`act_postprocess`/`scratch.*`/`head`), so official fine-tuned weights load one to one.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar, Literal

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import InputError
from .layers import TokenLayout


def _check_tokens(tokens: torch.Tensor, layout: TokenLayout) -> None:
    expected = layout.num_tokens + layout.num_global_tokens
    if tokens.ndim != 3 or tokens.shape[1] != expected:
        raise InputError(f"expected encoder tokens (B, {expected}, D) for {len(layout.modalities)} modalities x "
                         f"{layout.tokens_per_modality} tokens + {layout.num_global_tokens} global, "
                         f"got shape {tuple(tokens.shape)} (heads need the unmasked encoder output)")


def _modality_maps(tokens: torch.Tensor, layout: TokenLayout, modalities: Sequence[str]) -> torch.Tensor:
    """The patch tokens of `modalities` (global tokens dropped), concatenated on channels: (B, n*D, gh, gw)."""
    _check_tokens(tokens, layout)
    missing = [m for m in modalities if m not in layout.modalities]
    if missing:
        raise InputError(f"head reads {', '.join(map(repr, missing))} but the inputs are "
                         f"{', '.join(map(repr, layout.modalities))}")
    x = torch.cat([tokens[:, slice(*layout.span(m))] for m in modalities], dim=-1)
    return x.transpose(1, 2).unflatten(2, layout.grid)


def _xavier_linears(module: nn.Module) -> None:
    """The init the official heads end up with: MultiMAE's global init makes every Linear xavier (spec 1.5)."""
    for m in module.modules():
        if isinstance(m, nn.Linear):
            nn.init.xavier_uniform_(m.weight)
            nn.init.zeros_(m.bias)


def default_hooks(depth: int) -> list[int]:
    """Four encoder layers evenly spaced and ending at the last one: [2, 5, 8, 11] for depth 12 (official)."""
    return [-(-(i + 1) * depth // 4) - 1 for i in range(4)]


# ---------------------------------------------------------------- classification


class LinearHead(nn.Module):
    """Mean over all tokens (global tokens included), LayerNorm, Linear: the official LinearOutputAdapter."""

    needs_all_layers: ClassVar[bool] = False

    def __init__(self, dim: int, num_classes: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.head = nn.Linear(dim, num_classes)
        _xavier_linears(self)  # official `init_scale` is overwritten by this init (spec 1.5)

    def forward(self, tokens: torch.Tensor, layout: TokenLayout, image_size: tuple[int, int]) -> torch.Tensor:
        _check_tokens(tokens, layout)
        return self.head(self.norm(tokens.mean(dim=1)))


class DenseLinearHead(nn.Module):
    """A linear probe for dense tasks: each patch token of `main_modalities` (concatenated on channels and
    LayerNorm-ed without affine parameters, as MAE's probe normalises features) is mapped by one Linear to its
    patch's pixels, `patch_size**2 x num_outputs` values, laid out by pixel shuffle. Nothing but that Linear
    learns, so the score measures what the frozen features hold."""

    needs_all_layers: ClassVar[bool] = False

    def __init__(self, dim: int, num_outputs: int, patch_size: int, *,
                 main_modalities: Sequence[str]) -> None:
        super().__init__()
        self.main_modalities = tuple(main_modalities)
        self.patch_size = patch_size
        self.norm = nn.LayerNorm(dim * len(self.main_modalities), elementwise_affine=False)
        self.head = nn.Linear(dim * len(self.main_modalities), num_outputs * patch_size**2)
        _xavier_linears(self)

    def forward(self, tokens: torch.Tensor, layout: TokenLayout, image_size: tuple[int, int]) -> torch.Tensor:
        x = _modality_maps(tokens, layout, self.main_modalities).permute(0, 2, 3, 1)  # (B, gh, gw, n*D)
        x = self.head(self.norm(x)).permute(0, 3, 1, 2)  # (B, C*p*p, gh, gw)
        x = F.pixel_shuffle(x, self.patch_size)
        if tuple(x.shape[-2:]) != tuple(image_size):
            x = F.interpolate(x, size=tuple(image_size), mode="bilinear", align_corners=False)
        return x


# ---------------------------------------------------------------- ConvNeXt (semantic segmentation)


class ConvNeXtBlock(nn.Module):
    """ConvNeXt block without layer scale or drop path (as the official head uses it); official names."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.dwconv = nn.Conv2d(dim, dim, kernel_size=7, padding=3, groups=dim)
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.pwconv1 = nn.Linear(dim, 4 * dim)
        self.act = nn.GELU()
        self.pwconv2 = nn.Linear(4 * dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.dwconv(x).permute(0, 2, 3, 1)
        y = self.pwconv2(self.act(self.pwconv1(self.norm(y))))
        return x + y.permute(0, 3, 1, 2)


class ConvNeXtHead(nn.Module):
    """The official semantic-segmentation head: logits (B, num_classes, H, W) at image resolution.

    The patch tokens of `main_modalities` (concatenated on channels) are projected to `embed_dim` and each
    token's vector is read as `preds_per_patch` sub-pixels (sub-position major, a row-major sqrt(p) x sqrt(p)
    grid) of `embed_dim / preds_per_patch` channels: a map at patch_size / sqrt(p) stride (4 px for the
    official 16 / 16). ConvNeXt blocks and a 1x1 conv give logits there, resized to the image with
    `interpolate_mode` (align_corners=False), so the loss and metrics see full-resolution logits.
    """

    needs_all_layers: ClassVar[bool] = False

    def __init__(self, dim: int, num_classes: int, *, embed_dim: int = 6144, preds_per_patch: int = 16,
                 depth: int = 4, main_modalities: Sequence[str],
                 interpolate_mode: str = "bilinear") -> None:
        super().__init__()
        side = round(preds_per_patch**0.5)
        if side * side != preds_per_patch or embed_dim % preds_per_patch:
            raise ValueError(f"preds_per_patch={preds_per_patch} must be a square dividing embed_dim={embed_dim}")
        self.main_modalities = tuple(main_modalities)
        self.side = side
        self.interpolate_mode = interpolate_mode
        class_dim = embed_dim // preds_per_patch
        self.proj_dec = nn.Linear(dim * len(self.main_modalities), embed_dim)
        self.blocks = nn.Sequential(*[ConvNeXtBlock(class_dim) for _ in range(depth)])
        self.final_layer = nn.Conv2d(class_dim, num_classes, kernel_size=1)
        _xavier_linears(self)

    def forward(self, tokens: torch.Tensor, layout: TokenLayout, image_size: tuple[int, int]) -> torch.Tensor:
        x = _modality_maps(tokens, layout, self.main_modalities)  # (B, n*D, gh, gw)
        x = self.proj_dec(x.permute(0, 2, 3, 1))  # (B, gh, gw, p*c)
        s = self.side
        x = x.unflatten(-1, (s, s, -1)).permute(0, 5, 1, 3, 2, 4).flatten(4, 5).flatten(2, 3)
        x = self.final_layer(self.blocks(x))
        align = False if self.interpolate_mode in ("bilinear", "bicubic") else None
        return F.interpolate(x, size=tuple(image_size), mode=self.interpolate_mode, align_corners=align)


# ---------------------------------------------------------------- DPT (dense regression)


class ResidualConvUnit(nn.Module):
    """relu, conv3x3, [bn], relu, conv3x3, [bn], plus the input (DPT's, official names)."""

    def __init__(self, features: int, use_bn: bool) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(features, features, kernel_size=3, padding=1, bias=not use_bn)
        self.conv2 = nn.Conv2d(features, features, kernel_size=3, padding=1, bias=not use_bn)
        self.bn1 = nn.BatchNorm2d(features) if use_bn else nn.Identity()
        self.bn2 = nn.BatchNorm2d(features) if use_bn else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.bn1(self.conv1(F.relu(x)))
        return x + self.bn2(self.conv2(F.relu(y)))


class FeatureFusionBlock(nn.Module):
    """Add the refined skip, refine, upsample (bilinear, align_corners=True), 1x1 conv."""

    def __init__(self, features: int, use_bn: bool, skip: bool = True) -> None:
        super().__init__()
        if skip:
            self.resConfUnit1 = ResidualConvUnit(features, use_bn)
        self.resConfUnit2 = ResidualConvUnit(features, use_bn)
        self.out_conv = nn.Conv2d(features, features, kernel_size=1)

    def forward(self, x: torch.Tensor, skip: torch.Tensor | None = None,
                size: tuple[int, int] | None = None) -> torch.Tensor:
        """Upsample to `size` (the next skip's size) or x2: the same as the official x2 on even token grids,
        and still aligned on odd ones, where the stride-2 branch rounds up."""
        if skip is not None:
            x = x + self.resConfUnit1(skip)
        x = self.resConfUnit2(x)
        size = size or (2 * x.shape[-2], 2 * x.shape[-1])
        return self.out_conv(F.interpolate(x, size=size, mode="bilinear", align_corners=True))


class _Scratch(nn.Module):
    """Holder that gives the fusion layers their official `scratch.*` names."""

    def __init__(self, layer_dims: Sequence[int], features: int, use_bn: bool) -> None:
        super().__init__()
        self.layer_rn = nn.ModuleList(
            nn.Conv2d(d, features, kernel_size=3, padding=1, bias=False) for d in layer_dims
        )
        self.refinenet1 = FeatureFusionBlock(features, use_bn)
        self.refinenet2 = FeatureFusionBlock(features, use_bn)
        self.refinenet3 = FeatureFusionBlock(features, use_bn)
        self.refinenet4 = FeatureFusionBlock(features, use_bn, skip=False)  # the coarsest level has no skip


def _fold_dpt_aliases(module: DPTHead, state_dict: dict[str, torch.Tensor], prefix: str, *_) -> None:
    """Official checkpoints hold each DPT branch under two names: keep one (the values are the same), and
    drop the official refinenet4's skip unit, which never runs."""
    for key in [k for k in state_dict if k.startswith(prefix)]:
        rest = key[len(prefix):]
        if rest.startswith(module.UNUSED):
            del state_dict[key]
        for alias, name in module.ALIASES.items():
            if rest.startswith(alias):
                state_dict.setdefault(prefix + name + rest[len(alias):], state_dict.pop(key))


class DPTHead(nn.Module):
    """The official DPT output adapter: four encoder layers -> reassemble -> fuse -> (B, num_outputs, H, W).

    Each hooked layer's `main_modalities` tokens become a map at the token grid, resampled to 4x, 2x, 1x and
    1/2x of it, fused coarse to fine (8x the grid) and decoded with one more x2 upsample: the image size for
    16 px patches. For other patch sizes the output is resized bilinearly to `image_size` at the end.

    `hooks=None` picks `default_hooks(depth)` for the encoder it is given, so any preset works. The official
    module registers its branches twice (`act_{1..4}_postprocess`, `scratch.layer{1..4}_rn`); this one holds
    them once, under `act_postprocess.{0..3}` and `scratch.layer_rn.{0..3}`, and `load_state_dict` accepts
    either spelling. The official `scratch.refinenet4.resConfUnit1` gets no input and no gradient (it would
    stop DDP, which wants a gradient for every parameter), so it is left out: loading drops it, and
    `official_state_dict` puts back the aliases and that unit (as zeros) for the official format.
    """

    needs_all_layers: ClassVar[bool] = True
    UNUSED: ClassVar[str] = "scratch.refinenet4.resConfUnit1."
    ALIASES: ClassVar[dict[str, str]] = {
        **{f"act_{i + 1}_postprocess.": f"act_postprocess.{i}." for i in range(4)},
        **{f"scratch.layer{i + 1}_rn.": f"scratch.layer_rn.{i}." for i in range(4)},
    }

    def __init__(self, dim: int, num_outputs: int, hooks: Sequence[int] | None = None, *,
                 main_modalities: Sequence[str], layer_dims: Sequence[int] = (96, 192, 384, 768),
                 feature_dim: int = 256, use_bn: bool = False,
                 head_type: Literal["regression", "semseg"] = "regression") -> None:
        super().__init__()
        if hooks is not None and len(hooks) != 4:
            raise ValueError(f"DPT reads 4 encoder layers, got hooks={list(hooks)}")
        if len(layer_dims) != 4:
            raise ValueError(f"DPT needs 4 layer_dims, got {list(layer_dims)}")
        self.hooks = list(hooks) if hooks is not None else None
        self.main_modalities = tuple(main_modalities)
        in_dim = dim * len(self.main_modalities)
        d0, d1, d2, d3 = layer_dims
        self.act_postprocess = nn.ModuleList([
            nn.Sequential(nn.Conv2d(in_dim, d0, 1), nn.ConvTranspose2d(d0, d0, kernel_size=4, stride=4)),
            nn.Sequential(nn.Conv2d(in_dim, d1, 1), nn.ConvTranspose2d(d1, d1, kernel_size=2, stride=2)),
            nn.Sequential(nn.Conv2d(in_dim, d2, 1)),
            nn.Sequential(nn.Conv2d(in_dim, d3, 1), nn.Conv2d(d3, d3, kernel_size=3, stride=2, padding=1)),
        ])
        self.scratch = _Scratch(layer_dims, feature_dim, use_bn)
        up = nn.Upsample(scale_factor=2, mode="bilinear", align_corners=True)
        if head_type == "regression":
            self.head = nn.Sequential(
                nn.Conv2d(feature_dim, feature_dim // 2, 3, padding=1), up,
                nn.Conv2d(feature_dim // 2, 32, 3, padding=1), nn.ReLU(),
                nn.Conv2d(32, num_outputs, 1),
            )
        elif head_type == "semseg":
            self.head = nn.Sequential(
                nn.Conv2d(feature_dim, feature_dim, 3, padding=1, bias=False),
                nn.BatchNorm2d(feature_dim) if use_bn else nn.Identity(), nn.ReLU(), nn.Dropout(0.1),
                nn.Conv2d(feature_dim, num_outputs, 1), up,
            )
        else:
            raise ValueError(f"head_type must be 'regression' or 'semseg', got {head_type!r}")
        self.register_load_state_dict_pre_hook(_fold_dpt_aliases)

    def official_state_dict(self, prefix: str = "") -> dict[str, torch.Tensor]:
        """The state dict with the official alias keys (the same tensors under both names) and the official
        unused unit (zeros shaped like refinenet3's), which the official code needs to load strictly."""
        state = self.state_dict(prefix=prefix)
        for key, value in list(state.items()):
            rest = key[len(prefix):]
            for alias, name in self.ALIASES.items():
                if rest.startswith(name):
                    state[prefix + alias + rest[len(name):]] = value
            if rest.startswith("scratch.refinenet3.resConfUnit1."):
                state[prefix + self.UNUSED + rest.removeprefix("scratch.refinenet3.resConfUnit1.")] = \
                    torch.zeros_like(value)
        return state

    def forward(self, layers: Sequence[torch.Tensor], layout: TokenLayout,
                image_size: tuple[int, int]) -> torch.Tensor:
        if isinstance(layers, torch.Tensor):
            raise InputError("DPTHead needs every encoder layer: call forward_features(..., return_all_layers=True)")
        hooks = self.hooks if self.hooks is not None else default_hooks(len(layers))
        if not all(-len(layers) <= h < len(layers) for h in hooks):
            raise InputError(f"DPT hooks {hooks} do not fit an encoder of {len(layers)} layers")
        maps = [
            rn(post(_modality_maps(layers[h], layout, self.main_modalities)))
            for h, post, rn in zip(hooks, self.act_postprocess, self.scratch.layer_rn, strict=True)
        ]
        s = self.scratch
        x = s.refinenet4(maps[3], size=maps[2].shape[-2:])
        x = s.refinenet3(x, maps[2], size=maps[1].shape[-2:])
        x = s.refinenet2(x, maps[1], size=maps[0].shape[-2:])
        x = self.head(s.refinenet1(x, maps[0]))
        if tuple(x.shape[-2:]) != tuple(image_size):
            x = F.interpolate(x, size=tuple(image_size), mode="bilinear", align_corners=False)
        return x
