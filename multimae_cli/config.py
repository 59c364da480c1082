"""Typed configuration. Unknown keys are errors; every model is rebuilt from its `ModelConfig` alone."""

from __future__ import annotations

import os
import re
from collections.abc import Mapping, Sequence
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, field_validator, model_validator

from .errors import ConfigError

ImageSize = Annotated[tuple[Annotated[int, Field(ge=1)], Annotated[int, Field(ge=1)]],
                      BeforeValidator(lambda v: (v, v) if isinstance(v, int) else v)]
"""(height, width); a single number means a square."""
Count = Annotated[int, Field(ge=1)]  # sizes, steps, intervals: at least one
Amount = Annotated[int, Field(ge=0)]  # may be zero (workers, global tokens, warmup steps)
Positive = Annotated[float, Field(gt=0)]
NonNegative = Annotated[float, Field(ge=0)]
Fraction = Annotated[float, Field(ge=0, lt=1)]
Probability = Annotated[float, Field(ge=0, le=1)]

PRESETS: dict[str, dict[str, Any]] = {
    "tiny": {"dim": 192, "depth": 12, "num_heads": 3, "decoder_dim": 128, "decoder_num_heads": 4},
    "small": {"dim": 384, "depth": 12, "num_heads": 6},
    "base": {"dim": 768, "depth": 12, "num_heads": 12},
    "large": {"dim": 1024, "depth": 24, "num_heads": 16},
}


class ModelConfig(BaseModel):
    """Architecture of a MultiMAE model. The defaults are the official ViT-B pretraining model."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    inputs: tuple[str, ...] = ("rgb", "depth", "semseg")
    outputs: tuple[str, ...] = ("rgb", "depth", "semseg", "norm_rgb")
    channels: dict[str, int] = {}
    modality_options: dict[str, dict[str, Any]] = {}  # name -> the options its plugin declares (Modality.options)
    image_size: ImageSize = (224, 224)
    patch_size: Count = 16
    dim: Count = 768
    depth: Count = 12
    num_heads: Count = 12
    mlp_ratio: Positive = 4.0
    qkv_bias: bool = True
    num_global_tokens: Amount = 1
    drop_path_rate: Fraction = 0.0
    decoder_dim: Count = 256
    decoder_depth: Amount = 2
    decoder_num_heads: Count = 8
    decoder_mlp_ratio: Positive = 4.0
    use_task_queries: bool = True
    num_encoded_tokens: int = 98
    alphas: float | tuple[float, ...] = 1.0
    sample_tasks_uniformly: bool = False

    @model_validator(mode="after")
    def _consistent(self) -> ModelConfig:
        if not self.inputs:
            raise ValueError("inputs: at least one input modality is needed")
        for field in ("inputs", "outputs"):
            names = getattr(self, field)
            if len(set(names)) != len(names):
                raise ValueError(f"{field}: duplicate modality in {list(names)}")
        if any(size % self.patch_size for size in self.image_size):
            raise ValueError(f"image_size {self.image_size} must be a multiple of patch_size {self.patch_size}")
        widths = ((self.dim, self.num_heads, ""), (self.decoder_dim, self.decoder_num_heads, "decoder_"))
        for dim, heads, what in widths:
            if dim % heads:
                raise ValueError(f"{what}dim {dim} is not divisible by {what}num_heads {heads}")
            if dim % 4:
                raise ValueError(f"{what}dim {dim} must be divisible by 4 (2-D sin-cos position embedding)")
        total = len(self.inputs) * (self.image_size[0] // self.patch_size) * (self.image_size[1] // self.patch_size)
        if not 0 <= self.num_encoded_tokens <= total:
            raise ValueError(f"num_encoded_tokens {self.num_encoded_tokens} must lie in [0, {total}] "
                             f"(the token count of {len(self.inputs)} inputs at {self.image_size})")
        if isinstance(self.alphas, tuple) and len(self.alphas) != len(self.inputs):
            raise ValueError(f"alphas: {len(self.alphas)} values for {len(self.inputs)} inputs")
        return self

    @property
    def grid(self) -> tuple[int, int]:
        """Tokens per modality along height and width."""
        return self.image_size[0] // self.patch_size, self.image_size[1] // self.patch_size

    @classmethod
    def from_preset(cls, preset: str, **overrides: Any) -> ModelConfig:
        """A preset (`tiny`, `small`, `base`, `large`) with fields overridden."""
        if preset not in PRESETS:
            raise ConfigError(f"unknown preset {preset!r} (choose from {', '.join(PRESETS)})")
        return build_config(ModelConfig, {**PRESETS[preset], **overrides})

    def replace(self, **changes: Any) -> ModelConfig:
        """A validated copy with some fields changed."""
        return build_config(ModelConfig, {**self.model_dump(), **changes})


def build_config(cls: type[BaseModel], values: dict[str, Any]) -> Any:
    """Validate `values` into `cls`, turning pydantic's report into a one-line ConfigError naming the key."""
    try:
        return cls.model_validate(values)
    except ValidationError as exc:
        problems = []
        for error in exc.errors():
            key = ".".join(str(part) for part in error["loc"]) or "config"
            if error["type"] == "extra_forbidden":
                problems.append(f"{key}: unknown key")
            elif error["type"] == "value_error" and not error["loc"]:
                problems.append(error["msg"].removeprefix("Value error, "))
            else:
                problems.append(f"{key}: {error['msg'].removeprefix('Value error, ')}")
        raise ConfigError("; ".join(problems)) from None


