"""A corpus of bad inputs and faults across the commands, run in-process through the CLI's own entry point.

Each case sets up files under its own folder, runs `multimae ARGS` and expects what the error contract promises:
a non-zero exit, stderr of exactly one line `error: ...` naming the culprit (file, key or option), no traceback,
and (where the case says) nothing already written lost, half-written or left behind. Faults a test cannot make
for real on a shared machine (a full disk, a folder without write permission) are made by failing the system
call the writers use: `os.write` (every byte multimae writes goes through it) and `tempfile.mkstemp`.
"""

from __future__ import annotations

import errno
import json
import os
import pickle
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import yaml

from multimae_cli.cli import main
from multimae_cli.io import write_image

TINY = {"model": {"image_size": 32, "depth": 2, "dim": 64, "num_heads": 2, "decoder_dim": 32,
                  "decoder_num_heads": 2, "decoder_depth": 1, "inputs": ["rgb", "depth", "semseg"]},
        "data": {"synthetic_scenes": 16, "workers": 0}, "batch_size": 4, "log_every": 1, "checkpoint_every": 2,
        "preview_every": 0, "device": "cpu", "steps": 2}


@dataclass
class Case:
    """`argv` (with `{w}` for the shared world folder and `{t}` for the case's own), the fragments the error
    line must hold, and optional `setup(t, w)`, `fault(monkeypatch, t)` and `after(t, w)` checks."""

    argv: list[str]
    fragments: list[str]
    setup: Callable[[Path, Path], None] | None = None
    fault: Callable[..., None] | None = None
    after: Callable[[Path, Path], None] | None = None
    report: bool = False  # `data check`: a report on stdout naming the culprit, exit 1


@pytest.fixture(scope="module")
def world(tmp_path_factory, tiny_pth) -> Path:
    """What the cases share, made once: a native checkpoint, images, a small synthetic dataset and a finished
    two-step pretraining run."""
    import torch

    from multimae_cli import load_model, save_model
    from multimae_cli.config import PretrainConfig
    from multimae_cli.plugin.factory import create_model, pretrain_model_config
    from multimae_cli.train.pretrain import pretrain

    w = tmp_path_factory.mktemp("world")
    save_model(load_model(tiny_pth), w / "model.safetensors")
    write_image(w / "img.png", np.full((32, 32, 3), 128, np.uint8))
    write_image(w / "img.jpg", np.full((32, 32, 3), 128, np.uint8))
    write_image(w / "wide-depth.png", np.zeros((24, 40), np.uint16))
    invoke(["data", "synth", "--out", w / "data", "--n", "4", "--size", "32", "--quiet"])
    (w / "tiny.yaml").write_text(yaml.safe_dump(TINY))
    torch.manual_seed(0)
    pretrain(PretrainConfig.model_validate({**TINY, "out_dir": str(w / "runs"), "name": "done"}), quiet=True)
    wider = PretrainConfig.model_validate({**TINY, "model": {**TINY["model"], "dim": 96}})
    save_model(create_model(pretrain_model_config(wider)), w / "wider.safetensors")
    return w


def invoke(argv: list) -> tuple[int, str, str]:
    """`multimae ARGV` in this process: (exit code, stdout, stderr)."""
    import contextlib
    import io

    out, err = io.StringIO(), io.StringIO()
    code = 0
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            main([str(a) for a in argv])
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else 1
    return code, out.getvalue(), err.getvalue()


def copy_run(t: Path, w: Path) -> Path:
    shutil.copytree(w / "runs" / "done", t / "run")
    return t / "run"


def copy_data(t: Path, w: Path) -> Path:
    shutil.copytree(w / "data", t / "data")
    return t / "data"


def first(folder: Path) -> Path:
    return sorted(p for p in folder.rglob("*") if p.is_file())[0]


def disk_full(monkeypatch, t: Path) -> None:
    def full(fd, data):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "write", full)


def disk_full_at_second_save(monkeypatch, t: Path) -> None:
    """The disk fills up while a run writes its second checkpoint (the first one, `last/`, exists)."""
    real = os.write

    def write(fd, data):
        path = Path(os.readlink(f"/proc/self/fd/{fd}"))
        if path.parent.name.startswith(".last-") and (path.parents[1] / "last").is_dir():
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real(fd, data)

    monkeypatch.setattr(os, "write", write)


