"""`multimae export` and `multimae import`: weights out to native / official / timm / ONNX, and in again.

Every writer goes through a temporary file in the target folder, re-loads what it wrote, checks it against
the model, and only then renames it into place: a failed export leaves nothing behind and never replaces
an existing file half-way.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from ..config import ModelConfig
from ..errors import CheckpointError, ConfigError, InputError
from ..io import atomic_write_bytes, save_torch, write_bytes, write_checked
from .load import (
    PLUGINS_KEY,
    load_model,
    load_task_model,
    plugin_origins,
    read_checkpoint,
    read_task_info,
    save_model,
)
from .native import write_native
from .official import official_to_timm

FORMATS = ("native", "official", "timm", "onnx")
TIMM_NAMES = {  # (dim, depth, heads, patch) of timm's plain ViTs
    (192, 12, 3, 16): "vit_tiny_patch16",
    (384, 12, 6, 16): "vit_small_patch16",
    (768, 12, 12, 16): "vit_base_patch16",
    (1024, 24, 16, 16): "vit_large_patch16",
}


def timm_model_args(config: ModelConfig) -> tuple[str | None, dict[str, Any]]:
    """The timm model name matching the encoder (None if timm has none) and the keyword arguments that
    build it with `timm.create_model` (or `timm.models.VisionTransformer`) without a classifier."""
    name = TIMM_NAMES.get((config.dim, config.depth, config.num_heads, config.patch_size))
    if name is not None:
        name = f"{name}_224"  # `img_size` below sets the real size
    kwargs: dict[str, Any] = {"num_classes": 0, "img_size": tuple(config.image_size)}
    if name is None or config.mlp_ratio != 4.0 or not config.qkv_bias:
        kwargs.update(patch_size=config.patch_size, embed_dim=config.dim, depth=config.depth,
                      num_heads=config.num_heads, mlp_ratio=config.mlp_ratio, qkv_bias=config.qkv_bias)
        name = None
    return name, kwargs


def origins(config: ModelConfig) -> dict[str, str]:
    """The header entry recording the plugin behind each modality."""
    import json

    return {PLUGINS_KEY: json.dumps(plugin_origins(config, None))}


def _same_tensors(expected: dict[str, torch.Tensor], found: dict[str, torch.Tensor], what: str) -> None:
    if expected.keys() != found.keys():
        raise CheckpointError(f"{what}: re-loaded keys differ ({len(expected)} written, {len(found)} read)")
    for key, value in expected.items():
        if not torch.equal(value.cpu(), found[key].cpu()):
            raise CheckpointError(f"{what}: re-loaded tensor {key} differs from the model's")


def export_model(checkpoint: str | Path, format: str, out: str | Path, *, inputs: Sequence[str] | None = None,
                 outputs: Sequence[str] | None = None,
                 image_size: tuple[int, int] | None = None, batch_size: int = 1, overwrite: bool = False,
                 tolerance: float = 1e-4) -> dict[str, Any]:
    """Write the model of `checkpoint` (any readable format) as `format` to `out`, verified. `inputs`,
    `outputs`, `image_size` and `batch_size` shape the ONNX graph (default: every input and output at the
    model's size). A checkpoint of a run folder brings the run's model card along: `README.md` beside `out`,
    unless one is there already (the summary says which)."""
    summary = _export(checkpoint, format, out, inputs, outputs, image_size, batch_size, overwrite, tolerance)
    return {**summary, **_carry_card(Path(checkpoint), Path(out), summary)}


def _carry_card(checkpoint: Path, out: Path, summary: dict[str, Any]) -> dict[str, str]:
    """Copy the model card of the run `checkpoint` belongs to (`runs/<name>/`, its `last/` or `best/`) next to
    `out`, the Hugging Face layout, with a section on the exported file; a README.md already there is kept."""
    run = checkpoint if checkpoint.is_dir() else checkpoint.parent
    card = next((folder / "README.md" for folder in (run, run.parent)
                 if (folder / "README.md").is_file() and (folder / "config.yaml").is_file()), None)
    if card is None:
        return {}
    target = out.parent / "README.md"
    if target.exists():
        return {"model_card": f"not copied: {target} exists (the run's card is {card})"}
    load = f"\n\nLoad it with: `{summary['load_with']}`" if "load_with" in summary else ""
    section = (f"\n\n## This export\n\n`{out.name}`: the {summary['format']} format, written and verified by "
               f"`multimae export` from `{checkpoint}`.{load}\n")
    atomic_write_bytes(target, card.read_text().rstrip().encode() + section.encode())
    return {"model_card": str(target)}


def _export(checkpoint: str | Path, format: str, out: str | Path, inputs: Sequence[str] | None,
            outputs: Sequence[str] | None, image_size: tuple[int, int] | None, batch_size: int, overwrite: bool,
            tolerance: float) -> dict[str, Any]:
    if format not in FORMATS:
        raise ConfigError(f"--format {format}: unknown format (choose from {', '.join(FORMATS)})")
    out = Path(out)
    if out.exists() and not overwrite:
        raise InputError(f"{out}: already exists (pass --overwrite to replace it)")
    if format == "onnx":
        from .onnx import export_onnx

        return export_onnx(checkpoint, out, inputs=inputs, outputs=outputs, image_size=image_size,
                           batch_size=batch_size, tolerance=tolerance)
    summary: dict[str, Any] = {"format": format, "out": str(out), "source": str(checkpoint)}
    if format == "native" and read_task_info(checkpoint) is not None:  # a fine-tuned model, head included
        return {**summary, **_export_task_model(checkpoint, out)}
    if read_task_info(checkpoint) is not None:
        summary["note"] = "the encoder only: a task head has no official or timm form"
    model = load_model(checkpoint).eval()
    config: ModelConfig = model.config
    state = {key: value.detach().cpu().contiguous() for key, value in model.state_dict().items()}
    if format == "native":
        def check_native(tmp: Path) -> None:
            found, found_config = read_checkpoint(tmp)
            _same_tensors(state, found, str(out))
            if found_config != config:
                raise CheckpointError(f"{out}: re-loaded config differs from the model's")

        write_checked(out, lambda tmp: write_native(state, config, tmp, extra=origins(config)), check_native)
    elif format == "official":
        args = {"num_heads": config.num_heads, "decoder_num_heads": config.decoder_num_heads,
                "num_encoded_tokens": config.num_encoded_tokens}

        untold = {"alphas", "sample_tasks_uniformly", "drop_path_rate"}  # training settings, not architecture
        if not config.outputs:  # no decoders: nothing in the file says how they would be built
            untold |= {"decoder_dim", "decoder_depth", "decoder_num_heads", "decoder_mlp_ratio", "use_task_queries"}

        def check_official(tmp: Path) -> None:
            found, found_config = read_checkpoint(tmp)
            _same_tensors(state, found, str(out))
            if found_config.model_dump(exclude=untold) != config.model_dump(exclude=untold):
                raise CheckpointError(f"{out}: the architecture read back differs from the model's")

        write_checked(out, lambda tmp: save_torch({"model": state, "args": args}, tmp), check_official)
    else:
        summary.update(_export_timm(model, state, out))
    return summary


def _export_task_model(checkpoint: str | Path, out: Path) -> dict[str, Any]:
    """A fine-tuned checkpoint as a native file, encoder and head, re-read and compared before it is kept."""
    model = load_task_model(checkpoint).eval()
    state = {key: value.detach().cpu().contiguous() for key, value in model.state_dict().items()}

    def check(tmp: Path) -> None:
        again = load_task_model(tmp)
        _same_tensors(state, again.state_dict(), str(out))
        if again.task_info != model.task_info or again.config != model.config:
            raise CheckpointError(f"{out}: the fine-tuning record read back differs from the model's")

    write_checked(out, lambda tmp: save_model(model, tmp), check)
    return {"task": model.task_info["task"]}


def _export_timm(model, state: dict[str, torch.Tensor], out: Path) -> dict[str, Any]:
    """The rgb encoder as timm's VisionTransformer state dict, checked by loading it into timm."""
    import timm

    config: ModelConfig = model.config
    if "rgb" not in config.inputs:
        raise ConfigError("--format timm: the model has no rgb input, and timm ViTs take rgb images")
    if config.num_global_tokens != 1:
        raise ConfigError(f"--format timm: timm ViTs have one class token; this model has "
                          f"{config.num_global_tokens} global tokens")
    timm_state = official_to_timm(state)
    # timm's ViT ends in a LayerNorm that MultiViT lacks; an identity-affine one keeps the features as
    # LayerNorm(MultiViT features) without affine, and makes the file load with strict=True.
    timm_state["norm.weight"] = torch.ones(config.dim)
    timm_state["norm.bias"] = torch.zeros(config.dim)
    name, kwargs = timm_model_args(config)

    def write(tmp: Path) -> None:
        if out.suffix == ".safetensors":
            import json

            from safetensors.torch import save

            from .load import TIMM_ARGS_KEY

            record = {"timm_model": name, **kwargs, "num_heads": config.num_heads}  # `import timm` reads it back
            metadata = {"format": "pt", TIMM_ARGS_KEY: json.dumps(record)}
            write_bytes(tmp, save({k: v.contiguous() for k, v in timm_state.items()}, metadata=metadata))
        else:
            save_torch(timm_state, tmp)

    def check(tmp: Path) -> None:
        vit = (timm.create_model(name, checkpoint_path=str(tmp), **kwargs) if name
               else _timm_vit(kwargs, tmp)).eval()
        image = torch.randn(2, 3, *config.image_size, generator=torch.Generator().manual_seed(0))
        with torch.no_grad():
            ours = model.forward_features({"rgb": image})
            theirs = vit.forward_features(image)
        ours = torch.nn.functional.layer_norm(ours, (config.dim,), eps=1e-6)
        ours = torch.cat([ours[:, -1:], ours[:, :-1]], dim=1)  # global token last -> cls token first
        error = (ours - theirs).abs().max().item()
        if error > 1e-4:
            raise CheckpointError(f"{out}: timm's features differ from ours by {error:.2e}")

    write_checked(out, write, check)
    call = f"timm.create_model({name!r}" if name else "timm.models.VisionTransformer("
    arguments = ", ".join(f"{k}={v!r}" for k, v in kwargs.items())
    return {"timm_model": name, "timm_kwargs": kwargs,
            "load_with": f"{call}, {arguments}, checkpoint_path={str(out)!r})" if name
            else f"{call}{arguments}) + timm.models.load_checkpoint(model, {str(out)!r})"}


def _timm_vit(kwargs: dict[str, Any], path: Path):
    from timm.models import VisionTransformer, load_checkpoint

    vit = VisionTransformer(**kwargs)
    load_checkpoint(vit, str(path))
    return vit


def import_model(kind: str, source: str | Path, out: str | Path, overwrite: bool = False,
                 **overrides: Any) -> dict[str, Any]:
    """Convert an official MultiViT/MultiMAE `.pth` (`kind="official"`) or a timm ViT file (`"timm"`) into a
    native checkpoint (verified). `overrides` set what the file cannot tell (e.g. `num_heads`)."""
    from .native import is_safetensors
    from .official import is_timm_vit, read_torch_checkpoint

    if kind not in ("official", "timm"):
        raise ConfigError(f"import {kind}: expected 'official' or 'timm'")
    out = Path(out)
    if out.exists() and not overwrite:
        raise InputError(f"{out}: already exists (pass --overwrite to replace it)")
    source = Path(source)
    if not source.is_file():
        raise CheckpointError(f"{source}: no such file")
    if not is_safetensors(source):
        raw, _ = read_torch_checkpoint(source)
        if is_timm_vit(raw) != (kind == "timm"):
            found = "a timm ViT" if is_timm_vit(raw) else "an official MultiViT/MultiMAE"
            raise CheckpointError(f"{source}: holds {found} state dict, not {kind} weights "
                                  f"(use `multimae import {'timm' if is_timm_vit(raw) else 'official'}`)")
    model = load_model(source, **overrides)
    state = {key: value.detach().cpu().contiguous() for key, value in model.state_dict().items()}

    def check(tmp: Path) -> None:
        found, found_config = read_checkpoint(tmp)
        _same_tensors(state, found, str(out))
        if found_config != model.config:
            raise CheckpointError(f"{out}: re-loaded config differs from the model's")

    write_checked(out, lambda tmp: write_native(state, model.config, tmp, extra=origins(model.config)), check)
    config = model.config
    return {"out": str(out), "source": str(source), "inputs": list(config.inputs), "outputs": list(config.outputs),
            "dim": config.dim, "depth": config.depth, "num_heads": config.num_heads,
            "image_size": list(config.image_size)}