# ---------------------------------------------------------------- pretraining


def workers_setting(value: Any) -> int | str:
    """A loader-workers setting as given in a config or on a command line: `auto` or a count >= 0."""
    if value == "auto" or (isinstance(value, int) and not isinstance(value, bool) and value >= 0):
        return value
    if isinstance(value, str) and value.strip().isdigit():
        return int(value)
    raise ValueError(f"expected 'auto' or a number of loader processes >= 0, got {value!r}")


class DataConfig(BaseModel):
    """Where training samples come from and how they are augmented."""

    model_config = ConfigDict(extra="forbid")

    source: Literal["synthetic", "folder"] = "synthetic"
    path: str | None = None
    split: str = "train"
    synthetic_scenes: Count = 4096
    val_scenes: Count = 64
    render_size: Count | None = None
    workers: Amount | Literal["auto"] = "auto"  # DataLoader processes; auto: see data.datasets.loader_workers
    skip_bad: bool = False
    # Shard folders (`multimae data shard`): samples pass a shuffle buffer this large, shard by shard; 0 reads in
    # the folder's random order instead (random access: the same batches as the folder gives)
    shuffle_buffer: Amount = 1000
    crop_scale: tuple[Annotated[float, Field(gt=0, le=1)], Annotated[float, Field(gt=0, le=1)]] = (0.2, 1.0)
    hflip: Probability = 0.5

    @field_validator("workers", mode="before")
    @classmethod
    def _workers(cls, value: Any) -> Any:
        return workers_setting(value)  # one clear error instead of one per member of the union

    @model_validator(mode="after")
    def _path_for_folders(self) -> DataConfig:
        if self.source == "folder" and not self.path:
            raise ValueError("data.path: a folder dataset needs a path")
        return self


class OptimConfig(BaseModel):
    """AdamW with a warmup + cosine schedule; `lr = blr * total_batch / 256` unless `lr` is given. With neither
    (fine-tuning's default), the run's own recipe picks the lr (`FinetuneConfig.resolved_lr`)."""

    model_config = ConfigDict(extra="forbid")

    blr: Positive | None = 1e-4
    lr: Positive | None = None
    min_lr: NonNegative = 0.0
    weight_decay: NonNegative = 0.05
    decay_everything: bool = False
    betas: tuple[Fraction, Fraction] = (0.9, 0.95)
    eps: Positive = 1e-8
    warmup_steps: Amount | None = None
    warmup_fraction: Fraction = 0.025
    clip_grad: Positive | None = None
    accum_steps: Count = 1


_DURATION = re.compile(r"(\d+(?:\.\d+)?)\s*(s|min|h)")


def _seconds(duration: str) -> float:
    number, unit = _DURATION.fullmatch(duration.strip()).groups()
    return float(number) * {"s": 1, "min": 60, "h": 3600}[unit]


