"""Input adapters (data -> tokens) and the spatial output adapter (tokens -> data), official layout.

Parameter names and shapes follow the official release (`proj`, `pos_emb`, `class_emb`, `mask_token`,
`task_embeddings`, `decoder.{q,kv,proj}`, ...), so official checkpoints load one to one. Position embeddings
are frozen parameters, as officially, so they travel in every state dict and are resampled at run time.
"""

from __future__ import annotations

from functools import partial

import torch
import torch.nn.functional as F
from timm.layers import Mlp
from timm.models.vision_transformer import Block
from torch import nn

from ..errors import InputError
from .layers import CrossAttention, TokenLayout, grid_tokens, sincos_pos_embed_2d

LayerNorm = partial(nn.LayerNorm, eps=1e-6)


def _token_grid(image_size: tuple[int, int], patch_size: int) -> tuple[int, int]:
    return image_size[0] // patch_size, image_size[1] // patch_size


def _check_divisible(name: str, size: tuple[int, int], patch: int, stride: int) -> None:
    if size[0] % patch or size[1] % patch:
        raise InputError(
            f"{name}: size {size[0]}x{size[1]} is not divisible by the patch size {patch * stride}"
            + (f" (/{stride} at this modality's stride)" if stride > 1 else "")
        )


class _InputAdapter(nn.Module):
    """Shared part of the input adapters: the stored position grid and the patch geometry."""

    def __init__(self, name: str, dim: int, patch_size: int, image_size: tuple[int, int], stride: int,
                 pos_interpolation: str) -> None:
        super().__init__()
        self.name = name
        self.stride = stride
        self.patch = max(1, patch_size // stride)
        self.pos_interpolation = pos_interpolation
        self.pos_emb = nn.Parameter(sincos_pos_embed_2d(_token_grid(image_size, patch_size), dim),
                                    requires_grad=False)

    def image_size(self, data: torch.Tensor) -> tuple[int, int]:
        """The image resolution this data stands for (its own size times its stride)."""
        return data.shape[-2] * self.stride, data.shape[-1] * self.stride

    def _tokens(self, patches: torch.Tensor, weight: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        """Flattened patches (B, N, K) -> tokens (B, N, dim): the patch convolution as one matrix product
        (`weight` is the convolution kernel flattened in the patches' element order), plus positions."""
        tokens = F.linear(patches, weight, self.proj.bias)
        return tokens + grid_tokens(self.pos_emb, grid, self.pos_interpolation)

    def no_weight_decay(self) -> set[str]:
        return {"pos_emb"}


class PatchInputAdapter(_InputAdapter):
    """Dense data (B, C, H, W) -> (B, N, dim) tokens by a non-overlapping patch projection.

    The projection is stored as the official `Conv2d` but applied as a matrix product on flattened patches
    (the same values): one GEMM instead of a strided convolution, cheaper to run and to differentiate."""

    def __init__(self, name: str, in_channels: int, dim: int, patch_size: int, image_size: tuple[int, int], *,
                 stride: int = 1, pos_interpolation: str = "bicubic") -> None:
        super().__init__(name, dim, patch_size, image_size, stride, pos_interpolation)
        self.in_channels = in_channels
        self.proj = nn.Conv2d(in_channels, dim, kernel_size=self.patch, stride=self.patch)

    def forward(self, data: torch.Tensor) -> torch.Tensor:
        if data.ndim != 4 or not data.is_floating_point():
            raise InputError(f"{self.name}: expected a float tensor (B, {self.in_channels}, H, W), "
                             f"got {data.dtype} of shape {tuple(data.shape)}")
        if data.shape[1] != self.in_channels:
            raise InputError(f"{self.name}: expected {self.in_channels} channel(s), got {data.shape[1]} "
                             f"(shape {tuple(data.shape)})")
        _check_divisible(self.name, tuple(data.shape[-2:]), self.patch, self.stride)
        (batch, channels, height, width), p = data.shape, self.patch
        grid = (height // p, width // p)
        patches = data.reshape(batch, channels, grid[0], p, grid[1], p).permute(0, 2, 4, 1, 3, 5)
        return self._tokens(patches.reshape(batch, grid[0] * grid[1], -1), self.proj.weight.flatten(1), grid)


class ClassEmbeddingInputAdapter(_InputAdapter):
    """Label maps (B, H, W) of class ids -> a learned embedding per pixel -> patch projection -> tokens."""

    def __init__(self, name: str, num_classes: int, dim: int, patch_size: int, image_size: tuple[int, int], *,
                 stride: int = 1, dim_class_emb: int = 64, pos_interpolation: str = "bilinear") -> None:
        super().__init__(name, dim, patch_size, image_size, stride, pos_interpolation)
        self.num_classes = num_classes
        self.class_emb = nn.Embedding(num_classes, dim_class_emb)
        nn.init.trunc_normal_(self.class_emb.weight, std=0.02)
        self.proj = nn.Conv2d(dim_class_emb, dim, kernel_size=self.patch, stride=self.patch)

    def forward(self, labels: torch.Tensor) -> torch.Tensor:
        if labels.ndim == 4 and labels.shape[1] == 1:
            labels = labels[:, 0]
        if labels.ndim != 3 or labels.is_floating_point() or labels.is_complex():
            raise InputError(f"{self.name}: expected an integer label map (B, H, W), "
                             f"got {labels.dtype} of shape {tuple(labels.shape)}")
        _check_divisible(self.name, tuple(labels.shape[-2:]), self.patch, self.stride)
        # On an accelerator this check would cost a host sync; traced graphs (compile, export) cannot hold it.
        if labels.device.type == "cpu" and labels.numel() and not torch.compiler.is_compiling():
            low, high = int(labels.min()), int(labels.max())
            if low < 0 or high >= self.num_classes:
                raise InputError(f"{self.name}: label values must lie in [0, {self.num_classes - 1}], "
                                 f"got [{low}, {high}]")
        (batch, height, width), p = labels.shape, self.patch
        grid = (height // p, width // p)
        embedded = self.class_emb(labels.long())  # (B, H, W, E): patches flatten as (row, column, E)
        patches = embedded.reshape(batch, grid[0], p, grid[1], p, -1).transpose(2, 3)
        weight = self.proj.weight.permute(0, 2, 3, 1).flatten(1)
        return self._tokens(patches.reshape(batch, grid[0] * grid[1], -1), weight, grid)

    def no_weight_decay(self) -> set[str]:
        return {"pos_emb", "class_emb.weight"}


class SpatialOutputAdapter(nn.Module):
    """The official pretraining decoder of one output modality.

    The encoder tokens are projected to the decoder width; masked positions get a shared mask token; every
    position gets its modality's task embedding plus a sin-cos position. Queries are the output's own
    positions, the context the visible tokens plus the global tokens. One cross-attention (no residual
    around it, as officially), an MLP, `depth` self-attention blocks and a linear layer give C*P*P values
    per token, unpatchified channel-major into (B, C, H/stride, W/stride).
    """

    def __init__(self, name: str, channels: int, dim_encoder: int, patch_size: int, image_size: tuple[int, int], *,
                 stride: int = 1, dim: int = 256, depth: int = 2, num_heads: int = 8, mlp_ratio: float = 4.0,
                 qkv_bias: bool = True, query_modality: str | None = None,
                 context_modalities: tuple[str, ...] = (), use_task_queries: bool = True,
                 pos_interpolation: str = "bilinear") -> None:
        super().__init__()
        self.name = name
        self.channels = channels
        self.patch = max(1, patch_size // stride)
        self.query_modality = query_modality or name
        self.use_task_queries = use_task_queries
        self.pos_interpolation = pos_interpolation
        self.task_embeddings = nn.ParameterDict(
            {m: nn.Parameter(nn.init.trunc_normal_(torch.zeros(1, 1, dim), std=0.02)) for m in context_modalities}
        )
        self.mask_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_emb = nn.Parameter(sincos_pos_embed_2d(_token_grid(image_size, patch_size), dim),
                                    requires_grad=False)
        self.decoder = CrossAttention(dim, num_heads, qkv_bias)
        self.context_norm = LayerNorm(dim)
        self.query_norm = LayerNorm(dim)
        self.out_norm = LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))
        self.decoder_transformer = nn.Sequential(
            *[Block(dim, num_heads, mlp_ratio, qkv_bias=qkv_bias, norm_layer=LayerNorm) for _ in range(depth)]
        )
        self.out_proj = nn.Linear(dim, channels * self.patch * self.patch)
        self.proj_context = nn.Linear(dim_encoder, dim)

    def _embedding(self, modality: str, pos: torch.Tensor) -> torch.Tensor:
        if modality in self.task_embeddings:
            return pos + self.task_embeddings[modality]
        return pos

    def forward(self, encoder_tokens: torch.Tensor, layout: TokenLayout, ids_keep: torch.Tensor,
                ids_restore: torch.Tensor) -> torch.Tensor:
        x = self.proj_context(encoder_tokens)
        batch, dim = x.shape[0], x.shape[-1]
        num_visible = ids_keep.shape[1]
        visible, global_tokens = x[:, :num_visible], x[:, num_visible:]

        masked = self.mask_token.expand(batch, layout.num_tokens - num_visible, dim)
        full = torch.cat([visible, masked], dim=1)
        full = torch.gather(full, 1, ids_restore.unsqueeze(-1).expand(-1, -1, dim))
        pos = grid_tokens(self.pos_emb, layout.grid, self.pos_interpolation)
        full = full + torch.cat([self._embedding(m, pos) for m in layout.modalities], dim=1)

        if self.use_task_queries and self.query_modality in layout.modalities:
            start, end = layout.span(self.query_modality)
            queries = full[:, start:end]
        else:
            queries = (self.mask_token + self._embedding(self.query_modality, pos)).expand(batch, -1, -1)
        context = torch.gather(full, 1, ids_keep.unsqueeze(-1).expand(-1, -1, dim))
        context = torch.cat([context, global_tokens], dim=1)

        y = self.decoder(self.query_norm(queries), self.context_norm(context))
        y = y + self.mlp(self.out_norm(y))
        y = self.out_proj(self.decoder_transformer(y))
        (gh, gw), p = layout.grid, self.patch
        y = y.view(batch, gh, gw, self.channels, p, p).permute(0, 3, 1, 4, 2, 5)
        return y.reshape(batch, self.channels, gh * p, gw * p)

    def no_weight_decay(self) -> set[str]:
        return {"pos_emb", "mask_token"} | {f"task_embeddings.{m}" for m in self.task_embeddings}
