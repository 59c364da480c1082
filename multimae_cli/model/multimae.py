"""MultiMAE: input adapters -> masking -> shared ViT encoder (+ global tokens) -> output adapters.

Pure torch: the model is given its adapters (built by plugins) and never opens a file. Parameter names
follow the official release (`global_tokens`, `input_adapters.*`, `encoder.N.*`, `output_adapters.*`).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import partial

import torch
from timm.models import checkpoint, checkpoint_seq
from timm.models._features import feature_take_indices
from timm.models.vision_transformer import Block
from torch import nn

from ..config import ModelConfig
from ..errors import InputError, UnknownModalityError
from .layers import TokenLayout
from .masking import check_masks, mask_indices, random_masks


@dataclass
class Encoded:
    """The encoder's output for one batch and the bookkeeping the decoders need."""

    tokens: torch.Tensor  # (B, k + G, D): visible tokens in ascending index order, then global tokens
    masks: dict[str, torch.Tensor]  # per input modality, (B, N), 1 = masked
    ids_keep: torch.Tensor  # (B, k) indices of the visible tokens in the concatenated sequence
    ids_restore: torch.Tensor  # (B, n*N) puts [visible, masked] back into sequence order
    layout: TokenLayout


class MultiMAE(nn.Module):
    """Multi-modal masked autoencoder (and, without output adapters, the MultiViT encoder)."""

    def __init__(
        self,
        input_adapters: Mapping[str, nn.Module],
        output_adapters: Mapping[str, nn.Module] | None = None,
        *,
        dim: int = 768,
        depth: int = 12,
        num_heads: int = 12,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        num_global_tokens: int = 1,
        drop_path_rate: float = 0.0,
        num_encoded_tokens: int = 98,
        alphas: float | Sequence[float] = 1.0,
        sample_tasks_uniformly: bool = False,
        config: ModelConfig | None = None,
    ) -> None:
        super().__init__()
        self.config = config  # what rebuilds this model (`save_model` writes it); None when built by hand
        self.input_adapters = nn.ModuleDict(input_adapters)
        self.output_adapters = nn.ModuleDict(output_adapters or {})
        self.num_global_tokens = num_global_tokens
        self.num_encoded_tokens = num_encoded_tokens
        self.alphas = alphas
        self.sample_tasks_uniformly = sample_tasks_uniformly
        self.global_tokens = nn.Parameter(torch.zeros(1, num_global_tokens, dim))
        norm_layer = partial(nn.LayerNorm, eps=1e-6)
        rates = torch.linspace(0, drop_path_rate, depth, device="cpu").tolist()
        self.encoder = nn.Sequential(
            *[Block(dim, num_heads, mlp_ratio, qkv_bias=qkv_bias, drop_path=rate, norm_layer=norm_layer)
              for rate in rates]
        )
        self.grad_checkpointing = False
        self._init_weights()

    def _init_weights(self) -> None:
        """The official initialisation: xavier Linear layers (split fans for fused qkv / kv), xavier
        patch projections, unit LayerNorms, truncated-normal global tokens."""
        nn.init.trunc_normal_(self.global_tokens, std=0.02)
        for name, module in self.named_modules():
            if isinstance(module, nn.Linear):
                fan_out, fan_in = module.weight.shape
                if name.endswith("qkv") or name.endswith(".kv"):
                    parts = 3 if name.endswith("qkv") else 2
                    bound = math.sqrt(6.0 / (fan_out // parts + fan_in))
                    nn.init.uniform_(module.weight, -bound, bound)
                else:
                    nn.init.xavier_uniform_(module.weight)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, nn.LayerNorm):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)
            elif isinstance(module, nn.Conv2d) and name.startswith("input_adapters.") and name.endswith(".proj"):
                nn.init.xavier_uniform_(module.weight.view(module.weight.shape[0], -1))
                if module.bias is not None:
                    nn.init.zeros_(module.bias)

    # ---------------------------------------------------------------- tokens

    def tokenize(self, inputs: Mapping[str, torch.Tensor]) -> tuple[torch.Tensor, TokenLayout]:
        """Every input's patch tokens concatenated in the given order, (B, n*N, D), and their layout."""
        if not inputs:
            raise InputError("no inputs given")
        unknown = [name for name in inputs if name not in self.input_adapters]
        if unknown:
            raise UnknownModalityError(f"model has no input adapter for {', '.join(map(repr, unknown))} "
                                       f"(inputs: {', '.join(self.input_adapters)})")
        sizes = {name: self.input_adapters[name].image_size(data) for name, data in inputs.items()}
        if len(set(sizes.values())) > 1:
            described = ", ".join(f"{name} {h}x{w}" for name, (h, w) in sizes.items())
            raise InputError(f"inputs describe different image sizes: {described} (at image resolution)")
        batches = {name: data.shape[0] for name, data in inputs.items()}
        if len(set(batches.values())) > 1:
            raise InputError(f"inputs have different batch sizes: {batches}")
        tokens = [self.input_adapters[name](data) for name, data in inputs.items()]
        grid_h, grid_w = next(iter(sizes.values()))
        patch = self.patch_size
        layout = TokenLayout(tuple(inputs), (grid_h // patch, grid_w // patch), self.num_global_tokens)
        return torch.cat(tokens, dim=1), layout

    @property
    def patch_size(self) -> int:
        """Image pixels per token side (the same for every modality)."""
        adapter = next(iter(self.input_adapters.values()))
        return adapter.patch * adapter.stride

    def _append_global_tokens(self, tokens: torch.Tensor) -> torch.Tensor:
        return torch.cat([tokens, self.global_tokens.expand(tokens.shape[0], -1, -1)], dim=1)

    # ---------------------------------------------------------------- encoder

    def forward_features(self, inputs: Mapping[str, torch.Tensor],
                         return_all_layers: bool = False) -> torch.Tensor | list[torch.Tensor]:
        """All tokens, nothing masked: modalities in the given order, global tokens last (MultiViT output)."""
        return self.encode_unmasked(inputs, return_all_layers)[0]

    def encode_unmasked(self, inputs: Mapping[str, torch.Tensor], return_all_layers: bool = False
                        ) -> tuple[torch.Tensor | list[torch.Tensor], TokenLayout]:
        """`forward_features` (or every block's tokens) plus the token layout: what fine-tuning heads read."""
        if return_all_layers:
            _, layers, layout = self._encode_blocks(inputs, None, stop_early=False)
            return layers, layout
        tokens, layout = self.tokenize(inputs)
        return self._run_encoder(self._append_global_tokens(tokens)), layout

    def forward_intermediates(self, inputs: Mapping[str, torch.Tensor], indices: int | Sequence[int] | None = None,
                              stop_early: bool = False, intermediates_only: bool = False
                              ) -> list[torch.Tensor] | tuple[torch.Tensor, list[torch.Tensor]]:
        """timm's intermediate-feature API on the unmasked encoder: the tokens (B, N + G, dim, "NLC") after the
        blocks `indices` names (an int: the last n; None: all), and the final tokens unless `intermediates_only`.
        `stop_early` skips the blocks after the last one asked for."""
        final, intermediates, _ = self._encode_blocks(inputs, indices, stop_early)
        return intermediates if intermediates_only else (final, intermediates)

    def _encode_blocks(self, inputs: Mapping[str, torch.Tensor], indices: int | Sequence[int] | None,
                       stop_early: bool) -> tuple[torch.Tensor, list[torch.Tensor], TokenLayout]:
        take, last = feature_take_indices(len(self.encoder), indices)
        tokens, layout = self.tokenize(inputs)
        x = self._append_global_tokens(tokens)
        recompute = self.grad_checkpointing and torch.is_grad_enabled()
        intermediates = []
        for i, block in enumerate(self.encoder[:last + 1] if stop_early else self.encoder):
            x = checkpoint(block, x) if recompute else block(x)
            if i in take:
                intermediates.append(x)
        return x, intermediates, layout

    def encode(
        self,
        inputs: Mapping[str, torch.Tensor],
        task_masks: Mapping[str, torch.Tensor] | None = None,
        num_encoded_tokens: int | None = None,
        alphas: float | Sequence[float] | None = None,
        sample_tasks_uniformly: bool | None = None,
        mask_inputs: bool = True,
        check: bool = True,
    ) -> Encoded:
        """Tokenize, pick the visible tokens (given masks, or Dirichlet budgets), run the encoder.

        `check=False` trusts `task_masks` to be valid with `num_encoded_tokens` (default: the model's) visible
        tokens per sample, skipping the checks that need the host to read the masks (a training loop's own
        masks; it keeps the step free of host syncs and whole under `torch.compile`)."""
        tokens, layout = self.tokenize(inputs)
        batch, total, dim = tokens.shape
        per_modality = layout.tokens_per_modality
        if task_masks is not None and not check:  # masks this library drew: no host sync, nothing to verify
            mask_all = torch.cat([task_masks[name].long() for name in layout.modalities], dim=1)
            num_visible = self.num_encoded_tokens if num_encoded_tokens is None else num_encoded_tokens
        elif task_masks is not None:
            mask_all = check_masks(task_masks, layout.modalities, batch, per_modality, num_encoded_tokens)
            num_visible = int((mask_all[0] == 0).sum())
        elif not mask_inputs:
            num_visible = total
            mask_all = torch.zeros(batch, total, dtype=torch.long, device=tokens.device)
        else:
            num_visible = self.num_encoded_tokens if num_encoded_tokens is None else num_encoded_tokens
            if not 0 <= num_visible <= total:
                raise InputError(f"num_encoded_tokens={num_visible} must lie in [0, {total}] "
                                 f"({len(layout.modalities)} inputs x {per_modality} tokens)")
            alphas = self.alphas if alphas is None else alphas
            uniform = self.sample_tasks_uniformly if sample_tasks_uniformly is None else sample_tasks_uniformly
            mask_all = random_masks(batch, len(layout.modalities), per_modality, num_visible, alphas, uniform,
                                    tokens.device)
        if num_visible == total and task_masks is None:  # nothing masked: no sort, no gather (exportable)
            ids_keep = ids_restore = torch.arange(total, device=tokens.device).expand(batch, -1)
            visible = tokens
        else:
            ids_keep, ids_restore = mask_indices(mask_all, num_visible)
            visible = torch.gather(tokens, 1, ids_keep.unsqueeze(-1).expand(-1, -1, dim))
        encoded = self._run_encoder(self._append_global_tokens(visible))
        masks = dict(zip(layout.modalities, mask_all.split(per_modality, dim=1), strict=True))
        return Encoded(encoded, masks, ids_keep, ids_restore, layout)

    def _run_encoder(self, x: torch.Tensor) -> torch.Tensor:
        if self.grad_checkpointing and torch.is_grad_enabled():
            return checkpoint_seq(self.encoder, x)
        return self.encoder(x)

    # ---------------------------------------------------------------- decoders

    def decode(self, encoded: Encoded, outputs: Sequence[str] | None = None) -> dict[str, torch.Tensor]:
        """Predictions of the chosen output adapters (all by default) from the encoded tokens."""
        names = list(self.output_adapters) if outputs is None else list(outputs)
        unknown = [name for name in names if name not in self.output_adapters]
        if unknown:
            raise UnknownModalityError(f"model has no output adapter for {', '.join(map(repr, unknown))} "
                                       f"(outputs: {', '.join(self.output_adapters) or 'none'})")
        return {
            name: self.output_adapters[name](encoded.tokens, encoded.layout, encoded.ids_keep, encoded.ids_restore)
            for name in names
        }

    def forward(
        self,
        inputs: Mapping[str, torch.Tensor],
        task_masks: Mapping[str, torch.Tensor] | None = None,
        num_encoded_tokens: int | None = None,
        alphas: float | Sequence[float] | None = None,
        sample_tasks_uniformly: bool | None = None,
        mask_inputs: bool = True,
        outputs: Sequence[str] | None = None,
        check: bool = True,
    ) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        """Masked forward: `(predictions per output modality, masks per input modality)`; `check` as `encode`."""
        encoded = self.encode(inputs, task_masks, num_encoded_tokens, alphas, sample_tasks_uniformly, mask_inputs,
                              check)
        return self.decode(encoded, outputs), encoded.masks

    # ---------------------------------------------------------------- timm-style model API

    def no_weight_decay(self) -> set[str]:
        """Names of parameters that should not be weight-decayed (tokens, embeddings, positions)."""
        names = {"global_tokens"}
        for group in ("input_adapters", "output_adapters"):
            for key, adapter in getattr(self, group).items():
                names |= {f"{group}.{key}.{name}" for name in adapter.no_weight_decay()}
        return names

    def group_matcher(self, coarse: bool = False) -> dict:
        """Layer groups for timm's layer-wise lr decay: stem, one group per encoder block, the rest last."""
        return {
            "stem": r"^global_tokens|^input_adapters",
            "blocks": [(r"^encoder\.(\d+)", None)],
        }

    def get_num_layers(self) -> int:
        return len(self.encoder)

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Activation checkpointing: encoder blocks keep only their inputs for the backward pass and recompute
        the rest there (timm's API): much less activation memory for large presets and batches, for about a
        third more encoder compute."""
        self.grad_checkpointing = enable


class FinetuneModel(nn.Module):
    """`backbone` (a MultiMAE; its decoders are dropped) encodes every input unmasked; `head` reads the tokens
    (or every block's tokens when `head.needs_all_layers`). Parameter names: the official encoder names under
    `backbone.`, the head's under `head.`."""

    def __init__(self, backbone: MultiMAE, head: nn.Module, task_info: dict | None = None) -> None:
        super().__init__()
        backbone.output_adapters = nn.ModuleDict()
        if backbone.config is not None:
            backbone.config = backbone.config.replace(outputs=())
        self.task_info = task_info  # the fine-tuning record `save_model` writes (task, head, classes, ...)
        self.backbone = backbone
        self.head = head
        self.frozen = False

    def freeze_backbone(self) -> FinetuneModel:
        """Fix the encoder: no gradients, no stochastic depth (it stays in eval mode), features computed
        without autograd. The head alone learns: with a linear head, the linear probe of the features."""
        self.frozen = True
        self.backbone.requires_grad_(False)
        return self.train(self.training)

    def train(self, mode: bool = True) -> FinetuneModel:
        super().train(mode)
        if self.frozen:
            self.backbone.eval()
        return self

    @property
    def config(self):
        return self.backbone.config

    def forward(self, inputs: Mapping[str, torch.Tensor]) -> torch.Tensor:
        with torch.no_grad() if self.frozen else contextlib.nullcontext():
            features, layout = self.backbone.encode_unmasked(inputs, getattr(self.head, "needs_all_layers", False))
        size = (layout.grid[0] * self.backbone.patch_size, layout.grid[1] * self.backbone.patch_size)
        return self.head(features, layout, size)

    def no_weight_decay(self) -> set[str]:
        return {f"backbone.{name}" for name in self.backbone.no_weight_decay()}

    def group_matcher(self, coarse: bool = False) -> dict:
        """timm's layer-decay groups: embeddings first, one per encoder block; the head, unmatched, is last."""
        return {
            "stem": r"^backbone\.(?:global_tokens|input_adapters)",
            "blocks": [(r"^backbone\.encoder\.(\d+)", None)],
        }

    def get_num_layers(self) -> int:
        return len(self.backbone.encoder)
