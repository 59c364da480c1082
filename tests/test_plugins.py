"""The plugin contract: a new modality with no core change, entry-point discovery, restriction, failures."""

from __future__ import annotations

import json
import os
import re
import textwrap
from pathlib import Path

import pytest
import torch
from conftest import REPO, run_cli

from multimae_cli import API_VERSION, MaskedL1, Modality, ModelConfig, PatchInput, SpatialOutput, create_model, hookimpl
from multimae_cli.errors import UnknownModalityError
from multimae_cli.plugin.registry import Registry

THERMAL_PLUGIN = '''
from multimae_cli import MaskedL1, Modality, PatchInput, SpatialOutput, hookimpl


@hookimpl
def register_modalities(register):
    register(Modality(name="thermal", channels=1, input_adapter=PatchInput(), output_adapter=SpatialOutput(),
                      loss=MaskedL1(), description="infrared intensity"))
'''


class ThermalPlugin:
    @hookimpl
    def register_modalities(self, register):
        register(Modality(name="thermal", channels=1, input_adapter=PatchInput(), output_adapter=SpatialOutput(),
                          loss=MaskedL1()))


@pytest.fixture()
def registry_with_thermal():
    registry = Registry()
    registry.load_entry_points()
    if "thermal" in registry.plugins:  # the example package, when installed, is replaced by this one
        registry.unregister("thermal")
    registry.register(ThermalPlugin(), name="thermal")
    return registry


def test_new_modality_trains_with_rgb(registry_with_thermal):
    from multimae_cli import create_objective

    torch.manual_seed(0)
    config = ModelConfig.from_preset("tiny", inputs=("rgb", "thermal"), outputs=("rgb", "thermal"), image_size=32,
                                     depth=2, num_encoded_tokens=4)
    model = create_model(config, registry=registry_with_thermal)
    assert model.input_adapters["thermal"].proj.weight.shape[1] == 1
    inputs = {"rgb": torch.randn(2, 3, 32, 32), "thermal": torch.randn(2, 1, 32, 32)}
    preds, masks = model(inputs)
    assert preds["thermal"].shape == (2, 1, 32, 32)
    total, losses = create_objective(config, registry=registry_with_thermal)(preds, inputs, masks)
    total.backward()
    assert torch.isfinite(total) and set(losses) == {"rgb", "thermal"}
    for name in ("input_adapters.thermal.proj.weight", "output_adapters.thermal.out_proj.weight"):
        grad = model.get_parameter(name).grad
        assert grad is not None and grad.abs().sum() > 0, name


def test_unknown_modality_lists_registered(registry_with_thermal):
    with pytest.raises(UnknownModalityError, match=r"unknown modality 'lidar' \(registered: depth, .*thermal"):
        create_model(ModelConfig(inputs=("rgb", "lidar")), registry=registry_with_thermal)


def test_builtins_and_channels_override():
    registry = Registry()
    registry.load_entry_points()
    assert {"rgb", "norm_rgb", "depth", "semseg", "normals"} <= set(registry.modalities())
    config = ModelConfig.from_preset("tiny", inputs=("rgb", "semseg"), outputs=("semseg",), channels={"semseg": 40},
                                     image_size=32, depth=1, num_encoded_tokens=4)
    model = create_model(config, registry=registry)
    assert model.input_adapters["semseg"].class_emb.weight.shape == (40, 64)
    assert model.output_adapters["semseg"].out_proj.weight.shape[0] == 40 * 4 * 4
    normals = registry.modality("normals")
    import numpy as np

    flipped = normals.flip(np.array([[[0.5, 0.1, 0.8], [-0.2, 0.3, 0.9]]], dtype=np.float32))
    np.testing.assert_allclose(flipped, [[[0.2, 0.3, 0.9], [-0.5, 0.1, 0.8]]])


def make_dist(site: Path, dist: str, module: str, source: str, entry_name: str) -> None:
    """A minimal installed distribution exposing `module` under the `multimae` entry-point group."""
    (site / f"{module}.py").write_text(textwrap.dedent(source))
    info = site / f"{dist.replace('-', '_')}-1.2.3.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 1.2.3\n")
    (info / "entry_points.txt").write_text(f"[multimae]\n{entry_name} = {module}\n")