class RunConfig(BaseModel):
    """What every training run has: length, batch, precision, device, seed, where it is written."""

    model_config = ConfigDict(extra="forbid")

    batch_size: Count = 16
    steps: Count | None = None
    epochs: Positive | None = None
    precision: Literal["auto", "bf16", "fp16", "fp32"] = "auto"
    compile: bool = False
    # reduce-overhead: CUDA graphs too (one process): kernel launches cost the host almost nothing, which matters
    # for small batches and leaves the CPUs to the loader (docs/performance.md)
    compile_mode: Literal["default", "reduce-overhead"] = "default"
    activation_checkpointing: bool = False  # recompute encoder activations in backward: less memory, more compute
    device: Literal["auto", "cpu", "cuda"] = "auto"
    # torch's intra-op threads in the training process; auto: OMP_NUM_THREADS if set, else the CPUs its affinity
    # allows shared among the torchrun processes of the machine (torch's own default, every core, oversubscribes)
    threads: Count | Literal["auto"] = "auto"
    loggers: list[str] = []  # run loggers besides metrics.jsonl, by their registered name: tensorboard, yours
    seed: int = 0
    out_dir: str = "runs"
    name: str | None = None
    log_every: Count = 10
    checkpoint_every: Count | str = "10min"  # steps, or a duration: 90s, 10min, 2h

    @field_validator("checkpoint_every", mode="before")
    @classmethod
    def _steps_or_duration(cls, value: Any) -> Any:
        if isinstance(value, str) and value.strip().isdigit():
            value = int(value)
        if isinstance(value, int) and not isinstance(value, bool) and value >= 1:
            return value
        if isinstance(value, str) and _DURATION.fullmatch(value.strip()) and _seconds(value) > 0:
            return value.strip()
        raise ValueError(f"expected a number of steps >= 1 or a duration such as 90s, 10min or 2h, got {value!r}")

    @property
    def checkpoint_seconds(self) -> float | None:
        """`checkpoint_every` in seconds when it is a duration; None when it counts steps."""
        return _seconds(self.checkpoint_every) if isinstance(self.checkpoint_every, str) else None

    @model_validator(mode="after")
    def _check_compile_mode(self) -> RunConfig:
        if self.compile_mode != "default" and not self.compile:
            raise ValueError(f"compile_mode: {self.compile_mode} needs compile: true")
        if self.compile_mode == "reduce-overhead" and int(os.environ.get("WORLD_SIZE", "1")) > 1:
            raise ValueError("compile_mode: reduce-overhead (CUDA graphs) runs in one process only; "
                             "use compile_mode: default under torchrun")
        return self


class PretrainConfig(RunConfig):
    """A whole pretraining run. `model` holds ModelConfig fields on top of `preset`."""

    model_config = ConfigDict(extra="forbid")

    preset: str = "tiny"
    model: dict[str, Any] = {"image_size": 64, "depth": 6}
    norm_pix_target: bool = True
    # the fraction of input tokens masked (`--mask-ratio`): MAE's 0.75 is 0.75; default: 5/6 (the official 98 of 588)
    mask_ratio: Fraction | None = None
    loss_weights: dict[str, float] = {}
    data: DataConfig = DataConfig()
    optim: OptimConfig = OptimConfig(blr=8e-3)  # lr 5e-4 at batch 16: the tiny CPU recipe
    preview_every: Amount = 100  # 0: no previews

    @model_validator(mode="after")
    def _check(self) -> PretrainConfig:
        if self.steps is None and self.epochs is None:
            self.steps = 800
        if self.optim.lr is None and self.optim.blr is None:
            raise ValueError("optim: give lr (absolute) or blr (scaled by total batch / 256)")
        self.model_config_resolved()
        return self

    def model_config_resolved(self, companions: Mapping[str, Sequence[str]] | None = None) -> ModelConfig:
        """The ModelConfig of this run: preset + overrides, a sixth of the tokens encoded (or 1 - `mask_ratio`),
        and (`norm_pix_target`) the `companions` of its outputs added: output name -> the outputs that come with
        it, which the plugins declare (`plugin.factory.pretrain_model_config` passes them)."""
        if self.mask_ratio is not None and "num_encoded_tokens" in self.model:
            raise ValueError("mask_ratio and model.num_encoded_tokens are both set: give one (mask_ratio is the "
                             "fraction masked, num_encoded_tokens the count kept)")
        values = dict(self.model)
        outputs = tuple(values.get("outputs", values.get("inputs", ModelConfig().inputs)))
        if self.norm_pix_target:
            added = [name for output in outputs for name in (companions or {}).get(output, ())]
            outputs = tuple(dict.fromkeys([*outputs, *added]))
        values["outputs"] = outputs
        try:
            config = ModelConfig.from_preset(self.preset, **{"num_encoded_tokens": 0, **values})
            tokens = len(config.inputs) * config.grid[0] * config.grid[1]
            if "num_encoded_tokens" not in self.model:
                visible = tokens * (1 - self.mask_ratio) if self.mask_ratio is not None else tokens / 6
                config = config.replace(num_encoded_tokens=max(1, round(visible)))
        except ConfigError as exc:
            raise ValueError("; ".join(f"model.{part}" for part in str(exc).split("; "))) from None
        return config


def _deep_merge(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in update.items():
        merged[key] = _deep_merge(merged[key], value) if isinstance(value, dict) and isinstance(
            merged.get(key), dict) else value
    return merged


def parse_assignment(text: str) -> dict[str, Any]:
    """`a.b=value` (value parsed as YAML) -> {"a": {"b": value}}."""
    import yaml

    key, sep, raw = text.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"--set {text!r}: expected key=value (e.g. optim.blr=1.5e-4)")
    value: Any = yaml.safe_load(raw) if raw.strip() else None
    for part in reversed(key.strip().split(".")):
        value = {part: value}
    return value


