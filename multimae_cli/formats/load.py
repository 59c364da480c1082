"""Weights in and out: `load_model` reads native, official and timm files; `save_model` writes native."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..config import ModelConfig
from ..errors import CheckpointError, ConfigError
from .native import config_from_metadata, is_safetensors, read_metadata, read_safetensors, write_native

if TYPE_CHECKING:
    import torch

    from ..model.multimae import MultiMAE

_LISTED = 6


TASK_KEY = "multimae.task"
PLUGINS_KEY = "multimae.plugins"  # header entry: the plugin (distribution, version) behind each modality and task
TIMM_ARGS_KEY = "multimae.timm_args"  # header entry of timm exports: what timm's weights cannot tell (head count)
WEIGHTS = "model.safetensors"


def checkpoint_file(path: str | Path) -> Path:
    """The weights file `path` names: a file, a checkpoint folder (`model.safetensors` inside), a run folder
    (its `best/` checkpoint when it has one, else `last/`), or a registered weights name (`multimae models`)."""
    from .weights import resolve_weights

    path, _ = resolve_weights(path)
    for candidate in (path, path / WEIGHTS, path / "best" / WEIGHTS, path / "last" / WEIGHTS):
        if candidate.is_file():
            return candidate
    if path.is_dir():
        raise CheckpointError(f"{path}: no {WEIGHTS} in this folder, nor in its best/ or last/")
    raise CheckpointError(f"{path}: no such file")


def save_model(model: MultiMAE, path: str | Path) -> None:
    """Write `model` (a MultiMAE, or a fine-tuned model with `.task_info`) as a native checkpoint
    (safetensors + config), atomically."""
    import json

    config = getattr(model, "config", None)
    if config is None:
        raise CheckpointError("this model has no .config: build it with create_model() or load_model()")
    task_info = getattr(model, "task_info", None)
    extra = {PLUGINS_KEY: json.dumps(plugin_origins(config, task_info))}
    if task_info is not None:
        extra[TASK_KEY] = json.dumps(task_info)
    write_native(model.state_dict(), config, path, extra=extra)


def plugin_origins(config: ModelConfig, task_info: dict[str, Any] | None) -> dict[str, Any]:
    """The plugin behind each modality of `config` (and the task of `task_info`): what a checkpoint records."""
    from ..plugin.registry import get_registry

    registry = get_registry()
    names = dict.fromkeys([*config.inputs, *config.outputs])
    origins: dict[str, Any] = {"modalities": {name: registry.origin("modalities", name) for name in names}}
    if task_info is not None:
        origins["task"] = {task_info["task"]: registry.origin("tasks", task_info["task"])}
    return origins


def check_plugins(path: Path, metadata: dict[str, str], config: ModelConfig, task: str | None = None) -> None:
    """Before a model is built: every modality of `config` (and `task`) is registered here, or one line naming
    the plugin distribution (and version) that defined it when the checkpoint was saved."""
    import json

    from ..plugin.registry import get_registry

    registry = get_registry()
    recorded = json.loads(metadata.get(PLUGINS_KEY, "{}"))
    needed = {"modalities": dict.fromkeys([*config.inputs, *config.outputs]), "task": [task] if task else []}
    for kind, found in (("modalities", registry.modalities()), ("task", registry.tasks())):
        for name in needed[kind]:
            if name in found:
                continue
            origin = (recorded.get(kind) or {}).get(name)
            what = "modality" if kind == "modalities" else "task"
            where = ""
            if origin and origin.get("distribution"):
                version = f" {origin['version']}" if origin.get("version") else ""
                where = (f", which the plugin {origin['plugin']!r} of {origin['distribution']}{version} defined: "
                         f"install it (pip install {origin['distribution']})")
            raise CheckpointError(f"{path}: saved with the {what} {name!r}{where}; it is not registered here "
                                  f"(registered: {', '.join(sorted(found)) or 'none'})")


def read_task_info(path: str | Path) -> dict[str, Any] | None:
    """The fine-tuning record of a native checkpoint (task, head, classes, ...), None for other files."""
    import json

    try:
        path = checkpoint_file(path)
    except CheckpointError:
        return None
    if not is_safetensors(path):
        return None
    metadata = read_metadata(path)
    try:
        return json.loads(metadata[TASK_KEY]) if TASK_KEY in metadata else None
    except ValueError as exc:
        raise CheckpointError(f"{path}: invalid fine-tuning record in the file header ({exc})") from None


def load_task_model(path: str | Path, **overrides: Any):
    """A fine-tuned model (encoder + task head) written by `multimae finetune`. `overrides` as `load_model`."""
    from ..plugin.factory import build_task_model
    from ..plugin.registry import get_registry

    path = checkpoint_file(path)
    info = read_task_info(path)
    if info is None:
        raise CheckpointError(f"{path}: not a fine-tuned checkpoint (it has no task head)")
    state_dict, metadata = read_safetensors(path)
    config = config_from_metadata(metadata, path)
    if overrides:
        config = config.replace(**overrides)
    check_plugins(path, metadata, config.replace(outputs=()), info["task"])
    from ..plugin.factory import create_model

    backbone = create_model(config.replace(outputs=()))
    model = build_task_model(backbone, get_registry().task(info["task"]), info["head"], info["num_outputs"],
                             info.get("head_options"), task_info=info)
    own = {k.removeprefix("backbone."): v for k, v in state_dict.items() if k.startswith("backbone.")}
    own = {f"backbone.{k}": v for k, v in _resample_positions(own, backbone).items()}
    own.update({k: v for k, v in state_dict.items() if not k.startswith("backbone.")})
    load_weights(model, own, source=str(path))
    return model


def read_checkpoint(path: str | Path, **overrides: Any):
    """The state dict (official key names) of any supported file (or checkpoint / run folder, `checkpoint_file`)
    and the config that rebuilds its model."""
    path = checkpoint_file(path)
    safetensors = is_safetensors(path)
    if not safetensors and not _looks_like_torch(path):
        raise CheckpointError(f"{path}: not a checkpoint (neither safetensors nor a PyTorch .pth file)")
    from .official import infer_config, is_timm_vit, read_torch_checkpoint, timm_to_official

    args: dict[str, Any] = {}
    config = None
    if safetensors:
        state_dict, metadata = read_safetensors(path)
        config = config_from_metadata(metadata, path)
        if TIMM_ARGS_KEY in metadata:  # a timm file we exported knows its head count
            import json

            args = {"num_heads": json.loads(metadata[TIMM_ARGS_KEY])["num_heads"]}
        if TASK_KEY in metadata:  # a fine-tuned file: its encoder, the task head left out
            state_dict = {k.removeprefix("backbone."): v for k, v in state_dict.items() if k.startswith("backbone.")}
    else:
        state_dict, args = read_torch_checkpoint(path)
    if is_timm_vit(state_dict):
        state_dict = timm_to_official(state_dict)
    if config is None:
        try:
            config = infer_config(state_dict, args, **overrides)
        except CheckpointError as exc:
            raise CheckpointError(f"{path}: {exc}") from None
    elif overrides:
        config = config.replace(**overrides)
    if safetensors:
        check_plugins(path, metadata, config)
    return state_dict, config


def load_model(path: str | Path, **overrides: Any) -> MultiMAE:
    """Rebuild and load a model from a native `.safetensors`, an official MultiViT/MultiMAE `.pth` or a timm
    ViT file. `overrides` change config fields: head counts the weights cannot tell (`num_heads=`,
    `decoder_num_heads=`), a subset of `inputs`/`outputs` (other adapters' weights are left out), or
    `image_size` (stored position grids are resampled bicubically, as the official fine-tuning does).
    """
    from ..plugin.factory import create_model

    unknown = [key for key in overrides if key not in ModelConfig.model_fields]
    if unknown:
        raise ConfigError(f"{', '.join(unknown)}: unknown key (model config fields: "
                          f"{', '.join(ModelConfig.model_fields)})")
    from .weights import resolve_weights

    path, defaults = resolve_weights(path)  # a name: its cached file and what the file cannot tell
    state_dict, config = read_checkpoint(path, **{**defaults, **overrides})
    model = create_model(config)
    if "inputs" in overrides or "outputs" in overrides:
        state_dict = _drop_unused_adapters(state_dict, model)
    load_weights(model, _resample_positions(state_dict, model), source=str(path))
    return model


def _looks_like_torch(path: Path) -> bool:
    with open(path, "rb") as handle:
        head = handle.read(4)
    return head.startswith(b"PK\x03\x04") or head[:1] == b"\x80"


def _drop_unused_adapters(state_dict: dict[str, torch.Tensor], model: MultiMAE) -> dict[str, torch.Tensor]:
    keep = {f"input_adapters.{name}." for name in model.input_adapters}
    keep |= {f"output_adapters.{name}." for name in model.output_adapters}
    return {key: value for key, value in state_dict.items()
            if not key.startswith(("input_adapters.", "output_adapters.")) or key.startswith(tuple(keep))}


def _resample_positions(state_dict: dict[str, torch.Tensor], model: MultiMAE) -> dict[str, torch.Tensor]:
    """Stored sin-cos grids of another resolution, resized to the model's (bicubic, align_corners=False)."""
    import torch.nn.functional as F

    own = model.state_dict()
    out = dict(state_dict)
    for key, value in state_dict.items():
        if key.endswith(".pos_emb") and key in own and value.shape[:2] == own[key].shape[:2] \
                and value.shape != own[key].shape:
            out[key] = F.interpolate(value, size=own[key].shape[-2:], mode="bicubic", align_corners=False)
    return out


def load_weights(model, state_dict: dict[str, torch.Tensor], source: str = "checkpoint") -> None:
    """Load exactly: every key present, none extra, every shape equal, or one error listing what differs."""
    own = model.state_dict()
    missing = [key for key in own if key not in state_dict]
    unexpected = [key for key in state_dict if key not in own]
    mismatched = [f"{key} {tuple(state_dict[key].shape)} vs model {tuple(own[key].shape)}"
                  for key in own if key in state_dict and state_dict[key].shape != own[key].shape]
    if missing or unexpected or mismatched:
        parts = []
        for label, keys in (("missing", missing), ("unexpected", unexpected), ("shape mismatch", mismatched)):
            if keys:
                more = f" and {len(keys) - _LISTED} more" if len(keys) > _LISTED else ""
                parts.append(f"{label} ({len(keys)}): {', '.join(keys[:_LISTED])}{more}")
        raise CheckpointError(f"{source} does not fit the model architecture: {'; '.join(parts)}")
    model.load_state_dict(state_dict, strict=True)
