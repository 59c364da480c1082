from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

if os.environ.get("PYTEST_XDIST_WORKER"):  # test processes share the cores: one thread each (and their subprocesses)
    os.environ.setdefault("OMP_NUM_THREADS", "1")

REPO = Path(__file__).resolve().parents[1]
# Reference data made with the official MultiMAE code (tests/fixtures/official-compat/README.md): part of the
# repository, so every fidelity test runs on a fresh clone.
FIXTURES = REPO / "tests" / "fixtures" / "official-compat"


def pytest_collection_modifyitems(items):
    """Tests that read the official reference data are fidelity tests."""
    for item in items:
        if "fixture_dir" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.fidelity)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """A fidelity test may not skip: "same outputs as the official code" is a promise, not an option."""
    outcome = yield
    report = outcome.get_result()
    if report.skipped and item.get_closest_marker("fidelity"):
        report.outcome = "failed"
        report.longrepr = f"fidelity test skipped, which counts as a failure: {report.longrepr}"


@pytest.fixture(scope="session")
def fixture_dir() -> Path:
    if not (FIXTURES / "tiny_multivit.pth").is_file():
        pytest.fail(f"official-compat fixtures missing from {FIXTURES}")
    return FIXTURES


@pytest.fixture(scope="session")
def tiny_io(fixture_dir):
    from safetensors.torch import load_file

    return load_file(str(fixture_dir / "tiny_io.safetensors"))


@pytest.fixture(scope="session")
def tiny_pth(fixture_dir) -> Path:
    return fixture_dir / "tiny_multivit.pth"


@pytest.fixture(scope="module")
def encoder(tmp_path_factory):
    """A tiny rgb+depth pretraining checkpoint (random weights: for tests of fine-tuning plumbing)."""
    import torch

    from multimae_cli import ModelConfig, create_model, save_model

    torch.manual_seed(0)
    config = ModelConfig(inputs=("rgb", "depth"), outputs=("rgb", "depth"), image_size=32, patch_size=8, dim=32,
                         depth=4, num_heads=2, decoder_dim=32, decoder_depth=1, decoder_num_heads=2,
                         num_encoded_tokens=8)
    path = tmp_path_factory.mktemp("enc") / "enc.safetensors"
    save_model(create_model(config), path)
    return path


@pytest.fixture()
def tiny_model(tiny_pth):
    from multimae_cli import load_model

    return load_model(tiny_pth).eval()


def fixture_inputs(io, size: int = 64):
    if size == 96:
        return {"rgb": io["in96.rgb"], "semseg": io["in96.semseg"]}
    return {"rgb": io["in.rgb"], "depth": io["in.depth"], "semseg": io["in.semseg"]}


def fixture_masks(io):
    return {name: io[f"mask.{name}"] for name in ("rgb", "depth", "semseg")}


def run_cli(*args: str, env: dict[str, str] | None = None, cwd: Path | None = None) -> subprocess.CompletedProcess:
    """Run `multimae ARGS` in a fresh interpreter, as a user would."""
    return subprocess.run([sys.executable, "-m", "multimae_cli", *args], capture_output=True, text=True,
                          env={**os.environ, **(env or {})}, cwd=cwd, timeout=300)


def interrupt_after_step(monkeypatch, step: int):
    """Send the process SIGINT (Ctrl-C) right after a training loop records `step`'s metrics; returns the undo."""
    import signal

    from multimae_cli.train import runlog

    original = runlog.append_metrics

    def interrupting(run, record):
        original(run, record)
        if record["step"] == step:
            signal.raise_signal(signal.SIGINT)

    monkeypatch.setattr(runlog, "append_metrics", interrupting)
    return lambda: monkeypatch.setattr(runlog, "append_metrics", original)