@pytest.fixture()
def site(tmp_path):
    make_dist(tmp_path, "multimae-plugin-thermal", "thermal_plugin", THERMAL_PLUGIN, "thermal")
    make_dist(tmp_path, "broken-plugin", "broken_plugin", "import not_a_real_module_xyz\n", "broken")
    return tmp_path


def test_plugins_json_lists_builtins_third_party_and_failures(site):
    result = run_cli("plugins", "--json", env={"PYTHONPATH": str(site)})
    assert result.returncode == 0, result.stderr
    rows = {row["name"]: row for row in json.loads(result.stdout)}
    for name in ("rgb", "depth", "semseg", "normals"):
        assert rows[name]["source"] == "built-in" and not rows[name]["error"]
    assert rows["rgb"]["modalities"] == ["rgb", "norm_rgb"]
    assert rows["thermal"]["source"] == "multimae-plugin-thermal" and rows["thermal"]["version"] == "1.2.3"
    assert rows["thermal"]["modalities"] == ["thermal"]
    assert "ModuleNotFoundError" in rows["broken"]["error"] and not rows["broken"]["modalities"]
    warnings = [line for line in result.stderr.splitlines() if line.strip()]
    assert warnings == ["warning: plugin 'broken' failed to import: ModuleNotFoundError: "
                        "No module named 'not_a_real_module_xyz'"]


def test_load_plugins_env_restricts(site):
    result = run_cli("plugins", "--json", env={"PYTHONPATH": str(site), "MULTIMAE_LOAD_PLUGINS": "rgb,thermal"})
    assert result.returncode == 0 and not result.stderr.strip()
    assert sorted(row["name"] for row in json.loads(result.stdout)) == ["rgb", "thermal"]
    result = run_cli("plugins", "--json", env={"MULTIMAE_LOAD_PLUGINS": ""})
    assert json.loads(result.stdout) == []


def test_plugin_raising_in_hook_is_isolated():
    class Raising:
        @hookimpl
        def register_modalities(self, register):
            raise RuntimeError("boom")

    registry = Registry()
    registry.load_entry_points()
    registry.register(Raising(), name="raising")
    assert "rgb" in registry.modalities()
    assert registry.plugins["raising"].error == "raised in register_modalities: RuntimeError: boom"


def test_duplicate_modality_is_reported_not_fatal():
    class Duplicate:
        @hookimpl
        def register_modalities(self, register):
            register(Modality(name="rgb", channels=4))

    registry = Registry()
    registry.load_entry_points()
    registry.register(Duplicate(), name="dup")
    assert registry.modality("rgb").channels == 3
    assert "already registered" in registry.plugins["dup"].error


# ---------------------------------------------------------------- every hook, through an installed distribution

COMMAND_PLUGIN = '''
from multimae_cli import hookimpl


@hookimpl
def register_commands(app):
    @app.command("hello")
    def hello(name: str = "world"):
        """Say hello (a command added by a plugin)."""
        print(f"hello {name}")
'''

TASK_AND_TEACHER_PLUGIN = '''
from multimae_cli import Labeler, Task, Teacher, hookimpl


def _head(ctx):
    from multimae_cli import LinearHead

    return LinearHead(ctx.dim, ctx.num_outputs)


def _loss(options):
    import torch

    return torch.nn.CrossEntropyLoss(**options)


def _metrics(num_outputs):
    from multimae_cli import ClassificationMetrics

    return ClassificationMetrics(num_outputs)


def _load(request):
    return Labeler(lambda samples: [s["rgb"].mean(-1).astype("float32") / 255 for s in samples], {"kind": "grey"})


@hookimpl
def register_tasks(register):
    register(Task(name="scene-type", kind="classification", heads={"linear": _head},
                  losses={"cross_entropy": _loss}, metrics=_metrics))


@hookimpl
def register_teachers(register):
    register(Teacher(name="grey", load=_load, produces=("edges",), description="mean of rgb"))
'''


def test_hook_register_modalities(site):
    result = run_cli("plugins", "--json", env={"PYTHONPATH": str(site), "MULTIMAE_LOAD_PLUGINS": "thermal"})
    assert [row["modalities"] for row in json.loads(result.stdout)] == [["thermal"]]


