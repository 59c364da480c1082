"""Official MultiMAE / MultiViT `.pth` and timm ViT checkpoints <-> our state dicts.

Our parameter names are the official ones, so official <-> native is the identity on keys and bit-exact.
`.pth` files are read with `torch.load(weights_only=True)`: only tensors, containers and, for the
official wrapper's `args`, `argparse.Namespace` are unpickled; anything else is refused and no code runs.
"""

from __future__ import annotations

import argparse
import pickle
import re
import zipfile
from pathlib import Path
from typing import Any

import torch

from ..config import ModelConfig, build_config
from ..errors import CheckpointError
from ..plugin.registry import Registry, get_registry

DEFAULT_NUM_HEADS = 12
DEFAULT_DECODER_NUM_HEADS = 8


def read_torch_checkpoint(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """The state dict (unwrapped from `{'model': ...}`, `module.` prefixes removed) and the `args` it carries."""
    try:
        with torch.serialization.safe_globals([argparse.Namespace]):
            checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else "unsupported content"
        raise CheckpointError(f"{path}: refused to load: it holds pickled objects other than tensors and "
                              f"argparse.Namespace, and loading it could run code ({reason})") from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, ValueError, AttributeError, ImportError) as exc:
        raise CheckpointError(f"{path}: not a readable PyTorch checkpoint ({type(exc).__name__}: "
                              f"{str(exc).strip().splitlines()[0] if str(exc).strip() else 'no detail'})") from None
    args: dict[str, Any] = {}
    if isinstance(checkpoint, dict) and isinstance(checkpoint.get("model"), dict):
        raw_args = checkpoint.get("args")
        args = vars(raw_args) if isinstance(raw_args, argparse.Namespace) else dict(raw_args or {})
        checkpoint = checkpoint["model"]
    if not isinstance(checkpoint, dict) or not checkpoint or not all(
            isinstance(value, torch.Tensor) for value in checkpoint.values()):
        raise CheckpointError(f"{path}: holds no state dict (expected a mapping of names to tensors, "
                              "or {'model': state_dict, ...})")
    return {key.removeprefix("module."): value for key, value in checkpoint.items()}, args


def is_timm_vit(state_dict: dict[str, torch.Tensor]) -> bool:
    return "cls_token" in state_dict and "patch_embed.proj.weight" in state_dict


