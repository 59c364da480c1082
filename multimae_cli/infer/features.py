"""`multimae features`: the encoder's embeddings of image files, for retrieval, probes and clustering.

Every image (and its extra inputs) is resized to the checkpoint's image size and encoded whole: no masking, no
randomness, eval mode, so the same files give the same features. Written as one safetensors file: `pooled`
(N, dim), the mean of the patch tokens (MAE's linear-probe feature), or the first global token with
`pool="global"`; with `tokens`, also `tokens` (N, T, dim), every token after the last block (patch tokens of the
inputs in order, global tokens last). The header metadata lists the keys of the rows (`multimae.keys`, JSON) and
the token layout.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from ..errors import ConfigError, InputError, MultiMAEError
from ..io import write_bytes, write_checked
from .inputs import list_images, read_sample
from .predictor import Predictor, find_checkpoint

POOLS = ("mean", "global")


def extract_features(
    images: Sequence[str | Path],
    out: str | Path,
    checkpoint: str | Path | None = None,
    extra_inputs: Mapping[str, str | Path] | None = None,
    pool: str = "mean",
    tokens: bool = False,
    batch_size: int = 16,
    device: str = "auto",
    overwrite: bool = False,
    skip_bad: bool = False,
    progress: Callable[[int, int], None] | None = None,
) -> dict[str, Any]:
    """Encode image files (or folders of them) and write their features to `out` (`.safetensors`)."""
    out = Path(out)
    _check_request(out, pool, batch_size, overwrite)
    weights = find_checkpoint(checkpoint)
    predictor = Predictor.from_checkpoint(weights, device)
    encoder = _Encoder(predictor, pool, tokens)
    primary = predictor.config.inputs[0]
    extra = {name: Path(path) for name, path in (extra_inputs or {}).items()}
    predictor.check_inputs([primary, *extra])
    listed = list_images(images, predictor.modalities[primary].extensions)
    started = time.perf_counter()
    skipped: list[str] = []
    pending: list[tuple[str, Any]] = []
    for number, (key, path) in enumerate(listed, 1):
        try:
            sample = read_sample(predictor.modalities, primary, extra, key, path, single=len(listed) == 1)
            pending.append((key, predictor.prepare(sample, encoder.size)))
        except MultiMAEError as exc:
            if not skip_bad:
                raise
            skipped.append(str(exc))
        if pending and (len(pending) >= batch_size or number == len(listed)):
            encoder.add(pending)
            pending.clear()
        if progress:
            progress(1, len(listed))
    if not encoder.keys:
        raise InputError(f"{', '.join(map(str, images))}: no readable image")
    tensors = encoder.tensors()
    metadata = {"multimae.keys": json.dumps(encoder.keys), "multimae.checkpoint": str(weights), "multimae.pool": pool,
                "multimae.inputs": json.dumps([primary, *extra]), "multimae.layout": json.dumps(encoder.layout)}
    _write(out, tensors, metadata)
    return {"out": str(out), "checkpoint": str(weights), "images": len(encoder.keys), "skipped": len(skipped),
            "skipped_files": skipped, "pooled": list(tensors["pooled"].shape),
            "tokens": list(tensors["tokens"].shape) if tokens else None,
            "seconds": round(time.perf_counter() - started, 3), "device": str(predictor.device)}


def _check_request(out: Path, pool: str, batch_size: int, overwrite: bool) -> None:
    """Refuse a bad request before loading anything."""
    if out.suffix != ".safetensors":
        raise ConfigError(f"--out {out}: features are written as a .safetensors file")
    if pool not in POOLS:
        raise ConfigError(f"--pool {pool}: expected one of {', '.join(POOLS)}")
    if batch_size < 1:
        raise ConfigError(f"--batch-size must be at least 1, got {batch_size}")
    if not out.parent.is_dir():
        raise InputError(f"--out {out}: folder {out.parent} does not exist")
    if out.exists() and not overwrite:
        raise InputError(f"{out}: already exists (pass --overwrite to replace it)")


class _Encoder:
    """Batches of prepared samples -> pooled features (and tokens), gathered on the CPU in file order."""

    def __init__(self, predictor: Predictor, pool: str, tokens: bool) -> None:
        self.predictor, self.pool, self.keep_tokens = predictor, pool, tokens
        self.model = getattr(predictor.model, "backbone", predictor.model)  # a fine-tuned model: its encoder
        self.size = tuple(predictor.config.image_size)
        self.globals = self.model.config.num_global_tokens
        if pool == "global" and not self.globals:
            raise ConfigError("--pool global: this checkpoint has no global tokens; use --pool mean")
        self.keys: list[str] = []
        self.pooled: list[Any] = []
        self.tokens: list[Any] = []
        self.layout: dict[str, Any] = {}

    def add(self, batch: Sequence[tuple[str, Mapping[str, Any]]]) -> None:
        import torch

        from ..data.transforms import to_device

        inputs = to_device({name: torch.stack([sample[name] for _, sample in batch]) for name in batch[0][1]},
                           self.predictor.modalities, self.predictor.device)
        with torch.inference_mode():
            x, layout = self.model.encode_unmasked(inputs)
        patches = x[:, :x.shape[1] - self.globals]
        self.pooled.append((patches.mean(1) if self.pool == "mean" else x[:, patches.shape[1]]).float().cpu())
        if self.keep_tokens:
            self.tokens.append(x.float().cpu())
        self.layout = {"modalities": list(layout.modalities), "grid": list(layout.grid), "global_tokens": self.globals,
                       "image_size": list(self.size)}
        self.keys.extend(key for key, _ in batch)

    def tensors(self) -> dict[str, Any]:
        import torch

        out = {"pooled": torch.cat(self.pooled)}
        if self.keep_tokens:
            out["tokens"] = torch.cat(self.tokens)
        return out


def _write(out: Path, tensors: dict, metadata: dict[str, str]) -> None:
    from safetensors.torch import save

    write_checked(out, lambda tmp: write_bytes(tmp, save({k: v.contiguous() for k, v in tensors.items()},
                                                         metadata=metadata)))


def read_features(path: str | Path) -> tuple[list[str], dict[str, Any]]:
    """(keys, {"pooled": (N, dim)[, "tokens": (N, T, dim)]}) of a file `extract_features` wrote."""
    from ..formats.native import read_safetensors

    tensors, metadata = read_safetensors(path)
    if "multimae.keys" not in metadata:
        raise InputError(f"{path}: not a features file (no multimae.keys in its header)")
    return json.loads(metadata["multimae.keys"]), tensors
