"""Small shared pieces of the model: token layout, 2-D sin-cos position embeddings, cross-attention.

Self-attention blocks come from timm (`timm.models.vision_transformer.Block`, fused SDPA attention); its
parameter names match the official ones, so only what timm lacks lives here.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn


@dataclass(frozen=True)
class TokenLayout:
    """Where each modality's tokens sit in the concatenated (pre-masking) sequence.

    Every modality of one sample shares the token grid `grid` (image size // patch size), so the layout is
    the modality order plus that grid; global tokens follow the patch tokens.
    """

    modalities: tuple[str, ...]
    grid: tuple[int, int]
    num_global_tokens: int

    @property
    def tokens_per_modality(self) -> int:
        return self.grid[0] * self.grid[1]

    @property
    def num_tokens(self) -> int:
        return self.tokens_per_modality * len(self.modalities)

    def span(self, modality: str) -> tuple[int, int]:
        start = self.modalities.index(modality) * self.tokens_per_modality
        return start, start + self.tokens_per_modality


def sincos_pos_embed_2d(grid: tuple[int, int], dim: int, temperature: float = 10000.0) -> torch.Tensor:
    """Fixed 2-D sin-cos embedding, shape (1, dim, h, w): channels [sin(row), cos(row), sin(col), cos(col)].

    Same values as the official builder on square grids; unlike it, correct on non-square grids too.
    """
    if dim % 4:
        raise ValueError(f"sin-cos position embedding needs a width divisible by 4, got {dim}")
    quarter = dim // 4
    omega = 1.0 / temperature ** (torch.arange(quarter, dtype=torch.float32) / quarter)
    rows = torch.arange(grid[0], dtype=torch.float32)[:, None] * omega  # (h, q)
    cols = torch.arange(grid[1], dtype=torch.float32)[:, None] * omega  # (w, q)
    h, w = grid
    emb = torch.cat(
        [
            rows.sin()[:, None, :].expand(h, w, quarter),
            rows.cos()[:, None, :].expand(h, w, quarter),
            cols.sin()[None, :, :].expand(h, w, quarter),
            cols.cos()[None, :, :].expand(h, w, quarter),
        ],
        dim=-1,
    )
    return emb.permute(2, 0, 1).unsqueeze(0).contiguous()


def resize_pos_embed(pos_emb: torch.Tensor, grid: tuple[int, int], mode: str) -> torch.Tensor:
    """Resample a stored (1, D, h, w) grid to `grid` (align_corners=False, as the official runtime resize)."""
    if tuple(pos_emb.shape[-2:]) == tuple(grid):
        return pos_emb
    return F.interpolate(pos_emb, size=grid, mode=mode, align_corners=False)


def grid_tokens(pos_emb: torch.Tensor, grid: tuple[int, int], mode: str) -> torch.Tensor:
    """A (1, D, h, w) embedding resized to `grid` and flattened row-major to (1, h*w, D)."""
    return resize_pos_embed(pos_emb, grid, mode).flatten(2).transpose(1, 2)


class CrossAttention(nn.Module):
    """Multi-head attention of queries over a context: `q` on the queries, fused `kv` on the context."""

    def __init__(self, dim: int, num_heads: int, qkv_bias: bool = True) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"decoder width {dim} is not divisible by {num_heads} heads")
        self.num_heads = num_heads
        self.q = nn.Linear(dim, dim, bias=qkv_bias)
        self.kv = nn.Linear(dim, 2 * dim, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)

    def forward(self, queries: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        batch, n, dim = queries.shape
        head_dim = dim // self.num_heads
        q = self.q(queries).view(batch, n, self.num_heads, head_dim).transpose(1, 2)
        k, v = self.kv(context).view(batch, -1, 2, self.num_heads, head_dim).permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(q, k, v)
        return self.proj(out.transpose(1, 2).reshape(batch, n, dim))
