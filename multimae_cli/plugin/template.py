"""`multimae plugins new NAME`: a plugin package to start from, with a modality, a task and a teacher.

The package is complete and installable: `pip install -e DIR` and `multimae plugins` lists it, `pytest DIR` runs
the conformance kit on all three records. The modality is a one-channel image in [0, 1] stored as 16-bit PNG,
the teacher makes it from rgb (luminance, a real label you replace with your model), the task regresses it from
the encoder. Every name used is defined in the files or imported from `multimae_cli`.
"""

from __future__ import annotations

import re
from pathlib import Path

from ..errors import InputError
from ..io import atomic_write_bytes

NAME = re.compile(r"[a-z][a-z0-9_]{0,31}")

PYPROJECT = '''[build-system]
requires = ["setuptools>=68"]
build-backend = "setuptools.build_meta"

[project]
name = "multimae-plugin-{name}"
version = "0.1.0"
description = "The {name} modality, task and teacher for multimae"
readme = "README.md"
requires-python = ">=3.10"
dependencies = ["multimae"]

[project.optional-dependencies]
test = ["pytest>=8"]

[project.entry-points.multimae]
{name} = "multimae_{name}"

[tool.setuptools]
packages = ["multimae_{name}"]
'''

README = '''# multimae-plugin-{name}

A [multimae](https://github.com/) plugin: the `{name}` modality, the `{name}` fine-tuning task and the `{name}`
pseudo-labelling teacher.

```bash
pip install -e .            # multimae finds it through the `multimae` entry-point group
multimae plugins            # lists {name}
pytest tests                # the conformance kit on the modality, the task and the teacher
multimae pseudolabel RGB_FOLDER --out data/{name} --modalities {name} --teacher {name}={name}
multimae pretrain --modalities rgb,{name} --data data/{name}
multimae finetune --task {name} --checkpoint runs/pretrain --data data/{name}
```

Start from `multimae_{name}/__init__.py`: the modality's file format and normalisation, the teacher's `label`
(replace the luminance with your model), the task's heads, losses and metric (`metrics.py`). See multimae's
docs/plugins.md for every field.
'''

MODULE = '''"""{name}: a one-channel image in [0, 1], its fine-tuning task, and a teacher that makes it from rgb.

Nothing heavy at import: numpy, OpenCV and torch are imported inside the functions that use them.
"""

from __future__ import annotations

from multimae_cli import (
    ConfigError,
    HeadContext,
    Labeler,
    MaskedL1,
    MaskedMSE,
    Modality,
    PatchInput,
    SpatialOutput,
    Task,
    Teacher,
    TeacherRequest,
    hookimpl,
    read_image,
    write_image,
)

MULTIMAE_API = 3
MEAN, STD = 0.5, 0.25  # what normalize maps to zero mean, unit spread: set them from your data


# ---------------------------------------------------------------- the modality


def read(path):
    """A 16-bit PNG (or 8-bit) -> (H, W) float32 in [0, 1]."""
    import numpy as np

    image = read_image(path, color=False)
    return image.astype(np.float32) / np.float32(np.iinfo(image.dtype).max)


def write(path, array):
    """(H, W) or (H, W, 1) values in [0, 1] -> a 16-bit PNG."""
    import numpy as np

    array = np.asarray(array, dtype=np.float32).reshape(array.shape[:2])
    write_image(path, np.rint(np.clip(array, 0, 1) * 65535).astype(np.uint16))


def normalize(batch):
    return (batch.float() - MEAN) / STD


def denormalize(batch):
    return batch * STD + MEAN


def colorize(value):
    """A model-space (1, H, W) tensor -> uint8 (H, W, 3) grey."""
    grey = (denormalize(value[0]).clamp(0, 1) * 255).round().byte()
    return grey[..., None].expand(-1, -1, 3).cpu().numpy()


def loss(modality, patch_size):
    """The pretraining loss its option chooses: `--set model.modality_options.{name}.loss=mse`."""
    choice = modality.options["loss"]
    if choice not in ("l1", "mse"):
        raise ConfigError(f"modality_options.{{modality.name}}.loss: {{choice!r}} is neither l1 nor mse")
    return (MaskedL1() if choice == "l1" else MaskedMSE())(modality, patch_size)


@hookimpl
def register_modalities(register):
    register(Modality(name="{name}", channels=1, description="one-channel image in [0, 1] (16-bit PNG)",
                      input_adapter=PatchInput(), output_adapter=SpatialOutput(), loss=loss, options={{"loss": "l1"}},
                      read=read, write=write, normalize=normalize, denormalize=denormalize, colorize=colorize))


# ---------------------------------------------------------------- the teacher


def load_teacher(request: TeacherRequest) -> Labeler:
    """Luminance of the rgb image (ITU-R BT.601). Replace `label` with your model: load it here, once."""
    request.check_options([])

    def label(samples):
        import numpy as np

        weights = np.array([0.299, 0.587, 0.114], dtype=np.float32)
        return [(sample["rgb"].astype(np.float32) @ weights) / 255 for sample in samples]

    return Labeler(label=label, info={{"model": "luminance (BT.601)"}})


@hookimpl
def register_teachers(register):
    register(Teacher(name="{name}", load=load_teacher, produces=("{name}",), needs=("rgb",),
                     description="{name} from rgb (luminance)"))


# ---------------------------------------------------------------- the task


def linear_head(ctx: HeadContext):
    from multimae_cli import DenseLinearHead  # heads, losses and metrics import torch: inside the factories

    return DenseLinearHead(ctx.dim, ctx.num_outputs, ctx.patch_size, main_modalities=ctx.inputs, **ctx.options)


def l1_loss(options):
    import torch

    return torch.nn.L1Loss(**options)


def metrics(num_outputs):
    from .metrics import MeanAbsoluteError

    return MeanAbsoluteError()


def prepare_target(target, scale):
    """File-space values (a batch (B, 1, H, W) in training, one sample (1, H, W) in previews) -> the loss's."""
    return target.float()


@hookimpl
def register_tasks(register):
    register(Task(name="{name}", kind="dense", target="{name}", heads={{"linear": linear_head}},
                  losses={{"l1": l1_loss}}, metrics=metrics, prepare_target=prepare_target,
                  description="regress {name} from the encoder"))
'''

