"""What the objects a plugin's factories return must offer: the whole contract between a plugin and the engine.

`Modality.input_adapter`, `.output_adapter` and `.loss` and `Task.heads` / `.metrics` are factories; these
protocols are what their products are called with and must have. The ready-made ones (`PatchInput`,
`SpatialOutput`, `MaskedL1`, the heads of `multimae_cli.model.heads`, the `Metric` base) follow them, and the
conformance kit (`multimae_cli.testing`) checks a plugin's against them. Written as `typing.Protocol`s:
nothing needs to inherit from them, and `isinstance` checks the attributes' presence.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar, Protocol, runtime_checkable

if TYPE_CHECKING:
    import torch


@runtime_checkable
class InputAdapter(Protocol):
    """An `nn.Module` turning one modality's batch into patch tokens.

    `forward(data)`: data (B, C, H', W') (labels (B, H', W')) at `image size / stride` -> tokens (B, N, dim) with
    their positions added, N = (H / patch size) * (W / patch size) in row-major order.
    """

    patch: int  # pixels of this modality's data per token side: patch size // stride
    stride: int  # how many image pixels one data pixel covers (1 for full-resolution data)

    def __call__(self, data: torch.Tensor) -> torch.Tensor: ...

    def image_size(self, data: torch.Tensor) -> tuple[int, int]:
        """The image resolution `data` stands for (its size times `stride`)."""
        ...

    def no_weight_decay(self) -> set[str]:
        """Names of parameters (relative to the adapter) that weight decay must skip, e.g. positions."""
        ...


@runtime_checkable
class OutputDecoder(Protocol):
    """An `nn.Module` predicting one modality from the encoded tokens.

    `forward(encoder_tokens, layout, ids_keep, ids_restore)`: encoder_tokens (B, V + G, dim) are the V visible
    tokens in `ids_keep` order then the G global tokens; `layout` (`TokenLayout`) gives the modality order and the
    token grid; `ids_restore` (B, N) puts the visible-then-masked order back into the layout's. Returns the
    prediction (B, C, H', W') at `image size / stride`, the space of `Modality.normalize`'s output.
    """

    patch: int

    def __call__(self, encoder_tokens: torch.Tensor, layout: Any, ids_keep: torch.Tensor,
                 ids_restore: torch.Tensor) -> torch.Tensor: ...

    def no_weight_decay(self) -> set[str]: ...


@runtime_checkable
class MaskedLoss(Protocol):
    """An `nn.Module` scoring a prediction against the normalised target on masked tokens.

    `forward(pred, target, mask)`: pred (B, C, H', W'), target as `normalize` returns it, mask (B, N) with 1 for
    the tokens the encoder did not see (None: every pixel). Returns a scalar.
    """

    def __call__(self, pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        ...


@runtime_checkable
class Head(Protocol):
    """An `nn.Module` turning encoder features into a task's output.

    `forward(features, layout, image_size)`: features are the encoder's tokens (B, N + G, dim), or a list of
    them, one per layer of `HeadContext.depth`, when the head sets `needs_all_layers = True`; `layout` gives the
    token grid; `image_size` (H, W) is the input's. Returns (B, num_outputs, H, W) for dense tasks or
    (B, num_outputs) for classification, the space `Task.loss` and `Task.metrics` take.
    """

    def __call__(self, features: Any, layout: Any, image_size: tuple[int, int]) -> torch.Tensor: ...


@runtime_checkable
class Metric(Protocol):
    """What `Task.metrics(num_outputs)` returns: an accumulator exact over a whole split and under DDP.

    The engine calls `update(pred, target)` per batch (pred as the head returns it, target as
    `Task.prepare_target` returns it), `sync()` once on every rank, then `compute()`; `main` names the entry of
    `compute()` that chooses the `best/` checkpoint, and `higher_is_better` its direction. Subclass
    `multimae_cli.Metric` to get `sync()` and `reset()` for free.
    """

    main: ClassVar[str]
    higher_is_better: ClassVar[bool]

    def update(self, pred: torch.Tensor, target: torch.Tensor) -> None: ...

    def sync(self) -> None: ...

    def compute(self) -> dict[str, float]: ...


@runtime_checkable
class LogWriter(Protocol):
    """What `Logger.open(run, config)` returns: one run's destination for its scalars and pictures.

    The engine calls `scalars(step, values)` at every logging step (training losses by modality, `lr`, `img_per_s`;
    `val/<metric>` after an evaluation), `image(step, tag, image)` for each preview (an RGB uint8 (H, W, 3)
    array), and `close()` once when the run ends, however it ends. Rank 0 alone logs under torchrun.
    """

    def scalars(self, step: int, values: dict[str, float]) -> None: ...

    def image(self, step: int, tag: str, image: Any) -> None: ...

    def close(self) -> None: ...


def missing(obj: object, protocol: type) -> list[str]:
    """The attributes and methods of `protocol` that `obj` lacks (what `isinstance` would only answer no to)."""
    names = set(getattr(protocol, "__annotations__", {}))
    names |= {name for name, value in vars(protocol).items() if callable(value) and not name.startswith("_")}
    return sorted(name for name in names if not hasattr(obj, name))
