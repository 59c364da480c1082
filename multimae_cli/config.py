"""Typed configuration. Unknown keys are errors; every model is rebuilt from its `ModelConfig` alone."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError, field_validator, model_validator

from .errors import ConfigError

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
    image_size: tuple[int, int] = (224, 224)
    patch_size: int = 16
    dim: int = 768
    depth: int = 12
    num_heads: int = 12
    mlp_ratio: float = 4.0
    qkv_bias: bool = True
    num_global_tokens: int = 1
    drop_path_rate: float = 0.0
    decoder_dim: int = 256
    decoder_depth: int = 2
    decoder_num_heads: int = 8
    decoder_mlp_ratio: float = 4.0
    use_task_queries: bool = True
    num_encoded_tokens: int = 98
    alphas: float | tuple[float, ...] = 1.0
    sample_tasks_uniformly: bool = False

    @field_validator("image_size", mode="before")
    @classmethod
    def _square(cls, value: Any) -> Any:
        return (value, value) if isinstance(value, int) else value

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
            message = "unknown key" if error["type"] == "extra_forbidden" else error["msg"]
            problems.append(f"{key}: {message}")
        raise ConfigError("; ".join(problems)) from None