def no_permission(monkeypatch, t: Path) -> None:
    real = tempfile.mkstemp

    def refuse(*args, dir=None, **kwargs):
        if dir is not None and Path(dir).resolve().is_relative_to(t.resolve()):
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(dir))
        return real(*args, dir=dir, **kwargs)

    monkeypatch.setattr(tempfile, "mkstemp", refuse)


def unchanged(path: str, content: bytes):
    """After-check: `t/path` still holds `content`, and no temporary file is left beside it."""
    def check(t: Path, w: Path) -> None:
        assert (t / path).read_bytes() == content
        assert [p.name for p in (t / path).parent.iterdir() if p.name.startswith(".")] == []
    return check


def absent(*paths: str):
    def check(t: Path, w: Path) -> None:
        for path in paths:
            assert not (t / path).exists(), path
    return check


def state_step(step: int, run: str = "run"):
    """After-check: the run's newest checkpoint is still whole, at `step`, and no half save is left."""
    def check(t: Path, w: Path) -> None:
        import torch

        from multimae_cli.train.checkpoint import find_checkpoint

        folder = find_checkpoint(t / run)
        assert torch.load(folder / "state.pt", weights_only=True)["step"] == step
        assert [p.name for p in (t / run).iterdir() if p.name.startswith(".")] == []
    return check


def cut(source: str, target: str, fraction: float = 0.5):
    def setup(t: Path, w: Path) -> None:
        data = (w / source).read_bytes()
        (t / target).write_bytes(data[: int(len(data) * fraction)])
    return setup


def write(target: str, content: bytes):
    def setup(t: Path, w: Path) -> None:
        (t / target).parent.mkdir(parents=True, exist_ok=True)
        (t / target).write_bytes(content)
    return setup


class _Payload:
    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def pickle_payload(target: str):
    def setup(t: Path, w: Path) -> None:
        import torch

        (t / target).parent.mkdir(parents=True, exist_ok=True)
        torch.save({"model": {}, "args": _Payload(str(t / "pwned"))}, t / target)
    return setup


def in_run(edit: Callable[[Path, Path], None]):
    """Setup: a copy of the world's finished run as `t/run`, then `edit(run, world)`."""
    def setup(t: Path, w: Path) -> None:
        edit(copy_run(t, w), w)
    return setup


def edit_config(run: Path, w: Path) -> None:
    values = yaml.safe_load((run / "config.yaml").read_text())
    values["model"]["depth"] = 3
    (run / "config.yaml").write_text(yaml.safe_dump(values))


def in_data(edit: Callable[[Path], None]):
    def setup(t: Path, w: Path) -> None:
        edit(copy_data(t, w))
    return setup


def label_out_of_range(data: Path) -> None:
    write_image(first(data / "train" / "semseg"), np.full((32, 32), 60, np.uint8))


def symlink_loop(data: Path) -> None:
    folder = data / "train" / "depth" / "scenes"
    (folder / "loop").symlink_to(folder, target_is_directory=True)


def broken_link(data: Path) -> None:
    (data / "train" / "rgb" / "scenes" / "zz.png").symlink_to(data / "nowhere.png")


def wide_depth(data: Path) -> None:
    write_image(first(data / "train" / "depth"), np.zeros((24, 40), np.uint16))


def photos(*bad: tuple[str, bytes]):
    def setup(t: Path, w: Path) -> None:
        (t / "photos").mkdir()
        shutil.copy(w / "img.png", t / "photos" / "a.png")
        for name, content in bad:
            (t / "photos" / name).write_bytes(content)
    return setup


CORRUPT_PNG = b"\x89PNG\r\n\x1a\n not really a png"
CKPT = ["--checkpoint", "{w}/model.safetensors"]
PRETRAIN = ["pretrain", "--config", "{w}/tiny.yaml", "--out", "{t}/runs", "--quiet"]