def test_hook_register_commands(tmp_path):
    make_dist(tmp_path, "multimae-hello", "hello_plugin", COMMAND_PLUGIN, "hello")
    result = run_cli("hello", "--name", "thermal", env={"PYTHONPATH": str(tmp_path)})
    assert result.returncode == 0 and result.stdout == "hello thermal\n", result.stderr
    assert "hello" in run_cli("--help", env={"PYTHONPATH": str(tmp_path)}).stdout


def test_hook_register_commands_raising_leaves_the_cli_working():
    class Raising:
        @hookimpl
        def register_commands(self, app):
            raise RuntimeError("no app today")

    import typer

    registry = Registry()
    registry.register(Raising(), name="raising")
    registry.add_commands(typer.Typer())
    assert registry.plugins["raising"].error == "raised in register_commands: RuntimeError: no app today"


def test_hook_register_tasks_and_register_teachers(tmp_path):
    from multimae_cli.testing import check_task, check_teacher

    make_dist(tmp_path, "multimae-scenes", "scenes_plugin", TASK_AND_TEACHER_PLUGIN, "scenes")
    result = run_cli("plugins", "--json", env={"PYTHONPATH": str(tmp_path), "MULTIMAE_LOAD_PLUGINS": "scenes"})
    (row,) = json.loads(result.stdout)
    assert row["tasks"] == ["scene-type"] and row["teachers"] == ["grey"] and row["source"] == "multimae-scenes"
    import sys

    sys.path.insert(0, str(tmp_path))
    try:
        import scenes_plugin

        registry = Registry()
        registry.load_entry_points()  # finds the distribution in tmp_path, now on sys.path
        assert registry.plugins["scenes"].module == scenes_plugin.__name__
        check_task(registry.task("scene-type"), num_outputs=4, registry=registry)
        check_teacher(registry.teachers()["grey"], "edges", registry=registry)
    finally:
        sys.path.remove(str(tmp_path))
        sys.modules.pop("scenes_plugin", None)


# ---------------------------------------------------------------- API versions and where plugins come from


def test_plugin_needing_a_newer_api_is_refused_and_the_rest_work(site):
    from multimae_cli import API_VERSION

    make_dist(site, "multimae-plugin-future", "future_plugin", f"MULTIMAE_API = {API_VERSION + 1}\n" + THERMAL_PLUGIN
              .replace('"thermal"', '"future"'), "future")
    result = run_cli("plugins", "--json", env={"PYTHONPATH": str(site)})
    assert result.returncode == 0, result.stderr
    rows = {row["name"]: row for row in json.loads(result.stdout)}
    refusal = (f"needs multimae plugin API {API_VERSION + 1}, this multimae provides {API_VERSION}: "
               "upgrade multimae")
    assert rows["future"]["error"] == refusal and rows["future"]["modalities"] == []
    assert rows["future"]["api"] == API_VERSION + 1 and rows["future"]["version"] == "1.2.3"
    assert rows["thermal"]["modalities"] == ["thermal"] and rows["rgb"]["error"] is None
    assert f"warning: plugin 'future' {refusal}" in result.stderr.splitlines()
    result = run_cli("pretrain", "--modalities", "rgb,future", "--steps", "1", env={"PYTHONPATH": str(site)})
    assert result.returncode == 2 and "error: unknown modality 'future'" in result.stderr


def test_api_declarations_are_checked():
    from multimae_cli import API_VERSION

    class Current:
        MULTIMAE_API = API_VERSION

        @hookimpl
        def register_modalities(self, register):
            register(Modality(name="ok", channels=1, input_adapter=PatchInput()))

    class Nonsense:
        MULTIMAE_API = "one"

    class Old:  # written before normalize took batches: refused with what changed
        MULTIMAE_API = 1

        @hookimpl
        def register_modalities(self, register):
            register(Modality(name="old", channels=1, input_adapter=PatchInput()))

    registry = Registry()
    registry.register(Current(), name="current")
    registry.register(Nonsense(), name="nonsense")
    registry.register(Old(), name="old")
    assert registry.plugins["current"].api == API_VERSION and "ok" in registry.modalities()
    assert registry.plugins["nonsense"].error == "declares MULTIMAE_API = 'one', which is not a positive integer"
    assert registry.plugins["old"].error == (
        f"is written for multimae plugin API 1, this multimae provides {API_VERSION} (Modality.normalize takes a "
        "batch (B, C, H, W) (labels (B, H, W)) on the training device; the hook register_pseudolabelers is renamed "
        "register_teachers; plugins import only from multimae_cli (internal modules moved: multimae_cli.plugin, "
        "multimae_cli.infer); see docs/plugins.md, 'Moving to API 3'): update the plugin and its MULTIMAE_API")
    assert "old" not in registry.modalities()