def load_pretrain_config(config_file: str | None = None, flags: dict[str, Any] | None = None,
                         assignments: list[str] | None = None) -> PretrainConfig:
    """Defaults < `config_file` (YAML) < `flags` < `--set a.b=value` assignments."""
    return load_config(PretrainConfig, config_file, flags, assignments)


def load_config(cls: type[BaseModel], config_file: str | None = None, flags: dict[str, Any] | None = None,
                assignments: list[str] | None = None) -> Any:
    """A `cls` config from defaults < `config_file` (YAML) < `flags` < `--set a.b=value` assignments."""
    import yaml

    values: dict[str, Any] = {}
    for name, field in cls.model_fields.items():  # nested defaults, so a partial override merges into them
        if isinstance(field.default, BaseModel):
            values[name] = field.default.model_dump()
        elif isinstance(field.default, dict):
            values[name] = dict(field.default)
    if config_file:
        from pathlib import Path

        path = Path(config_file)
        if not path.is_file():
            raise ConfigError(f"{path}: no such config file")
        try:
            loaded = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as exc:
            raise ConfigError(f"{path}: invalid YAML ({str(exc).splitlines()[0]})") from None
        if not isinstance(loaded, dict):
            raise ConfigError(f"{path}: a config file must hold a mapping of keys")
        values = _deep_merge(values, loaded)
        try:  # a mistake in the file is reported as the file's
            build_config(cls, values)
        except ConfigError as exc:
            raise ConfigError(f"{path}: {exc}") from None
    values = _deep_merge(values, flags or {})
    for assignment in assignments or []:
        values = _deep_merge(values, parse_assignment(assignment))
    return build_config(cls, values)


# ---------------------------------------------------------------- fine-tuning

DENSE_LR = 1e-4  # the official dense fine-tuning lr, absolute
PROBE_LR = 2e-3  # a head alone on a frozen encoder


class FinetuneConfig(RunConfig):
    """A fine-tuning run: a task's head on a pretrained encoder (or a fresh one when `checkpoint` is None)."""

    model_config = ConfigDict(extra="forbid")

    task: str = "depth"
    checkpoint: str | None = None
    num_heads: Count | None = None  # for a checkpoint that cannot tell it (timm files; official ones without args)
    inputs: tuple[str, ...] | None = None
    image_size: ImageSize | None = None
    preset: str = "tiny"
    model: dict[str, Any] = {"image_size": 64, "depth": 6}
    head: str | None = None
    head_options: dict[str, Any] = {}
    loss: str | None = None
    loss_options: dict[str, Any] = {}
    mixup: dict[str, Any] = {}
    num_classes: Count | None = None
    reduce_zero_label: bool = False
    depth_scale: Positive | None = None
    data: DataConfig = DataConfig()
    val_split: str | None = "val"
    # neither lr nor blr: the official recipe of the task's kind (`resolved_lr`), which learns at any batch size
    optim: OptimConfig = OptimConfig(blr=None, betas=(0.9, 0.999), warmup_fraction=0.05)
    layer_decay: float | None = 0.75
    drop_path_rate: Fraction = 0.1
    freeze_encoder: bool = False  # train the head alone on fixed features (with head: linear, a linear probe)
    eval_every: Count = 100

    @model_validator(mode="after")
    def _check(self) -> FinetuneConfig:
        if self.steps is None and self.epochs is None:
            self.steps = 500
        if self.layer_decay is not None and not 0 < self.layer_decay <= 1:
            raise ValueError(f"layer_decay: must lie in (0, 1], got {self.layer_decay}")
        return self

    def resolved_lr(self, kind: str, total_batch: int) -> float:
        """`optim.lr`, else `optim.blr * total_batch / 256`, else the official recipe for the task's kind:
        classification blr 5e-4 scaled by the batch (ImageNet: 2e-3 at 1024), dense tasks an absolute 1e-4
        (ADE20K, Hypersim, NYUv2), which also learns at the small batches of one GPU or a CPU. A head on a
        frozen encoder (a probe) gets an absolute 2e-3: at 1e-4 a linear depth probe reached delta1 0.11 in
        50 steps, at 2e-3 0.52 (docs/results.md)."""
        if self.optim.lr is not None:
            return self.optim.lr
        if self.optim.blr is not None:
            return self.optim.blr * total_batch / 256
        if self.freeze_encoder:
            return PROBE_LR
        return 5e-4 * total_batch / 256 if kind == "classification" else DENSE_LR