CASES: dict[str, Case] = {
    # info, export, eval: checkpoints that are not what they claim
    "info-missing": Case(["info", "{t}/missing.safetensors"], ["missing.safetensors", "no such file"]),
    "info-text": Case(["info", "{t}/notes.txt"], ["notes.txt", "not a checkpoint"], write("notes.txt", b"hello")),
    "info-empty": Case(["info", "{t}/empty.safetensors"], ["empty.safetensors"], write("empty.safetensors", b"")),
    "info-truncated": Case(["info", "{t}/cut.safetensors"], ["cut.safetensors", "unreadable safetensors file"],
                           cut("model.safetensors", "cut.safetensors")),
    "info-pickle-payload": Case(["info", "{t}/evil.pth"], ["evil.pth", "refused"], pickle_payload("evil.pth"),
                                after=absent("pwned")),
    "export-truncated": Case(["export", "{t}/cut.safetensors", "--format", "official", "--out", "{t}/x.pth"],
                             ["cut.safetensors", "unreadable"], cut("model.safetensors", "cut.safetensors"),
                             after=absent("x.pth")),
    "export-no-folder": Case(["export", "{w}/model.safetensors", "--format", "native", "--out",
                              "{t}/nowhere/x.safetensors"],
                             ["nowhere", "does not exist"], after=absent("nowhere")),
    "export-bad-format": Case(["export", "{w}/model.safetensors", "--format", "bogus", "--out", "{t}/x.pth"],
                              ["bogus"], after=absent("x.pth")),
    "export-disk-full": Case(["export", "{w}/model.safetensors", "--format", "official", "--out", "{t}/x.pth",
                              "--overwrite"], ["x.pth", "cannot write (no space left on device)"],
                             write("x.pth", b"old"), disk_full, unchanged("x.pth", b"old")),
    "export-no-permission": Case(["export", "{w}/model.safetensors", "--format", "native", "--out",
                                  "{t}/x.safetensors"],
                                 ["cannot write (permission denied)"], fault=no_permission,
                                 after=absent("x.safetensors")),
    "eval-truncated": Case(["eval", "{t}/cut.safetensors"], ["cut.safetensors", "unreadable safetensors file"],
                           cut("model.safetensors", "cut.safetensors")),
    "eval-missing": Case(["eval", "{t}/none.safetensors"], ["none.safetensors"]),
    # predict: bad images, inputs that do not belong together, outputs that cannot be written
    "predict-truncated-checkpoint": Case(["predict", "{w}/img.png", "--out", "{t}/out", "--checkpoint",
                                          "{t}/cut.safetensors"], ["cut.safetensors"],
                                         cut("model.safetensors", "cut.safetensors"), after=absent("out")),
    "predict-missing-image": Case(["predict", "{t}/none.png", "--out", "{t}/out", *CKPT], ["none.png"],
                                  after=absent("out")),
    "predict-corrupt-png": Case(["predict", "{t}/bad.png", "--out", "{t}/out", *CKPT],
                                ["bad.png", "not a readable image"], write("bad.png", CORRUPT_PNG),
                                after=absent("out")),
    "predict-truncated-jpeg": Case(["predict", "{t}/cut.jpg", "--out", "{t}/out", *CKPT],
                                   ["cut.jpg", "truncated JPEG"], cut("img.jpg", "cut.jpg", 0.6), after=absent("out")),
    "predict-input-of-other-aspect": Case(["predict", "{w}/img.png", "--input", "depth={w}/wide-depth.png", "--out",
                                           "{t}/out", *CKPT], ["wide-depth.png: depth is 24x40", "img.png"],
                                          after=absent("out")),
    "predict-unknown-input": Case(["predict", "{w}/img.png", "--input", "lidar={w}/img.png", "--out", "{t}/out",
                                   *CKPT], ["lidar"], after=absent("out")),
    "predict-output-exists": Case(["predict", "{w}/img.png", "--out", "{t}/depth.png", *CKPT],
                                  ["depth.png", "already exists"], write("depth.png", b"mine"),
                                  after=unchanged("depth.png", b"mine")),
    "predict-disk-full": Case(["predict", "{w}/img.png", "--out", "{t}/depth.png", "--overwrite", *CKPT],
                              ["depth.png", "no space left on device"], write("depth.png", b"mine"), disk_full,
                              unchanged("depth.png", b"mine")),
    "predict-bad-mask-ratio": Case(["predict", "{w}/img.png", "--out", "{t}/out", "--mask-ratio", "1.5", *CKPT],
                                   ["--mask-ratio"], after=absent("out")),
    # data: folders with something wrong
    "data-check-no-folder": Case(["data", "check", "{t}/none"], ["none", "no such folder"]),
    "data-check-label-beyond-declared": Case(["data", "check", "{t}/data"], ["semseg", "60", "dataset.json declares"],
                                             in_data(label_out_of_range), report=True),
    "data-check-symlink-loop": Case(["data", "check", "{t}/data"], ["loop", "symbolic link loop"],
                                    in_data(symlink_loop), report=True),
    "data-check-broken-link": Case(["data", "check", "{t}/data"], ["zz.png", "broken symbolic link"],
                                   in_data(broken_link), report=True),
    "data-check-other-aspect": Case(["data", "check", "{t}/data"], ["depth", "000000.png: size 24x40"],
                                    in_data(wide_depth), report=True),
    "data-check-bad-dataset-json": Case(["data", "check", "{t}/data"], ["dataset.json", "not a JSON object"],
                                        in_data(lambda d: (d / "dataset.json").write_text("[1, 2")), report=True),
    "data-synth-n-zero": Case(["data", "synth", "--out", "{t}/d", "--n", "0"], ["--n"], after=absent("d")),
    "data-synth-out-is-file": Case(["data", "synth", "--out", "{t}/f", "--n", "1", "--size", "32"],
                                   ["f", "not a folder"], write("f", b"x"), after=unchanged("f", b"x")),
    "data-synth-bad-size": Case(["data", "synth", "--out", "{t}/d", "--size", "big"], ["--size"], after=absent("d")),
    # pretrain: data, settings and runs to resume that are wrong
    "pretrain-no-data": Case([*PRETRAIN, "--data", "{t}/none"], ["none", "no such folder"], after=absent("runs")),
    "pretrain-symlink-loop": Case([*PRETRAIN, "--data", "{t}/data"], ["symbolic link loop"], in_data(symlink_loop)),
    "pretrain-broken-link": Case([*PRETRAIN, "--data", "{t}/data"], ["zz.png", "broken symbolic link"],
                                 in_data(broken_link)),
    "pretrain-label-beyond-declared": Case([*PRETRAIN, "--data", "{t}/data"], ["semseg", "dataset.json declares"],
                                           in_data(label_out_of_range)),
    "pretrain-input-of-other-aspect": Case([*PRETRAIN, "--data", "{t}/data"], ["depth", "000000.png: size 24x40"],
                                           in_data(wide_depth)),
    "pretrain-config-missing": Case(["pretrain", "--config", "{t}/none.yaml"], ["none.yaml"]),
    "pretrain-config-bad-yaml": Case(["pretrain", "--config", "{t}/bad.yaml"], ["bad.yaml"],
                                     write("bad.yaml", b"model: [unclosed")),
    "pretrain-config-unknown-key": Case(["pretrain", "--config", "{t}/c.yaml"], ["c.yaml: bogus: unknown key"],
                                        write("c.yaml", b"bogus: 1\n")),
    "pretrain-set-bad-value": Case(["pretrain", "--set", "steps=abc"], ["steps"]),
    "pretrain-resume-no-run": Case(["pretrain", "--resume", "{t}/none"], ["none", "no such run folder"]),
    "pretrain-resume-with-settings": Case(["pretrain", "--resume", "{t}/run", "--steps", "3"],
                                          ["give no other settings"], in_run(lambda run, w: None)),
    "pretrain-resume-edited-config": Case(["pretrain", "--resume", "{t}/run"],
                                          ["config.yaml", "changed since the run started", "model.depth 2 -> 3"],
                                          in_run(edit_config), after=state_step(2)),
    "pretrain-resume-truncated-state": Case(["pretrain", "--resume", "{t}/run"],
                                            ["state.pt", "unreadable training state"],
                                            in_run(lambda run, w: (run / "last" / "state.pt").write_bytes(
                                                (run / "last" / "state.pt").read_bytes()[:300]))),
    "pretrain-resume-pickle-state": Case(["pretrain", "--resume", "{t}/run"],
                                         ["state.pt", "unreadable training state (UnpicklingError)"],
                                         in_run(lambda run, w: (run / "last" / "state.pt").write_bytes(
                                             pickle.dumps(_Payload(str(run.parent / "pwned"))))),
                                         after=absent("pwned")),
    "pretrain-resume-model-of-other-size": Case(["pretrain", "--resume", "{t}/run"],
                                                ["state.pt", "in model.safetensors", "different runs"],
                                                in_run(lambda run, w: shutil.copy(w / "wider.safetensors",
                                                                                  run / "last" / "model.safetensors"))),
    "pretrain-disk-full-at-start": Case([*PRETRAIN, "--name", "r"], ["config.yaml", "no space left on device"],
                                        fault=disk_full, after=absent("runs/r")),
    "pretrain-disk-full-at-checkpoint": Case([*PRETRAIN, "--name", "r", "--set", "checkpoint_every=1"],
                                             ["runs/r/last: cannot write (no space left on device)"],
                                             fault=disk_full_at_second_save, after=state_step(1, "runs/r")),
    # finetune and pseudolabel
    "finetune-unknown-task": Case(["finetune", "--task", "nosuch", *CKPT], ["nosuch"]),
    "finetune-checkpoint-missing": Case(["finetune", "--task", "depth", "--checkpoint", "{t}/none.safetensors"],
                                        ["none.safetensors"]),
    "pseudolabel-corrupt-image": Case(["pseudolabel", "{t}/photos", "--out", "{t}/ds", "--modalities", "edges",
                                       "--batch-size", "1", "--quiet"], ["b.png", "not a readable image", "--skip-bad"],
                                      photos(("b.png", CORRUPT_PNG))),
    "pseudolabel-no-folder": Case(["pseudolabel", "{t}/none", "--out", "{t}/ds", "--modalities", "edges"],
                                  ["none", "no such folder"], after=absent("ds")),
}