METRICS = '''"""The task's metric: imported by the metrics factory only, so importing the plugin stays free of torch."""

from __future__ import annotations

import torch

from multimae_cli import Metric


class MeanAbsoluteError(Metric):
    """Mean absolute error over every pixel of a split (sums, so it does not depend on the batching)."""

    main = "mae"
    higher_is_better = False

    def initial_state(self):
        return {{"error": torch.zeros((), dtype=torch.float64), "pixels": torch.zeros((), dtype=torch.float64)}}

    def update(self, pred, target):
        error = (pred.float() - target.float()).abs()
        self.add(error=error.sum().double(), pixels=torch.tensor(float(error.numel()), dtype=torch.float64))

    def compute(self):
        sums = self.totals()
        return {{"mae": float(sums["error"] / sums["pixels"].clamp_min(1))}}
'''

TESTS = '''"""The conformance kit on the plugin's modality, task and teacher, as multimae discovers them once the
package is installed (`pip install -e .`)."""

from multimae_cli.testing import (
    check_modality,
    check_plugin,
    check_task,
    check_teacher,
    registered_modality,
    registered_task,
    registered_teacher,
)


def test_plugin_imports_cheaply_and_registers():
    check_plugin("multimae_{name}")


def test_modality_conforms():
    check_modality(registered_modality("{name}"))


def test_task_conforms():
    check_task(registered_task("{name}"))


def test_teacher_conforms():
    check_teacher(registered_teacher("{name}"), "{name}")
'''


FILES = {
    "pyproject.toml": PYPROJECT,
    "README.md": README,
    "multimae_{name}/__init__.py": MODULE,
    "multimae_{name}/metrics.py": METRICS,
    "tests/test_plugin.py": TESTS,
}


def new_plugin(name: str, out: str | Path = ".") -> Path:
    """Write the package `multimae-plugin-NAME/` into `out`; returns its folder. Refuses an existing one."""
    if not NAME.fullmatch(name):
        raise InputError(f"plugin name {name!r}: use lower-case letters, digits and _, starting with a letter")
    out = Path(out)
    if not out.is_dir():
        raise InputError(f"--out {out}: no such folder")
    root = out / f"multimae-plugin-{name}"
    if root.exists():
        raise InputError(f"{root}: already exists; choose another name or folder")
    for relative, text in FILES.items():
        path = root / relative.format(name=name)
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(path, text.format(name=name).encode())
    return root