def test_plugins_table_shows_source_version_and_failures(site):
    from multimae_cli import API_VERSION, __version__

    make_dist(site, "multimae-plugin-future", "future_plugin", "MULTIMAE_API = 99\n", "future")
    result = run_cli("plugins", env={"PYTHONPATH": str(site), "COLUMNS": "250"})
    assert result.returncode == 0, result.stderr
    lines = {line.split("│")[1].strip(): line for line in result.stdout.splitlines() if line.count("│") > 2}
    assert "built-in" in lines["rgb"] and __version__ in lines["rgb"] and "ok" in lines["rgb"]
    assert "multimae-plugin-thermal" in lines["thermal"] and "1.2.3" in lines["thermal"]
    assert "failed: needs multimae plugin API 99" in lines["future"]
    assert "failed: failed to import: ModuleNotFoundError" in lines["broken"]
    assert f"multimae {__version__}, plugin API {API_VERSION}" in result.stdout


def test_example_package_is_discovered_from_its_entry_point(tmp_path):
    """The example plugin, registered exactly as its pyproject's entry point registers it (no install)."""
    example = REPO / "examples" / "multimae-plugin-thermal"
    info = tmp_path / "multimae_plugin_thermal-0.1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: multimae-plugin-thermal\nVersion: 0.1.0\n")
    entry = next(line for line in (example / "pyproject.toml").read_text().splitlines() if line.startswith("thermal"))
    (info / "entry_points.txt").write_text("[multimae]\n" + entry.replace('"', "") + "\n")  # TOML -> INI
    result = run_cli("plugins", "--json", env={"PYTHONPATH": f"{tmp_path}{os.pathsep}{example}",
                                               "MULTIMAE_LOAD_PLUGINS": "rgb,thermal"})
    rows = {row["name"]: row for row in json.loads(result.stdout)}
    assert rows["thermal"]["source"] == "multimae-plugin-thermal" and rows["thermal"]["api"] == API_VERSION
    assert rows["thermal"]["modalities"] == ["thermal"] and rows["thermal"]["error"] is None


# ---------------------------------------------------------------- the conformance kit


@pytest.mark.parametrize("name", ["rgb", "norm_rgb", "depth", "semseg", "normals", "edges"])
def test_builtin_modalities_pass_the_kit(name):
    from multimae_cli.testing import check_modality, registered_modality

    check_modality(registered_modality(name), train_step=name in ("semseg", "norm_rgb"))


def _thermal(**changes) -> Modality:
    from dataclasses import replace

    import numpy as np

    from multimae_cli.io import read_image, write_image

    def read(path):
        return read_image(path, color=False).astype(np.float32)

    def write(path, array):
        write_image(path, np.clip(np.rint(array), 0, 65535).astype(np.uint16))

    def denormalize(value):
        return value * 1000 + 30000

    def normalize(value):
        return (value.float() - 30000) / 1000

    record = Modality(name="thermal", channels=1, input_adapter=PatchInput(), output_adapter=SpatialOutput(),
                      loss=MaskedL1(), read=read, write=write, normalize=normalize, denormalize=denormalize)
    return replace(record, **changes)


def test_kit_passes_a_sound_plugin():
    from multimae_cli.testing import check_modality

    check_modality(_thermal())


def test_kit_catches_an_adapter_with_the_wrong_channel_count():
    from multimae_cli.testing import check_modality

    with pytest.raises(AssertionError, match=r"^modality 'thermal': input adapter fails on a normalised batch of "
                                             r"shape \(2, 1, 32, 32\) \(the declared 1 channel\(s\)\): InputError: "
                                             r"thermal: expected 3 channel\(s\), got 1"):
        check_modality(_thermal(input_adapter=lambda m, ctx: PatchInput()(m.with_channels(3), ctx)))