@pytest.mark.parametrize("name", list(CASES))
def test_bad_input(name, world, tmp_path, monkeypatch):
    case = CASES[name]
    t = tmp_path
    if case.setup is not None:
        case.setup(t, world)
    if case.fault is not None:
        case.fault(monkeypatch, t)
    code, out, err = invoke([a.format(w=world, t=t) for a in case.argv])
    monkeypatch.undo()
    if case.report:
        assert code == 1 and "problems found" in out, (code, out, err)
        line = next((line for line in out.splitlines() if all(f in line for f in case.fragments)), None)
        assert line is not None, out
    else:
        lines = err.strip().splitlines()
        assert code == 2 and len(lines) == 1 and lines[0].startswith("error: "), (code, out, err)
        assert "Traceback" not in err and all(f in lines[0] for f in case.fragments), (case.fragments, lines[0])
    if case.after is not None:
        case.after(t, world)


def test_the_corpus_is_large_and_covers_every_command():
    commands = {case.argv[0] + (f" {case.argv[1]}" if case.argv[0] == "data" else "") for case in CASES.values()}
    assert len(CASES) >= 40 and commands >= {"info", "export", "eval", "predict", "data check", "data synth",
                                             "pretrain", "finetune", "pseudolabel"}


def test_resume_of_a_run_killed_before_its_first_save_starts_it_again(world, tmp_path):
    """A run with only its `config.yaml` (and a half save) starts from step 0 with that config, saying so."""
    run = copy_run(tmp_path, world)
    shutil.rmtree(run / "last")
    (run / ".last-x1y2").mkdir()
    code, out, err = invoke(["pretrain", "--resume", run, "--json"])
    assert code == 0, err
    assert "holds no complete checkpoint yet (stopped before its first save): starting it again from step 0" in err
    assert json.loads(out)["steps"] == 2 and not list(run.glob(".last-*"))
    state_step(2)(tmp_path, world)
