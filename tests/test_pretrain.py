"""Pretraining runs: exact resume after kill -9, DDP equals one process, config precedence, NaN guard,
crash-safe checkpoints, a falling loss."""

from __future__ import annotations

import errno
import json
import os
import pickle
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import REPO, interrupt_after_step, run_cli

from multimae_cli.config import PretrainConfig, load_pretrain_config
from multimae_cli.data.folder import epoch_and_index
from multimae_cli.errors import ConfigError, InputError, TrainingStopped
from multimae_cli.formats.load import load_model
from multimae_cli.plugin.factory import pretrain_model_config
from multimae_cli.train import checkpoint as ckpt
from multimae_cli.train import pretrain as pretrain_module
from multimae_cli.train import runlog
from multimae_cli.train.pretrain import pretrain

TINY = {"model": {"image_size": 32, "depth": 2, "dim": 64, "num_heads": 2, "decoder_dim": 32,
                  "decoder_num_heads": 2, "decoder_depth": 1, "inputs": ["rgb", "depth", "semseg"]},
        "data": {"synthetic_scenes": 64, "workers": 0}, "optim": {"lr": 2e-3}, "batch_size": 4, "log_every": 2,
        "checkpoint_every": 4, "preview_every": 0, "device": "cpu"}


def tiny(tmp_path: Path, **changes) -> PretrainConfig:
    values = json.loads(json.dumps(TINY))
    values.update(out_dir=str(tmp_path / "runs"), **changes)
    return PretrainConfig.model_validate(values)


def weights(run: Path) -> dict[str, torch.Tensor]:
    return load_model(run / "last" / "model.safetensors").state_dict()


def metrics(run: Path) -> list[dict]:
    """The training records (the run's last line holds its held-out cross-modal quality)."""
    return [r for r in all_records(run) if "loss" in r]


def all_records(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def test_loss_falls_and_run_folder_is_complete(tmp_path):
    summary = pretrain(tiny(tmp_path, name="falls", steps=40, log_every=10, preview_every=20), quiet=True)
    run = Path(summary["run"])
    records = all_records(run)
    records, held_out = records[:-1], records[-1]
    assert [r["step"] for r in records] == [10, 20, 30, 40]
    assert records[-1]["loss"] < 0.8 * records[0]["loss"], records
    # the run ends with its decoders' cross-modal quality on held-out scenes (the synthetic val stream)
    assert set(held_out) == {"step", "heldout/rgb->depth/delta1", "heldout/rgb->semseg/mIoU"} and held_out["step"] == 40
    quality = summary["cross_modal"]
    assert quality["source"] == "rgb" and quality["samples"] == 64 and set(quality["outputs"]) == {"depth", "semseg"}
    assert quality["outputs"]["depth"]["value"] == held_out["heldout/rgb->depth/delta1"]
    assert quality["outputs"]["semseg"]["constant"] > 0
    assert {"loss", "loss/rgb", "loss/depth", "loss/semseg", "loss/norm_rgb", "lr", "img_per_s"} <= set(records[0])
    assert (run / "config.yaml").is_file() and sorted(p.name for p in (run / "previews").iterdir()) == [
        "step-000020.png", "step-000040.png"]
    model = load_model(summary["checkpoint"])
    assert model.config.outputs == ("rgb", "depth", "semseg", "norm_rgb") and model.config.image_size == (32, 32)
    with pytest.raises(ConfigError, match="run folder already exists"):
        pretrain(tiny(tmp_path, name="falls", steps=2), quiet=True)


def test_resume_after_kill_is_bit_identical(tmp_path):
    config = tiny(tmp_path, name="whole", steps=12)
    pretrain(config, quiet=True)
    reference = weights(tmp_path / "runs" / "whole")

    killed = tmp_path / "runs" / "killed"
    args = ["pretrain", "--quiet", "--name", "killed", "--out", str(tmp_path / "runs")]
    for key, value in (("model", TINY["model"]), ("data", TINY["data"]), ("optim", TINY["optim"])):
        args += [item for k, v in value.items() for item in ("--set", f"{key}.{k}={json.dumps(v)}")]
    args += ["--set", "batch_size=4", "--set", "log_every=2", "--set", "checkpoint_every=4", "--set", "preview_every=0",
             "--steps", "12", "--device", "cpu"]
    process = subprocess.Popen([sys.executable, "-m", "multimae_cli", *args], stdout=subprocess.DEVNULL,
                               stderr=subprocess.PIPE, start_new_session=True)
    deadline = time.time() + 240
    while time.time() < deadline:
        folder = killed / "last"
        if (folder / "state.pt").is_file() and torch.load(folder / "state.pt", weights_only=True)["step"] >= 4:
            break
        assert process.poll() is None, process.stderr.read().decode()
        time.sleep(0.05)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    stopped_at = torch.load(ckpt.find_checkpoint(killed) / "state.pt", weights_only=True)["step"]
    assert 4 <= stopped_at < 12
    pretrain(PretrainConfig.model_validate(__import__("yaml").safe_load((killed / "config.yaml").read_text())),
             resume=killed, quiet=True)
    resumed = weights(killed)
    assert all(torch.equal(resumed[k], reference[k]) for k in reference)
    assert [r["step"] for r in metrics(killed)] == list(range(2, 13, 2))
    assert [r["loss"] for r in metrics(killed)] == [r["loss"] for r in metrics(tmp_path / "runs" / "whole")]


def test_ddp_two_processes_match_one(tmp_path):
    """2 gloo processes x batch 4 against 1 process x batch 8: losses within 1e-5 relative, weights within 1e-5
    (but for rare elements whose gradient is ~0: see assert_same_training). Checkpoints by time (`0.01s`): the
    ranks agree on every save through rank 0's broadcast, or the barrier after a save would hang."""
    pretrain(tiny(tmp_path, name="single", steps=6, batch_size=8), quiet=True)
    args = ["--set", f"model={json.dumps(TINY['model'])}", "--set", f"data={json.dumps(TINY['data'])}",
            "--set", f"optim={json.dumps(TINY['optim'])}",
            "--set", "batch_size=4", "--set", "log_every=2", "--set", "checkpoint_every=0.01s",
            "--set", "preview_every=0", "--steps", "6", "--device", "cpu"]
    result = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_port=29517",
         "-m", "multimae_cli", "pretrain", "--quiet", "--name", "ddp", "--out", str(tmp_path / "runs"), *args],
        capture_output=True, text=True, timeout=600, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stderr[-3000:]
    single, ddp = metrics(tmp_path / "runs" / "single"), metrics(tmp_path / "runs" / "ddp")
    assert [r["step"] for r in ddp] == [2, 4, 6]
    for a, b in zip(single, ddp, strict=True):
        for key in ("loss", "loss/rgb", "loss/depth", "loss/semseg", "loss/norm_rgb"):
            assert b[key] == pytest.approx(a[key], rel=1e-5, abs=1e-6), key
    assert_same_training(weights(tmp_path / "runs" / "single"), weights(tmp_path / "runs" / "ddp"))