def timm_to_official(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A timm ViT (e.g. MAE, DeiT) as a MultiViT rgb encoder, mapped as the official converter does.

    The cls position embedding is folded into the global token (exact: global tokens get no position);
    the final `norm`, `fc_norm` and `head` are dropped (MultiMAE has no final norm).
    """
    pos = state_dict["pos_embed"]
    side = round((pos.shape[1] - 1) ** 0.5)
    if side * side != pos.shape[1] - 1:
        raise CheckpointError(f"timm pos_embed with {pos.shape[1]} positions is not 1 cls + a square grid")
    out = {
        "global_tokens": state_dict["cls_token"] + pos[:, :1],
        "input_adapters.rgb.pos_emb": pos[:, 1:].reshape(1, side, side, -1).permute(0, 3, 1, 2).contiguous(),
        "input_adapters.rgb.proj.weight": state_dict["patch_embed.proj.weight"],
        "input_adapters.rgb.proj.bias": state_dict["patch_embed.proj.bias"],
    }
    for key, value in state_dict.items():
        if key.startswith("blocks."):
            out["encoder." + key.removeprefix("blocks.")] = value
    return out


def official_to_timm(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The rgb encoder as a timm ViT state dict: global token -> cls token with a zero cls position."""
    pos = state_dict["input_adapters.rgb.pos_emb"]
    flat = pos.flatten(2).transpose(1, 2)
    out = {
        "cls_token": state_dict["global_tokens"][:, :1],
        "pos_embed": torch.cat([torch.zeros_like(flat[:, :1]), flat], dim=1),
        "patch_embed.proj.weight": state_dict["input_adapters.rgb.proj.weight"],
        "patch_embed.proj.bias": state_dict["input_adapters.rgb.proj.bias"],
    }
    for key, value in state_dict.items():
        if key.startswith("encoder."):
            out["blocks." + key.removeprefix("encoder.")] = value
    return out


def _adapter_names(state_dict: dict[str, torch.Tensor], group: str) -> list[str]:
    pattern = re.compile(rf"^{group}\.([^.]+)\.")
    return list(dict.fromkeys(m.group(1) for key in state_dict if (m := pattern.match(key))))


def _count(state_dict: dict[str, torch.Tensor], prefix: str) -> int:
    pattern = re.compile(rf"^{re.escape(prefix)}(\d+)\.")
    indices = {int(m.group(1)) for key in state_dict if (m := pattern.match(key))}
    return max(indices) + 1 if indices else 0


def infer_config(state_dict: dict[str, torch.Tensor], args: dict[str, Any] | None = None,
                 registry: Registry | None = None, **overrides: Any) -> ModelConfig:
    """The architecture an official-layout state dict describes, from its key names and shapes.

    What the weights cannot tell (head counts) comes from `overrides`, then the checkpoint's `args`,
    then the ViT convention of 64 channels per encoder head (12 heads for the official ViT-B; 12 when the
    width is not a multiple of 64) and the official 8 decoder heads.
    """
    registry = registry or get_registry()
    args = args or {}
    required = ["global_tokens", "encoder.0.attn.qkv.weight", "encoder.0.mlp.fc1.weight"]
    missing = [key for key in required if key not in state_dict]
    if missing or not _adapter_names(state_dict, "input_adapters"):
        raise CheckpointError("not a MultiMAE/MultiViT state dict: missing "
                              f"{missing or ['input_adapters.*']} (found keys like {list(state_dict)[:3]})")
    num_global, dim = state_dict["global_tokens"].shape[1:]
    values: dict[str, Any] = {
        "dim": dim,
        "num_global_tokens": num_global,
        "depth": _count(state_dict, "encoder."),
        "mlp_ratio": state_dict["encoder.0.mlp.fc1.weight"].shape[0] / dim,
        "qkv_bias": "encoder.0.attn.qkv.bias" in state_dict,
        "num_heads": args.get("num_heads", dim // 64 if dim % 64 == 0 else DEFAULT_NUM_HEADS),
        "decoder_num_heads": args.get("decoder_num_heads", DEFAULT_DECODER_NUM_HEADS),
    }
    channels: dict[str, int] = {}
    patch_sizes: dict[str, int] = {}
    grids: dict[str, tuple[int, int]] = {}
    inputs = _adapter_names(state_dict, "input_adapters")
    for name in inputs:
        modality = registry.modality(name)
        prefix = f"input_adapters.{name}."
        kernel = state_dict[prefix + "proj.weight"].shape[-1]
        patch_sizes[name] = kernel * modality.stride
        if modality.kind == "labels":
            channels[name] = state_dict[prefix + "class_emb.weight"].shape[0]
        else:
            channels[name] = state_dict[prefix + "proj.weight"].shape[1]
        grids[name] = tuple(state_dict[prefix + "pos_emb"].shape[-2:])
    if len(set(patch_sizes.values())) != 1:
        raise CheckpointError(f"input adapters disagree on the patch size: {patch_sizes}")
    patch = next(iter(patch_sizes.values()))
    grid = grids[inputs[0]]
    outputs = _adapter_names(state_dict, "output_adapters")
    for name in outputs:
        modality = registry.modality(name)
        prefix = f"output_adapters.{name}."
        decoder_dim = state_dict[prefix + "mask_token"].shape[-1]
        values["decoder_dim"] = decoder_dim
        values["decoder_depth"] = _count(state_dict, prefix + "decoder_transformer.")
        values["decoder_mlp_ratio"] = state_dict[prefix + "mlp.fc1.weight"].shape[0] / decoder_dim
        per_token = max(1, patch // modality.stride) ** 2
        channels[name] = state_dict[prefix + "out_proj.weight"].shape[0] // per_token
    # The official recipe encodes a sixth of all tokens (98 of 3 x 196) unless the run's args say otherwise.
    values.update(inputs=tuple(inputs), outputs=tuple(outputs), channels=channels, patch_size=patch,
                  image_size=(grid[0] * patch, grid[1] * patch),
                  num_encoded_tokens=args.get("num_encoded_tokens", round(len(inputs) * grid[0] * grid[1] / 6)))
    values.update(overrides)
    return build_config(ModelConfig, values)
