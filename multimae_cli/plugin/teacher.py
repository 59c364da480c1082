"""What a pseudo-labelling teacher is: the record a plugin registers to make one modality from others.

MultiMAE needs no multi-modal dataset because depth, semantics, ... can be made from rgb by off-the-shelf
networks. A `Teacher` says which modalities it can make and which it reads; its `load` factory turns a spec
such as `hf:models/dpt,output=depth` into a `Labeler`, the loaded model that labels batches of samples.
Nothing here imports torch: a teacher imports what it needs when it loads.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ..errors import ConfigError

if TYPE_CHECKING:
    import numpy as np

    from .modality import Modality

Sample = Mapping[str, "np.ndarray"]  # {modality: file-space array}, what the modality plugins `read`


@dataclass(frozen=True)
class TeacherSpec:
    """A parsed `NAME[:ARG][,KEY=VALUE...]`, e.g. `hf:models/dpt`, `edges:sobel`, `normals-from-depth,fov=70`."""

    name: str
    arg: str | None = None
    options: Mapping[str, str] = field(default_factory=dict)

    @classmethod
    def parse(cls, text: str) -> TeacherSpec:
        head, *rest = text.strip().split(",")
        name, sep, arg = head.partition(":")
        options = {}
        for item in rest:
            key, eq, value = item.partition("=")
            if not eq or not key.strip():
                raise ConfigError(f"teacher {text!r}: expected NAME[:ARG][,KEY=VALUE...], got {item!r}")
            options[key.strip()] = value.strip()
        if not name.strip():
            raise ConfigError(f"teacher {text!r}: no teacher name (expected NAME[:ARG][,KEY=VALUE...])")
        return cls(name.strip(), arg.strip() if sep and arg.strip() else None, options)

    def __str__(self) -> str:
        text = self.name + (f":{self.arg}" if self.arg else "")
        return ",".join([text, *(f"{k}={v}" for k, v in self.options.items())])


@dataclass(frozen=True)
class TeacherRequest:
    """What a teacher's `load` gets: the modality to make and the rest of the spec."""

    modality: Modality
    arg: str | None
    options: Mapping[str, str]
    device: str = "auto"  # auto | cpu | cuda

    def option(self, key: str, default: Any, kind: Callable[[str], Any] = str) -> Any:
        """An option converted by `kind`, or `default` when not given; a bad value names the key."""
        if key not in self.options:
            return default
        try:
            return kind(self.options[key])
        except ValueError:
            raise ConfigError(f"teacher option {key}={self.options[key]}: not a valid {kind.__name__}") from None

    def check_options(self, known: Sequence[str]) -> None:
        unknown = [key for key in self.options if key not in known]
        if unknown:
            raise ConfigError(f"teacher option {unknown[0]!r} is unknown (known: {', '.join(known) or 'none'})")


@dataclass
class Labeler:
    """A loaded teacher. `label` maps samples (each holding at least the teacher's `needs`, any size) to one
    file-space array per sample at that sample's size, ready for the modality's `write`. `info` is what the
    manifest records: model, classes, settings."""

    label: Callable[[Sequence[Sample]], list[np.ndarray]]
    info: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Teacher:
    """A pseudo-labelling teacher, named by its spec prefix (`--teacher depth=hf:DIR` uses teacher `hf`).

    `produces` lists the modalities it can make (empty: any; `load` checks the one asked for), `needs` the
    modalities it reads (made earlier in the same run or already in the dataset), `default_for` those it makes
    when no `--teacher` names one.
    """

    name: str
    load: Callable[[TeacherRequest], Labeler]
    produces: tuple[str, ...] = ()
    needs: tuple[str, ...] = ("rgb",)
    default_for: tuple[str, ...] = ()
    description: str = ""

    def can_make(self, modality: str) -> bool:
        return not self.produces or modality in self.produces


def by_size(samples: Sequence[Sample], key: str = "rgb") -> list[list[int]]:
    """Indices of `samples` grouped by the (H, W) of their `key` array, so each group stacks into one batch."""
    groups: dict[tuple[int, int], list[int]] = {}
    for i, sample in enumerate(samples):
        groups.setdefault(tuple(sample[key].shape[:2]), []).append(i)
    return list(groups.values())