def test_slurm_script_runs_two_torchrun_agents_that_train_like_one_process(tmp_path):
    """examples/slurm/pretrain.sbatch with stand-ins for `srun` (its two tasks: one torchrun agent per "node",
    here both on 127.0.0.1) and `scontrol`: the agents meet through the c10d rendezvous and train like one
    process with the global batch; submitted again, the script resumes the run instead of starting another."""
    import socket

    pretrain(tiny(tmp_path, name="single", steps=4, batch_size=8), quiet=True)
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "scontrol").write_text("#!/bin/bash\necho 127.0.0.1\n")
    (bin_dir / "srun").write_text("#!/bin/bash\n\"$@\" & first=$!\n\"$@\"; second=$?\nwait $first && exit $second\n")
    for stub in bin_dir.iterdir():
        stub.chmod(0o755)
    (bin_dir / "torchrun").symlink_to(Path(sys.executable).parent / "torchrun")
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    (tmp_path / "tiny.yaml").write_text(json.dumps({**TINY, "batch_size": 4, "log_every": 2, "steps": 4}))
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "OMP_NUM_THREADS": "1", "SLURM_NNODES": "2",
           "SLURM_JOB_NODELIST": "node[1-2]", "SLURM_JOB_ID": "4242", "RUN": str(tmp_path / "runs" / "slurm"),
           "CONFIG": str(tmp_path / "tiny.yaml"), "GPUS_PER_NODE": "1", "PORT": str(port)}
    script = REPO / "examples" / "slurm" / "pretrain.sbatch"
    result = subprocess.run(["bash", str(script), "--quiet"], capture_output=True, text=True, env=env, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    single, slurm = metrics(tmp_path / "runs" / "single"), metrics(tmp_path / "runs" / "slurm")
    assert [r["step"] for r in slurm] == [2, 4]
    for a, b in zip(single, slurm, strict=True):
        assert b["loss"] == pytest.approx(a["loss"], rel=1e-5, abs=1e-6)
    again = subprocess.run(["bash", str(script)], capture_output=True, text=True, env=env, timeout=600)
    assert again.returncode == 0 and "nothing to do: the run is already at step 4" in again.stdout, again.stderr


def test_sigterm_under_torchrun_saves_on_every_rank_at_one_step(tmp_path):
    """SIGTERM to torchrun (what a scheduler sends) reaches both gloo ranks; they agree on the step to stop at,
    save one consistent checkpoint and stop, well before torchrun's own kill."""
    args = ["--set", f"model={json.dumps(TINY['model'])}", "--set", f"data={json.dumps(TINY['data'])}",
            "--set", "batch_size=4", "--set", "checkpoint_every=1000", "--set", "preview_every=0", "--steps", "400",
            "--device", "cpu"]
    process = subprocess.Popen(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_port=29519",
         "-m", "multimae_cli", "pretrain", "--quiet", "--name", "ddp", "--out", str(tmp_path / "runs"), *args],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    metrics_file = tmp_path / "runs" / "ddp" / "metrics.jsonl"
    deadline = time.time() + 300
    while not (metrics_file.is_file() and metrics_file.read_text().strip()) and time.time() < deadline:
        assert process.poll() is None, process.stderr.read()[-3000:]
        time.sleep(0.05)
    started = time.time()
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=120)
    assert time.time() - started < 25, "the ranks did not stop within a few steps"
    said = re.findall(r"error: stopped by SIGTERM at step (\d+); checkpoint saved", stderr)
    assert len(said) == 2 and len(set(said)) == 1, stderr[-3000:]  # both ranks, the same step
    state = torch.load(ckpt.find_checkpoint(tmp_path / "runs" / "ddp") / "state.pt", weights_only=True)
    assert state["step"] == int(said[0])
    assert {int(entry["step"]) for entry in state["optimizer"]["state"].values()} == {state["step"]}


