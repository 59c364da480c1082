"""Build models, objectives and fine-tuning models from configs and the registered plugins."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from ..config import ModelConfig, PretrainConfig
from ..errors import ConfigError, PluginError
from .modality import AdapterContext, DecoderContext, Modality
from .registry import Registry, get_registry
from .task import HeadContext, Task

if TYPE_CHECKING:
    from ..model.losses import PretrainObjective
    from ..model.multimae import MultiMAE


def resolve_modalities(config: ModelConfig, registry: Registry | None = None,
                       names: list[str] | None = None) -> dict[str, Modality]:
    """The modalities `names` (default: the config's inputs and outputs), with channel overrides applied."""
    registry = registry or get_registry()
    names = names or list(dict.fromkeys([*config.inputs, *config.outputs]))
    resolved: dict[str, Modality] = {}
    for name in names:
        modality = registry.modality(name)
        if name in config.channels:
            modality = modality.with_channels(config.channels[name])
        if name in config.modality_options:
            modality = modality.with_options(config.modality_options[name])
        resolved[name] = modality
    return resolved


def complete_config(config: ModelConfig, registry: Registry | None = None) -> ModelConfig:
    """The config with every modality's channel count and options written out, so a saved file rebuilds alone."""
    modalities = resolve_modalities(config, registry)
    stray = [name for name in config.modality_options if name not in modalities]
    if stray:
        raise ConfigError(f"modality_options.{stray[0]}: {stray[0]!r} is not an input or output of this model "
                          f"({', '.join(modalities)})")
    return config.replace(channels={name: m.channels for name, m in modalities.items()},
                          modality_options={name: dict(m.options) for name, m in modalities.items() if m.options})


def create_model(config: ModelConfig, registry: Registry | None = None) -> MultiMAE:
    """A freshly initialised MultiMAE for `config`; `model.config` keeps the completed config."""
    from ..model.multimae import MultiMAE

    config = complete_config(config, registry)
    modalities = resolve_modalities(config, registry)
    adapter_ctx = AdapterContext(config.patch_size, config.dim, config.image_size)
    inputs = {}
    for name in config.inputs:
        modality = modalities[name]
        if modality.input_adapter is None:
            raise PluginError(f"modality {name!r} cannot be an input: its plugin gives no input adapter")
        inputs[name] = modality.input_adapter(modality, adapter_ctx)
    decoder_ctx = DecoderContext(
        config.patch_size, config.dim, config.image_size, config.decoder_dim, config.decoder_depth,
        config.decoder_num_heads, config.decoder_mlp_ratio, config.qkv_bias, tuple(config.inputs),
        config.use_task_queries,
    )
    outputs = {}
    for name in config.outputs:
        modality = modalities[name]
        if modality.output_adapter is None:
            raise PluginError(f"modality {name!r} cannot be an output: its plugin gives no output adapter")
        outputs[name] = modality.output_adapter(modality, decoder_ctx)
    model = MultiMAE(
        inputs, outputs, dim=config.dim, depth=config.depth, num_heads=config.num_heads,
        mlp_ratio=config.mlp_ratio, qkv_bias=config.qkv_bias, num_global_tokens=config.num_global_tokens,
        drop_path_rate=config.drop_path_rate, num_encoded_tokens=config.num_encoded_tokens,
        alphas=config.alphas, sample_tasks_uniformly=config.sample_tasks_uniformly, config=config,
    )
    return model


def create_objective(config: ModelConfig, weights: dict[str, float] | None = None,
                     registry: Registry | None = None) -> PretrainObjective:
    """The masked pretraining loss of every output modality, weighted (default weight 1)."""
    from ..model.losses import PretrainObjective

    modalities = resolve_modalities(config, registry)
    losses, sources = {}, {}
    for name in config.outputs:
        modality = modalities[name]
        if modality.loss is None:
            raise PluginError(f"modality {name!r} has no loss: its plugin cannot train it as an output")
        losses[name] = modality.loss(modality, config.patch_size)
        sources[name] = modality.source
    return PretrainObjective(losses, sources, weights)


def build_task_model(backbone: MultiMAE, task: Task, head: str, num_outputs: int,
                     options: Mapping[str, Any] | None = None, task_info: dict[str, Any] | None = None):
    """The encoder of `backbone` (its decoders dropped) plus `task`'s head `head`; `task_info` is the record its
    checkpoint keeps (task, head, num_outputs, classes, ...: what `load_task_model` rebuilds it from)."""
    from ..model.multimae import FinetuneModel

    if head not in task.heads:
        raise ConfigError(f"head: {head!r} is not a head of task {task.name!r} (heads: {', '.join(task.heads)})")
    config = backbone.config
    context = HeadContext(config.dim, config.depth, config.patch_size, tuple(config.image_size),
                          tuple(config.inputs), num_outputs, dict(options or {}))
    return FinetuneModel(backbone, task.heads[head](context), task_info)


def pretrain_model_config(config: PretrainConfig, registry: Registry | None = None) -> ModelConfig:
    """The ModelConfig of a pretraining run, with the companion outputs the plugins declare
    (`Modality.companion`, e.g. rgb's `norm_rgb`) added to the outputs they come with."""
    companions: dict[str, list[str]] = {}
    for modality in (registry or get_registry()).modalities().values():
        if modality.companion and modality.target:
            companions.setdefault(modality.target, []).append(modality.name)
    return config.model_config_resolved(companions)