def test_kit_catches_a_flip_that_misaligns():
    import numpy as np

    from multimae_cli.testing import check_modality

    with pytest.raises(AssertionError, match=r"^modality 'thermal': flip misaligns: pixel \(row 16, col 12\) ends up "
                                             r"at \(row 16, col 52\), expected \(row 16, col 51\)"):
        check_modality(_thermal(flip=lambda a: np.roll(a[:, ::-1], 1, axis=1)))
    with pytest.raises(AssertionError, match=r"flip misaligns: .* ends up at \(row 31, col 51\)"):
        check_modality(_thermal(flip=lambda a: a[::-1, ::-1]))


@pytest.mark.parametrize(("changes", "message"), [
    ({"loss": lambda m, p: lambda pred, target, mask: (pred - target).abs().mean()},
     "the loss has gradient on visible (unmasked) tokens: it must score masked tokens only"),
    ({"denormalize": lambda value: value}, "denormalize must invert normalize"),
    ({"colorize": lambda value: value.numpy()}, "colorize of a (1, 48, 64) tensor must give a uint8 (48, 64, 3)"),
    ({"extensions": (".PNG",)}, "extension '.PNG' must be lower case"),
    ({"normalize": lambda value: (value - value.mean()) / value.std()},  # statistics over the whole batch
     "normalize gives a sample other values in a batch than alone"),
    ({"normalize": lambda value: value.float()[0]}, "normalize of a batch must give a float (B, 1, 48, 64) tensor"),
])
def test_kit_names_other_broken_rules(changes, message):
    from multimae_cli.testing import check_modality

    with pytest.raises(AssertionError, match=re.escape(message)):
        check_modality(_thermal(**changes), train_step=False)


def test_kit_catches_labels_resized_smoothly():
    from dataclasses import replace

    from multimae_cli.testing import check_modality, registered_modality

    with pytest.raises(AssertionError, match="label maps must be resized with interpolation='nearest'"):
        check_modality(replace(registered_modality("semseg"), interpolation="linear"), train_step=False)


def test_kit_catches_an_adapter_outside_the_protocol():
    """Tokens of the right shape are not enough: the engine also reads patch, stride, image_size, no_weight_decay."""
    from multimae_cli.testing import check_modality

    def bare(modality, ctx):
        import torch

        class Tokens(torch.nn.Module):
            def __init__(self):
                super().__init__()
                self.proj = torch.nn.Conv2d(modality.channels, ctx.dim, ctx.patch_size, ctx.patch_size)

            def forward(self, data):
                return self.proj(data).flatten(2).transpose(1, 2)

        return Tokens()

    with pytest.raises(AssertionError, match=r"^modality 'thermal': its input adapter lacks image_size, "
                                             r"no_weight_decay, patch, stride \(see multimae_cli.protocols"):
        check_modality(_thermal(input_adapter=bare), train_step=False)


def _scene_task(**changes):
    from dataclasses import replace

    from multimae_cli import Task

    def head(ctx):
        from multimae_cli import LinearHead

        return LinearHead(ctx.dim, ctx.num_outputs)

    def loss(options):
        import torch

        return torch.nn.CrossEntropyLoss(**options)

    def metrics(num_outputs):
        from multimae_cli import ClassificationMetrics

        return ClassificationMetrics(num_outputs)

    return replace(Task(name="scene-type", kind="classification", heads={"linear": head},
                        losses={"cross_entropy": loss}, metrics=metrics), **changes)


def test_kit_catches_metrics_that_average_batches_or_lack_the_protocol():
    import torch

    from multimae_cli import Metric
    from multimae_cli.testing import check_task

    check_task(_scene_task(), num_outputs=4)

    class BatchMean(Metric):  # the official depth metrics' mistake: a mean of per-batch means
        main, higher_is_better = "top1", True

        def initial_state(self):
            return {"sum": torch.zeros((), dtype=torch.float64), "batches": torch.zeros((), dtype=torch.float64)}

        def update(self, pred, target):
            right = (pred.argmax(1) == target).double().mean()
            self.add(sum=right * 100 * (1 + len(target)), batches=torch.ones((), dtype=torch.float64))

        def compute(self):
            return {"top1": float(self.totals()["sum"] / self.totals()["batches"])}

    with pytest.raises(AssertionError, match=r"over its samples one at a time: keep sums, not batch averages"):
        check_task(_scene_task(metrics=lambda n: BatchMean()), num_outputs=4)

    class NoDirection:
        main = "top1"

        def update(self, pred, target): ...

        def compute(self):
            return {"top1": 0.0}

    with pytest.raises(AssertionError, match=r"its metrics lack higher_is_better, sync \(see multimae_cli.protocols"):
        check_task(_scene_task(metrics=lambda n: NoDirection()), num_outputs=4)