POISON_RANK_0 = """
import os
from multimae_cli.cli import main
from multimae_cli.train import pretrain

real = pretrain.create_objective


def poisoned(*args, **kwargs):  # rank 0's loss is NaN at its 4th micro-batch only
    objective, calls = real(*args, **kwargs), {"n": 0}
    forward = objective.forward

    def forward_with_nan(preds, targets, masks=None):
        calls["n"] += 1
        total, parts = forward(preds, targets, masks)
        return (total * float("nan") if calls["n"] == 4 and os.environ["RANK"] == "0" else total), parts

    objective.forward = forward_with_nan
    return objective


pretrain.create_objective = poisoned
main()
"""


def test_ddp_nan_on_one_rank_stops_every_rank(tmp_path):
    """Rank 0 alone sees a NaN loss at step 4: both ranks stop at the log step naming step 4 (a rank stopping
    alone left the other waiting in its next collective until the timeout), the step-2 checkpoint is kept."""
    script = tmp_path / "poisoned.py"
    script.write_text(POISON_RANK_0)
    args = ["--set", f"model={json.dumps(TINY['model'])}", "--set", f"data={json.dumps(TINY['data'])}",
            "--set", "batch_size=4", "--set", "log_every=2", "--set", "checkpoint_every=2", "--set", "preview_every=0",
            "--steps", "8", "--device", "cpu"]
    result = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_port=29519", str(script),
         "pretrain", "--quiet", "--name", "nan", "--out", str(tmp_path / "runs"), *args],
        capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert result.returncode != 0
    stops = re.findall(r"error: non-finite loss at step (\d+): (on another rank|rgb [^;]*);", result.stderr)
    assert len(stops) == 2 and {step for step, _ in stops} == {"4"}, result.stderr[-3000:]
    own, other = sorted((terms for _, terms in stops), key=lambda terms: terms == "on another rank")
    assert other == "on another rank" and own.startswith("rgb ") and "depth " in own
    folder = ckpt.find_checkpoint(tmp_path / "runs" / "nan")
    assert torch.load(folder / "state.pt", weights_only=True)["step"] == 2


def assert_same_training(one: dict[str, torch.Tensor], two: dict[str, torch.Tensor]) -> None:
    """Weights of two runs that differ only in summation order: all within 1e-5, but for rare elements.

    Adam divides by sqrt(v): where a gradient is ~0, rounding noise becomes a +-lr step. Such elements are rare
    (measured: 2 of 0.48 M, both for DDP and for compiled runs) and stay within 2e-4 here."""
    off, total = 0, 0
    for key in one:
        a, b = without_key_bias(key, one[key]), without_key_bias(key, two[key])
        torch.testing.assert_close(b, a, atol=2e-4, rtol=1e-4, msg=key)
        off += int(((b - a).abs() > 1e-5 + 1e-4 * a.abs()).sum())
        total += a.numel()
    assert off <= 1e-4 * total, f"{off} of {total} weights differ by more than 1e-5"