def test_kit_runs_targets_batched_and_one_at_a_time():
    from dataclasses import replace

    from multimae_cli.plugin.registry import get_registry
    from multimae_cli.testing import check_task

    depth = get_registry().task("depth")
    check_task(depth)
    batch_only = replace(depth, prepare_target=lambda target, scale: target[:, :1] / scale)  # indexes a batch dim
    with pytest.raises(AssertionError, match=r"prepare_target of one sample \(1, 32, 32\) differs from its row of a "
                                             r"batch \(2, 1, 32, 32\)"):
        check_task(batch_only)


def test_kit_catches_a_teacher_writing_unit_floats_to_an_8bit_modality():
    from multimae_cli import Labeler, Teacher
    from multimae_cli.testing import check_teacher

    def load(request):
        return Labeler(lambda samples: [s["rgb"].astype("float32") / 255 for s in samples])

    unit = Teacher(name="recolour", load=load, produces=("rgb",))
    with pytest.raises(AssertionError, match=r"^teacher 'recolour': a label of 'rgb' does not survive its file format "
                                             r".*: its labels are floats in \[0, 1\] but 'rgb' files hold uint8 "
                                             r"values \(0-255\); scale them"):
        check_teacher(unit, "rgb")


def test_checkpoints_record_the_plugin_behind_each_modality(tmp_path):
    """The header names the distribution and version of each modality's plugin; loading without that plugin
    says which one to install, and a subset of the model that does not need it still loads."""
    import subprocess
    import sys

    from safetensors import safe_open

    from multimae_cli import save_model

    config = ModelConfig(inputs=("rgb", "thermal"), outputs=("thermal",), image_size=32, patch_size=16, dim=32,
                         depth=1, num_heads=2, decoder_dim=32, decoder_depth=1, decoder_num_heads=2,
                         num_encoded_tokens=2)
    path = tmp_path / "model.safetensors"
    save_model(create_model(config), path)
    with safe_open(str(path), framework="pt") as handle:
        origins = json.loads(handle.metadata()["multimae.plugins"])["modalities"]
    assert origins["thermal"] == {"plugin": "thermal", "distribution": "multimae-plugin-thermal", "version": "0.1.0"}
    assert origins["rgb"]["distribution"] == "multimae"
    code = ("import sys\nfrom multimae_cli import CheckpointError, load_model\n"
            f"load_model({str(path)!r}, inputs=('rgb',), outputs=())\n"
            f"try:\n    load_model({str(path)!r})\nexcept CheckpointError as exc:\n    sys.exit(str(exc))\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            env={**os.environ, "MULTIMAE_LOAD_PLUGINS": "rgb"})
    assert result.returncode == 1
    assert result.stderr.strip() == (
        f"{path}: saved with the modality 'thermal', which the plugin 'thermal' of multimae-plugin-thermal 0.1.0 "
        "defined: install it (pip install multimae-plugin-thermal); it is not registered here (registered: norm_rgb, "
        "rgb)")


def test_plugins_new_writes_a_package_whose_tests_pass(tmp_path):
    """`multimae plugins new luma`: a modality, a task and a teacher; installed (here: its metadata on the path,
    as pip would leave it), `multimae plugins` lists them and the package's own kit tests pass."""
    import subprocess
    import sys

    result = run_cli("plugins", "new", "luma", "--out", str(tmp_path))
    assert result.returncode == 0, result.stderr
    root = tmp_path / "multimae-plugin-luma"
    assert "pip install -e" in result.stdout and (root / "multimae_luma" / "__init__.py").is_file()
    info = root / "multimae_plugin_luma-0.1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: multimae-plugin-luma\nVersion: 0.1.0\n")
    (info / "entry_points.txt").write_text("[multimae]\nluma = multimae_luma\n")
    env = {**os.environ, "PYTHONPATH": str(root)}
    listed = run_cli("plugins", "--json", env={"PYTHONPATH": str(root), "MULTIMAE_LOAD_PLUGINS": "rgb,luma"})
    luma = {row["name"]: row for row in json.loads(listed.stdout)}["luma"]
    assert (luma["modalities"], luma["tasks"], luma["teachers"], luma["api"]) == (["luma"], ["luma"], ["luma"], 3)
    assert luma["error"] is None and luma["source"] == "multimae-plugin-luma"
    help_text = run_cli("pseudolabel", "--help", env={"PYTHONPATH": str(root), "COLUMNS": "200"}).stdout
    assert re.search(r"Teachers from plugins:\s+luma\s+luma from rgb \(luminance\) \(multimae-plugin-luma\)", help_text)
    tests = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "no:xdist",
                            str(root / "tests")], capture_output=True, text=True, env=env, cwd=root)
    assert tests.returncode == 0 and "4 passed" in tests.stdout, tests.stdout + tests.stderr
    again = run_cli("plugins", "new", "luma", "--out", str(tmp_path))
    assert again.returncode == 2 and again.stderr == f"error: {root}: already exists; choose another name or folder\n"


def test_modality_options_are_declared_by_the_plugin_and_set_from_configs(tmp_path):
    """`model.modality_options.NAME.KEY`: the plugin declares the option and its default, a config sets it, the
    checkpoint keeps the resolved value; an undeclared key or a modality outside the model is one line."""
    from dataclasses import replace

    from multimae_cli import ConfigError, MaskedMSE, create_objective
    from multimae_cli.model.losses import MaskedL1Loss, MaskedMSELoss

    def loss(modality, patch_size):
        return (MaskedL1() if modality.options["loss"] == "l1" else MaskedMSE())(modality, patch_size)

    class Plugin:
        @hookimpl
        def register_modalities(self, register):
            register(replace(_thermal(), loss=loss, options={"loss": "l1"}))

    registry = Registry()
    registry.register(Plugin(), name="thermal")
    tiny = dict(inputs=("thermal",), outputs=("thermal",), image_size=32, patch_size=16, dim=32, depth=1,
                num_heads=2, decoder_dim=32, decoder_depth=1, decoder_num_heads=2, num_encoded_tokens=2)
    assert isinstance(create_objective(ModelConfig(**tiny), registry=registry).losses["thermal"], MaskedL1Loss)
    chosen = ModelConfig(**tiny, modality_options={"thermal": {"loss": "mse"}})
    assert isinstance(create_objective(chosen, registry=registry).losses["thermal"], MaskedMSELoss)
    model = create_model(ModelConfig(**tiny), registry)
    assert model.config.modality_options == {"thermal": {"loss": "l1"}}  # the default, written out
    with pytest.raises(ConfigError, match=r"^modality_options\.thermal\.losss: unknown option \(thermal's "
                                          r"options: loss\)$"):
        create_objective(ModelConfig(**tiny, modality_options={"thermal": {"losss": "mse"}}), registry=registry)
    with pytest.raises(ConfigError, match=r"^modality_options\.depth: 'depth' is not an input or output of this "
                                          r"model \(thermal\)$"):
        create_model(ModelConfig(**tiny, modality_options={"depth": {"loss": "mse"}}), registry)


def test_plugin_calling_sys_exit_is_left_out(tmp_path):
    """A plugin that exits at import or in a hook (SystemExit) is reported and left out; the CLI keeps working."""
    make_dist(tmp_path, "exiting-plugin", "exiting_plugin", "import sys\nsys.exit(3)\n", "exiting")
    hooked = "import sys\nfrom multimae_cli import hookimpl\n\n@hookimpl\ndef register_modalities(register):\n" \
             "    sys.exit(4)\n"
    make_dist(tmp_path, "exiting-hook", "exiting_hook", hooked, "exitinghook")
    result = run_cli("plugins", "--json", env={"PYTHONPATH": str(tmp_path)})
    assert result.returncode == 0, result.stderr
    rows = {row["name"]: row for row in json.loads(result.stdout)}
    assert rows["exiting"]["error"] == "failed to import: SystemExit: 3"
    assert rows["exitinghook"]["error"] == "raised in register_modalities: SystemExit: 4"
    assert rows["rgb"]["error"] is None