def without_key_bias(key: str, tensor: torch.Tensor) -> torch.Tensor:
    """Attention key biases have an exactly zero gradient (softmax ignores a shift shared by all keys), so Adam
    turns their rounding noise into +-lr steps that differ between any two summation orders; leave them out."""
    if key.endswith("qkv.bias"):
        third = tensor.shape[0] // 3
        return torch.cat([tensor[:third], tensor[2 * third:]])
    if key.endswith(".kv.bias"):
        return tensor[tensor.shape[0] // 2:]
    return tensor


def test_config_precedence_and_unknown_keys(tmp_path):
    file = tmp_path / "run.yaml"
    file.write_text("batch_size: 8\nsteps: 30\noptim:\n  blr: 1.0\n  min_lr: 0.5\nmodel:\n  dim: 96\n")
    config = load_pretrain_config(str(file), {"batch_size": 4}, ["optim.blr=2.0", "model.depth=3"])
    assert config.batch_size == 4 and config.steps == 30  # flag beats file; file beats default
    assert config.optim.blr == 2.0 and config.optim.min_lr == 0.5  # --set beats file; siblings kept
    resolved = config.model_config_resolved()
    assert (resolved.dim, resolved.depth, resolved.image_size) == (96, 3, (64, 64))  # default image size kept
    assert resolved.num_encoded_tokens == 8  # a sixth of 3 x 16 tokens
    file.write_text("optim:\n  blrr: 1.0\n")
    with pytest.raises(ConfigError, match=r"optim\.blrr: unknown key"):
        load_pretrain_config(str(file))
    with pytest.raises(ConfigError, match=r"model\.dimm: unknown key"):
        load_pretrain_config(assignments=["model.dimm=3"])
    with pytest.raises(ConfigError, match="expected key=value"):
        load_pretrain_config(assignments=["optim.blr"])
    with pytest.raises(ConfigError, match="batch_size: Input should be a valid integer"):
        load_pretrain_config(flags={"batch_size": "many"})
    result = run_cli("pretrain", "--set", "optim.warmup=3")
    assert result.returncode == 2 and result.stderr.strip() == "error: optim.warmup: unknown key"
    result = run_cli("pretrain", "--modalities", "rgb,lidar", "--steps", "1")
    assert result.returncode == 2 and "unknown modality 'lidar'" in result.stderr


@pytest.mark.parametrize(("assignment", "message"), [
    ("batch_size=0", "batch_size: Input should be greater than or equal to 1"),  # was a ZeroDivisionError
    ("steps=-3", "steps: Input should be greater than or equal to 1"),  # was a run that did nothing
    ("data.hflip=2", "data.hflip: Input should be less than or equal to 1"),
    ("data.crop_scale=[0,1]", "data.crop_scale.0: Input should be greater than 0"),
    ("optim.lr=-1", "optim.lr: Input should be greater than 0"),
    ("optim.accum_steps=0", "optim.accum_steps: Input should be greater than or equal to 1"),
    ("log_every=0", "log_every: Input should be greater than or equal to 1"),
    ("model.image_size=[64,0]", "model.image_size.1: Input should be greater than or equal to 1"),
])
def test_out_of_range_settings_name_the_key(assignment, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        load_pretrain_config(assignments=[assignment]).model_config_resolved()


@pytest.mark.parametrize("log_every", [2, 5])  # the bad step read at its own log step, or at the next save (8)
def test_nan_loss_stops_and_keeps_last_good_checkpoint(tmp_path, monkeypatch, log_every):
    real = pretrain_module.create_objective

    def poisoned(*args, **kwargs):
        objective = real(*args, **kwargs)
        calls = {"n": 0}
        forward = objective.forward

        def forward_with_nan(preds, targets, masks=None):
            calls["n"] += 1
            total, parts = forward(preds, targets, masks)
            if calls["n"] == 6:
                parts["depth"] = parts["depth"] * float("nan")
                total = total + parts["depth"]
            return total, parts

        objective.forward = forward_with_nan
        return objective

    monkeypatch.setattr(pretrain_module, "create_objective", poisoned)
    with pytest.raises(TrainingStopped, match=r"non-finite loss at step 6: rgb [\d.]+, depth nan, semseg [\d.]+"):
        pretrain(tiny(tmp_path, name="nan", steps=12, log_every=log_every), quiet=True)
    folder = ckpt.find_checkpoint(tmp_path / "runs" / "nan")
    assert torch.load(folder / "state.pt", weights_only=True)["step"] == 4
    assert all(torch.isfinite(v).all() for v in load_model(folder / "model.safetensors").state_dict().values())


def test_bad_sample_mid_run_saves_progress_and_the_run_resumes(tmp_path, monkeypatch):
    real = pretrain_module.build_dataset

    def breaking(*args, **kwargs):  # the 9th sample read fails, as a corrupt file would
        dataset = real(*args, **kwargs)
        read, calls = dataset.read, {"n": 0}

        def read_or_fail(index):
            calls["n"] += 1
            if calls["n"] == 9:
                raise InputError("data/train/rgb/000007.png: not a readable image")
            return read(index)

        dataset.read = read_or_fail
        return dataset

    monkeypatch.setattr(pretrain_module, "build_dataset", breaking)
    with pytest.raises(TrainingStopped, match=r"^data/train/rgb/000007.png: not a readable image; progress saved at "
                                              r"step (\d+): .* `multimae pretrain --resume .*badfile`") as stopped:
        pretrain(tiny(tmp_path, name="badfile", steps=12), quiet=True)
    saved = int(re.search(r"step (\d+)", str(stopped.value)).group(1))
    run = tmp_path / "runs" / "badfile"
    assert saved > 0 and torch.load(run / "last" / "state.pt", weights_only=True)["step"] == saved
    monkeypatch.setattr(pretrain_module, "build_dataset", real)  # the file mended
    assert pretrain(tiny(tmp_path, name="badfile", steps=12), resume=run, quiet=True)["steps"] == 12


def test_resuming_a_finished_run_says_so(tmp_path):
    pretrain(tiny(tmp_path, name="finished", steps=2), quiet=True)
    result = run_cli("pretrain", "--resume", str(tmp_path / "runs" / "finished"), "--quiet")
    assert result.returncode == 0 and result.stderr == "", result.stderr
    result = run_cli("pretrain", "--resume", str(tmp_path / "runs" / "finished"))
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines()[-1].startswith("nothing to do: the run is already at step 2;")


def test_interrupted_checkpoint_write_keeps_previous(tmp_path, monkeypatch):
    real_save = torch.save
    saves = {"n": 0}

    def failing_save(obj, handle, *args, **kwargs):
        saves["n"] += 1
        if saves["n"] == 2:
            handle.write(b"half a file")
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_save(obj, handle, *args, **kwargs)

    monkeypatch.setattr(torch, "save", failing_save)
    with pytest.raises(TrainingStopped, match=r"crash/last: cannot write \(no space left on device\); the last "
                       "complete checkpoint is kept"):
        pretrain(tiny(tmp_path, name="crash", steps=12), quiet=True)
    run = tmp_path / "runs" / "crash"
    folder = ckpt.find_checkpoint(run)
    assert torch.load(folder / "state.pt", weights_only=True)["step"] == 4
    load_model(folder / "model.safetensors")
    assert [p.name for p in run.iterdir() if p.name.startswith(".")] == []  # no temporary folder left


@pytest.mark.parametrize("name", ["pretrain-tiny-cpu.yaml", "pretrain-official-vitb.yaml"])
def test_example_configs_are_valid(name):
    from conftest import REPO

    config = load_pretrain_config(str(REPO / "examples" / "configs" / name))
    model = pretrain_model_config(config)
    assert model.inputs == ("rgb", "depth", "semseg") and model.outputs[-1] == "norm_rgb"
    if "official" in name:
        assert (model.dim, model.num_encoded_tokens, config.epochs, config.batch_size) == (768, 98, 1600, 256)


@pytest.mark.parametrize(("number", "said"), [(signal.SIGINT, "interrupted"), (signal.SIGTERM, "stopped by SIGTERM")])
def test_ctrl_c_and_sigterm_save_and_stop_at_a_step_boundary(tmp_path, number, said):
    """Ctrl-C and SIGTERM (what SLURM and Kubernetes send) stop at the next step boundary: the checkpoint's
    weights, optimiser and step agree (every AdamW state took exactly `step` updates), so it resumes exactly."""
    args = ["pretrain", "--name", "interrupted", "--out", str(tmp_path / "runs"), "--steps", "400", "--device", "cpu",
            "--set", f"model={json.dumps(TINY['model'])}", "--set", f"data={json.dumps(TINY['data'])}",
            "--set", "batch_size=4", "--set", "checkpoint_every=1000", "--set", "preview_every=0", "--quiet"]
    process = subprocess.Popen([sys.executable, "-m", "multimae_cli", *args], stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
    metrics_file = tmp_path / "runs" / "interrupted" / "metrics.jsonl"
    deadline = time.time() + 240
    while not (metrics_file.is_file() and metrics_file.read_text().strip()) and time.time() < deadline:
        assert process.poll() is None, process.stderr.read()
        time.sleep(0.05)
    process.send_signal(number)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 2
    assert re.fullmatch(rf"error: {said} at step (\d+); checkpoint saved, continue with `multimae pretrain "
                        r"--resume .*interrupted`", stderr.strip()), stderr
    step = int(re.search(r"step (\d+)", stderr).group(1))
    state = torch.load(ckpt.find_checkpoint(tmp_path / "runs" / "interrupted") / "state.pt", weights_only=True)
    assert state["step"] == step >= 10
    updates = {int(entry["step"]) for entry in state["optimizer"]["state"].values()}
    assert updates == {step}


def test_compiled_step_matches_eager(tmp_path):
    """`compile: true` (torch.compile of the whole model; the loop's own masks need no host sync, so nothing
    breaks the graph) trains like eager: losses of 4 steps within 1e-4 relative, weights as after DDP."""
    pytest.importorskip("torch._inductor")
    eager = pretrain(tiny(tmp_path, name="eager", steps=4), quiet=True)
    compiled = pretrain(tiny(tmp_path, name="compiled", steps=4, compile=True), quiet=True)
    assert compiled["steps"] == eager["steps"] == 4
    for a, b in zip(metrics(tmp_path / "runs" / "eager"), metrics(tmp_path / "runs" / "compiled"), strict=True):
        assert b["loss"] == pytest.approx(a["loss"], rel=1e-4), (a, b)
    assert_same_training(weights(tmp_path / "runs" / "eager"), weights(tmp_path / "runs" / "compiled"))


def test_compile_mode_needs_compile_and_one_process(monkeypatch):
    """CUDA graphs (`compile_mode: reduce-overhead`) are opt-in on top of `compile: true`, and refused at load
    under torchrun, where DDP's gradient hooks run between the step's kernels."""
    config = load_pretrain_config(assignments=["compile=true", "compile_mode=reduce-overhead"])
    assert config.compile_mode == "reduce-overhead"
    with pytest.raises(ConfigError, match="compile_mode: reduce-overhead needs compile: true"):
        load_pretrain_config(assignments=["compile_mode=reduce-overhead"])
    with pytest.raises(ConfigError, match=r"compile_mode: Input should be 'default' or 'reduce-overhead'"):
        load_pretrain_config(assignments=["compile=true", "compile_mode=fast"])
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(ConfigError, match="runs in one process only"):
        load_pretrain_config(assignments=["compile=true", "compile_mode=reduce-overhead"])


def test_checkpoints_by_steps_or_by_time(monkeypatch):
    """`checkpoint_every`: steps, or a duration (the default, 10min) measured from the last save."""
    from multimae_cli.train.checkpoint import SaveSchedule
    from multimae_cli.train.distributed import DistInfo

    assert PretrainConfig().checkpoint_every == "10min"
    clock = [100.0]
    monkeypatch.setattr("multimae_cli.train.checkpoint.time.monotonic", lambda: clock[0])
    by_time = SaveSchedule(load_pretrain_config(assignments=["checkpoint_every=90s"]), DistInfo(), torch.device("cpu"))
    clock[0] += 89
    assert not by_time.due(7)
    clock[0] += 1
    assert by_time.due(8)
    by_time.saved()
    assert not by_time.due(9)
    by_steps = SaveSchedule(load_pretrain_config(assignments=["checkpoint_every=4"]), DistInfo(), torch.device("cpu"))
    assert [step for step in range(1, 13) if by_steps.due(step)] == [4, 8, 12]
    assert load_pretrain_config(assignments=["checkpoint_every=1.5h"]).checkpoint_seconds == 5400
    for bad in ("0", "10 minutes", "0s"):
        with pytest.raises(ConfigError, match="checkpoint_every: expected a number of steps >= 1 or a duration"):
            load_pretrain_config(assignments=[f"checkpoint_every={bad}"])


def test_loss_window_reads_once_and_names_the_first_bad_micro_batch():
    from multimae_cli.train.window import LossWindow

    window = LossWindow()
    for step, value in [(1, 2.0), (1, 4.0), (2, 6.0)]:
        window.add(step, {"loss": torch.tensor(value), "loss/rgb": torch.tensor(value / 2)})
    assert window.settle() is None and window.pending == []
    assert window.means() == {"loss": 4.0, "loss/rgb": 2.0} and window.means() == {}
    window.add(3, {"loss": torch.tensor(1.0), "loss/rgb": torch.tensor(1.0)})
    window.add(4, {"loss": torch.tensor(float("inf")), "loss/rgb": torch.tensor(1.0)})
    window.add(5, {"loss": torch.tensor(float("nan")), "loss/rgb": torch.tensor(1.0)})
    assert window.settle() == (4, {"loss": float("inf"), "loss/rgb": 1.0})
    assert window.means() == {"loss": 1.0, "loss/rgb": 1.0}


class _Items:
    """A dataset whose samples are their own `(epoch, index)` item."""

    def __len__(self) -> int:
        return 6

    def __getitem__(self, item):
        return {"item": torch.tensor(epoch_and_index(item))}


def test_sampler_runs_across_epochs_resumes_anywhere_and_reaches_persistent_workers():
    from multimae_cli.data.datasets import make_loader
    from multimae_cli.train.distributed import DistInfo, EpochSampler

    def items(sampler, count):
        iterator = iter(sampler)
        return [next(iterator) for _ in range(count)]

    one = DistInfo(rank=0, world=1, local_rank=0)
    sampler = EpochSampler(7, 3, one, seed=5)  # 2 batches per epoch, sample 7 of each epoch left out
    straight = items(sampler, 18)
    assert [epoch for epoch, _ in straight] == [0] * 6 + [1] * 6 + [2] * 6
    assert [index for _, index in straight[:6]] != [index for _, index in straight[6:12]]  # reshuffled
    sampler.start_at(3)  # global batch 3: the second batch of epoch 1
    assert items(sampler, 9) == straight[9:]
    ranks = [EpochSampler(7, 1, DistInfo(rank=r, world=3, local_rank=r), seed=5) for r in range(3)]
    per_rank = zip(*(items(rank, 6) for rank in ranks), strict=True)  # one sample of each global batch per rank
    assert [item for batch in per_rank for item in batch] == straight

    loader = make_loader(_Items(), 3, sampler=EpochSampler(6, 3, one, seed=0), workers=2)
    batches = [batch["item"] for _, batch in zip(range(6), loader, strict=False)]
    assert [batch[:, 0].tolist() for batch in batches] == [[0] * 3] * 2 + [[1] * 3] * 2 + [[2] * 3] * 2


def test_resume_in_a_later_epoch_with_loader_workers_is_exact(tmp_path, monkeypatch):
    """With worker processes (which keep their copy of the dataset), a run stopped at step 6 of 4-batch epochs and
    resumed trains exactly like one that was never stopped: each epoch's augmentation reaches the workers."""
    settings = {"steps": 10, "checkpoint_every": 100, "data": {"synthetic_scenes": 16, "workers": 2}}
    pretrain(tiny(tmp_path, name="whole", **settings), quiet=True)
    undo = interrupt_after_step(monkeypatch, 6)
    with pytest.raises(TrainingStopped, match="interrupted at step 6"):
        pretrain(tiny(tmp_path, name="resumed", **settings), quiet=True)
    undo()
    pretrain(tiny(tmp_path, name="resumed", **settings), resume=tmp_path / "runs" / "resumed", quiet=True)
    whole, resumed = weights(tmp_path / "runs" / "whole"), weights(tmp_path / "runs" / "resumed")
    assert all(torch.equal(whole[k], resumed[k]) for k in whole)


@pytest.mark.parametrize("workers", [0, 2])
def test_a_stop_at_any_step_resumes_bit_identical(tmp_path, monkeypatch, workers):
    """Ctrl-C after each step of a short run in turn (loader workers or none), then `--resume`: weights, every
    logged loss and the summary's `first_loss` (the run's, not the resumed segment's) equal the run never
    stopped. (A stop raised mid-step once left 170 of 175 tensors off by up to 3.4e-4.)"""
    settings = {"steps": 5, "log_every": 1, "checkpoint_every": 100,
                "data": {"synthetic_scenes": 8, "workers": workers}}
    whole = pretrain(tiny(tmp_path, name="whole", **settings), quiet=True)
    reference, losses = weights(tmp_path / "runs" / "whole"), [r["loss"] for r in metrics(tmp_path / "runs" / "whole")]
    for stop in range(1, 5):
        name = f"stop{stop}"
        undo = interrupt_after_step(monkeypatch, stop)
        with pytest.raises(TrainingStopped, match=f"interrupted at step {stop};"):
            pretrain(tiny(tmp_path, name=name, **settings), quiet=True)
        undo()
        summary = pretrain(tiny(tmp_path, name=name, **settings), resume=tmp_path / "runs" / name, quiet=True)
        resumed = weights(tmp_path / "runs" / name)
        assert [k for k in reference if not torch.equal(reference[k], resumed[k])] == [], f"stopped at {stop}"
        assert [r["loss"] for r in metrics(tmp_path / "runs" / name)] == losses, f"stopped at {stop}"
        assert summary["first_loss"] == whole["first_loss"] and summary["final_loss"] == whole["final_loss"]


def test_threads_setting_is_honoured_for_the_run_only(tmp_path, monkeypatch):
    """`threads: 1` is what torch runs the steps with; auto is OMP_NUM_THREADS where set, else the CPUs of this
    process's affinity; the caller's setting is restored afterwards."""
    from multimae_cli.data.datasets import cpus_per_process

    seen = []
    original = runlog.append_metrics
    monkeypatch.setattr(runlog, "append_metrics", lambda run, record: (seen.append(torch.get_num_threads()),
                                                                      original(run, record)))
    caller = torch.get_num_threads()
    before = cpus_per_process() + 1  # a setting that neither `threads: 1` nor auto would give
    torch.set_num_threads(before)
    try:
        assert pretrain(tiny(tmp_path, name="one", steps=2, threads=1), quiet=True)["threads"] == 1
        assert set(seen) == {1} and torch.get_num_threads() == before
        seen.clear()
        monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
        pretrain(tiny(tmp_path, name="auto", steps=2), quiet=True)
        assert set(seen) == {cpus_per_process()} == {len(os.sched_getaffinity(0))}
        seen.clear()
        monkeypatch.setenv("OMP_NUM_THREADS", "1")  # what torch read at start-up stands
        pretrain(tiny(tmp_path, name="omp", steps=2), quiet=True)
        assert set(seen) == {before}
    finally:
        torch.set_num_threads(caller)
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "64")
    assert cpus_per_process() == 1
    with pytest.raises(ConfigError, match="threads"):
        load_pretrain_config(assignments=["threads=0"])


def test_resume_refuses_edited_settings_and_survives_a_kill_mid_write(tmp_path):
    """`config.yaml` edited under a stopped run is refused with the keys that differ; a half-written last line of
    `metrics.jsonl` and a `.last-*` folder left by a killed save are cleaned up by the resume; a state file that
    is not one multimae wrote (a pickle payload, a truncated file) is one line."""
    import yaml

    run = tmp_path / "runs" / "r"
    pretrain(tiny(tmp_path, name="r", steps=4), quiet=True)
    config_file = run / "config.yaml"
    original = config_file.read_text()
    edited = yaml.safe_load(original)
    edited["model"]["depth"], edited["steps"] = 3, 8
    config_file.write_text(yaml.safe_dump(edited, sort_keys=False))
    result = run_cli("pretrain", "--resume", str(run))
    assert result.returncode == 2 and result.stderr.startswith(f"error: {config_file}: changed since the run started: "
                                                               "model.depth 2 -> 3, steps 4 -> 8;"), result.stderr
    config_file.write_text(original.replace("steps: 4", "steps: 6"))  # as before, but the edit that extends it
    with (run / "metrics.jsonl").open("a") as handle:
        handle.write('{"step": 5, "lo')  # a kill while writing
    (run / ".last-abc123").mkdir()  # a kill while saving
    result = run_cli("pretrain", "--resume", str(run))
    assert result.returncode == 2 and "steps 4 -> 6" in result.stderr
    config_file.write_text(original)
    pretrain(tiny(tmp_path, name="r", steps=4), resume=run, quiet=True)
    assert not list(run.glob(".last-*")) and (run / "last" / "state.pt").is_file()
    assert all(json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines())
    (run / "last" / "state.pt").write_bytes(pickle.dumps(object()))
    result = run_cli("pretrain", "--resume", str(run))
    assert result.returncode == 2 and result.stderr == (
        f"error: {run / 'last' / 'state.pt'}: unreadable training state (UnpicklingError): cut short, or not "
        "written by multimae (objects in it are never loaded)\n")
