"""Bad inputs: each a clear error naming the culprit; in the CLI one line and exit code 2, no traceback."""

from __future__ import annotations

import pickle
import subprocess
import sys

import pytest
import torch
from conftest import fixture_inputs, fixture_masks, run_cli

from multimae_cli import ModelConfig, load_model, save_model
from multimae_cli.errors import CheckpointError, ConfigError, InputError, UnknownModalityError


def test_unknown_input_modality(tiny_model, tiny_io):
    inputs = {**fixture_inputs(tiny_io), "thermal": torch.randn(2, 1, 64, 64)}
    with pytest.raises(UnknownModalityError, match=r"no input adapter for 'thermal' \(inputs: rgb, depth, semseg\)"):
        tiny_model(inputs)


def test_unknown_output_modality(tiny_model, tiny_io):
    with pytest.raises(UnknownModalityError, match="no output adapter for 'normals'"):
        tiny_model(fixture_inputs(tiny_io), outputs=["normals"], num_encoded_tokens=8)


def test_wrong_channel_count(tiny_model):
    with pytest.raises(InputError, match=r"rgb: expected 3 channel\(s\), got 4"):
        tiny_model.forward_features({"rgb": torch.randn(1, 4, 64, 64)})


def test_wrong_dtype_or_rank(tiny_model):
    with pytest.raises(InputError, match="depth: expected a float tensor"):
        tiny_model.forward_features({"depth": torch.zeros(1, 64, 64)})
    with pytest.raises(InputError, match="semseg: expected an integer label map"):
        tiny_model.forward_features({"semseg": torch.zeros(1, 16, 16)})


def test_labels_out_of_range(tiny_model):
    labels = torch.zeros(1, 16, 16, dtype=torch.long)
    labels[0, 3, 3] = 133
    with pytest.raises(InputError, match=r"semseg: label values must lie in \[0, 132\], got \[0, 133\]"):
        tiny_model.forward_features({"semseg": labels})


def test_size_not_divisible_by_patch(tiny_model):
    with pytest.raises(InputError, match="rgb: size 60x64 is not divisible by the patch size 16"):
        tiny_model.forward_features({"rgb": torch.randn(1, 3, 60, 64)})
    with pytest.raises(InputError, match=r"semseg: size 15x16 is not divisible by the patch size 16 \(/4"):
        tiny_model.forward_features({"semseg": torch.zeros(1, 15, 16, dtype=torch.long)})


def test_mismatched_modality_sizes(tiny_model):
    with pytest.raises(InputError, match="different image sizes: rgb 64x64, depth 32x32"):
        tiny_model.forward_features({"rgb": torch.randn(1, 3, 64, 64), "depth": torch.randn(1, 1, 32, 32)})


def test_mask_of_wrong_shape(tiny_model, tiny_io):
    masks = fixture_masks(tiny_io)
    masks["depth"] = masks["depth"][:, :8]
    with pytest.raises(InputError, match=r"mask of depth: expected shape \(2, 16\), got \(2, 8\)"):
        tiny_model(fixture_inputs(tiny_io), task_masks=masks)
    del masks["depth"]
    with pytest.raises(InputError, match=r"missing \['depth'\]"):
        tiny_model(fixture_inputs(tiny_io), task_masks=masks)


def test_mask_with_wrong_visible_count(tiny_model, tiny_io):
    masks = fixture_masks(tiny_io)
    masks["rgb"] = masks["rgb"].clone()
    masks["rgb"][0, 0] = 1  # sample 0 now has 19 visible, sample 1 still 20
    with pytest.raises(InputError, match=r"different number of visible tokens per sample: \[19, 20\]"):
        tiny_model(fixture_inputs(tiny_io), task_masks=masks)
    with pytest.raises(InputError, match="leave 20 visible tokens, but num_encoded_tokens=12"):
        tiny_model(fixture_inputs(tiny_io), task_masks=fixture_masks(tiny_io), num_encoded_tokens=12)
    masks = fixture_masks(tiny_io)
    masks["rgb"] = masks["rgb"] * 2
    with pytest.raises(InputError, match=r"only 0 \(visible\) and 1 \(masked\)"):
        tiny_model(fixture_inputs(tiny_io), task_masks=masks)


def test_too_many_encoded_tokens(tiny_model, tiny_io):
    with pytest.raises(InputError, match=r"num_encoded_tokens=49 must lie in \[0, 48\]"):
        tiny_model(fixture_inputs(tiny_io), num_encoded_tokens=49)


def test_checkpoint_of_another_architecture(tmp_path, tiny_pth):
    with pytest.raises(CheckpointError, match=r"does not fit the model architecture: shape mismatch \(6\): "
                                              r"encoder\.0\.mlp\.fc1\.weight \(384, 96\) vs model \(192, 96\)"):
        load_model(tiny_pth, mlp_ratio=2.0)
    state = torch.load(tiny_pth, weights_only=True)["model"]
    del state["encoder.1.norm1.weight"]
    state["extra.weight"] = torch.zeros(1)
    partial = tmp_path / "partial.pth"
    torch.save({"model": state, "args": {"num_heads": 3, "decoder_num_heads": 2}}, partial)
    with pytest.raises(CheckpointError, match=r"missing \(1\): encoder\.1\.norm1\.weight; unexpected \(1\): extra"):
        load_model(partial)


def test_native_file_with_wrong_tensors(tmp_path, tiny_model):
    from multimae_cli.formats.native import write_native

    state = tiny_model.state_dict()
    state["global_tokens"] = torch.zeros(1, 2, 96)
    path = tmp_path / "bad.safetensors"
    write_native(state, tiny_model.config, path)
    with pytest.raises(CheckpointError, match=r"global_tokens \(1, 2, 96\) vs model \(1, 1, 96\)"):
        load_model(path)


def test_not_a_checkpoint(tmp_path):
    text = tmp_path / "notes.txt"
    text.write_text("hello")
    with pytest.raises(CheckpointError, match=r"notes\.txt: not a checkpoint"):
        load_model(text)
    with pytest.raises(CheckpointError, match="no such file"):
        load_model(tmp_path / "missing.pth")
    corrupt = tmp_path / "corrupt.pth"
    corrupt.write_bytes(b"PK\x03\x04" + b"\x00" * 64)
    with pytest.raises(CheckpointError, match=r"corrupt\.pth: not a readable PyTorch checkpoint"):
        load_model(corrupt)
    tensors_only = tmp_path / "list.pth"
    torch.save([torch.zeros(1)], tensors_only)
    with pytest.raises(CheckpointError, match="holds no state dict"):
        load_model(tensors_only)


class _Exploit:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_pickled_code_is_refused_and_never_runs(tmp_path):
    marker = tmp_path / "pwned"
    evil = tmp_path / "evil.pth"
    torch.save({"model": {"w": torch.zeros(1)}, "args": _Exploit(str(marker))}, evil, pickle_module=pickle)
    with pytest.raises(CheckpointError, match="refused to load"):
        load_model(evil)
    assert not marker.exists()


def test_bad_config_keys(tiny_pth):
    with pytest.raises(ConfigError, match="dimm: unknown key"):
        ModelConfig.from_preset("tiny", dimm=3)
    with pytest.raises(ConfigError, match="patch_sise: unknown key"):
        load_model(tiny_pth, patch_sise=8)
    with pytest.raises(ConfigError, match="unknown preset 'huge'"):
        ModelConfig.from_preset("huge")
    with pytest.raises(ConfigError, match="dim 100 is not divisible by num_heads 12"):
        ModelConfig.from_preset("base", dim=100)


def test_save_requires_a_config(tmp_path):
    from multimae_cli.model import MultiMAE

    with pytest.raises(CheckpointError, match=r"has no \.config"):
        save_model(MultiMAE({}, dim=8, depth=1, num_heads=2), tmp_path / "x.safetensors")


# ---------------------------------------------------------------- CLI


def assert_one_line_error(result, *fragments):
    assert result.returncode == 2, (result.stdout, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert "Traceback" not in result.stderr
    for fragment in fragments:
        assert fragment in lines[0]


def test_cli_errors(tmp_path):
    text = tmp_path / "notes.txt"
    text.write_text("hello")
    assert_one_line_error(run_cli("info", str(text)), "notes.txt", "not a checkpoint")
    assert_one_line_error(run_cli("info", str(tmp_path / "missing.pth")), "missing.pth", "no such file")
    evil = tmp_path / "evil.pth"
    torch.save({"model": {}, "args": _Exploit(str(tmp_path / "pwned"))}, evil)
    assert_one_line_error(run_cli("info", str(evil)), "evil.pth", "refused")
    assert not (tmp_path / "pwned").exists()


@pytest.mark.parametrize(("argv", "message"), [
    (["pretrain", "--bogus"], "No such option: --bogus"),
    (["nosuch"], "No such command 'nosuch'"),
    (["predict", "x.png", "--viz"], "Option '--viz' requires an argument"),
    (["pretrain", "--steps", "abc"], "Invalid value for '--steps'"),
    (["data", "synth"], "Missing option '--out'"),
])
def test_command_line_usage_errors_are_one_line(argv, message):
    """Whatever click typer runs on (click itself or its own copy), usage errors end in one line, exit 2."""
    result = run_cli(*argv)
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    assert result.stderr.startswith(f"error: {message}") and len(result.stderr.strip().splitlines()) == 1


def test_cli_info(tiny_pth):
    result = run_cli("info", str(tiny_pth))
    assert result.returncode == 0, result.stderr
    assert "inputs:  rgb, depth, semseg" in result.stdout and "1,118,928 elements" in result.stdout


def test_help_and_early_errors_do_not_import_torch(tmp_path):
    (tmp_path / "x.txt").write_text("x")
    code = (
        "import sys\n"
        "from multimae_cli.cli import main\n"
        "for argv in (['--help'], ['info', sys.argv[1]]):\n"
        "    try:\n"
        "        main(argv)\n"
        "    except SystemExit:\n"
        "        pass\n"
        "print('torch' in sys.modules)\n"
    )
    result = subprocess.run([sys.executable, "-c", code, str(tmp_path / "x.txt")], capture_output=True, text=True)
    assert result.stdout.strip().splitlines()[-1] == "False", result.stdout + result.stderr


def test_truncated_checkpoint_is_one_line_in_every_command(tmp_path, tiny_model):
    """A native file cut short (a copy that did not finish): predict, eval, export, info and finetune say so in one
    line naming the file, exit 2, and write nothing."""
    import numpy as np

    from multimae_cli.io import write_image

    whole = tmp_path / "whole.safetensors"
    save_model(tiny_model, whole)
    cut = tmp_path / "cut.safetensors"
    cut.write_bytes(whole.read_bytes()[: whole.stat().st_size // 2])
    write_image(tmp_path / "img.png", np.zeros((64, 64, 3), np.uint8))
    expected = f"error: {cut}: unreadable safetensors file ("
    for args in (["predict", str(tmp_path / "img.png"), "--out", str(tmp_path / "out"), "--checkpoint", str(cut)],
                 ["eval", str(cut)], ["export", str(cut), "--format", "official", "--out", str(tmp_path / "x.pth")],
                 ["info", str(cut)], ["finetune", "--task", "depth", "--checkpoint", str(cut), "--steps", "1"]):
        result = run_cli(*args, cwd=tmp_path)
        assert result.returncode == 2 and result.stderr.startswith(expected), (args, result.stderr)
        assert len(result.stderr.strip().splitlines()) == 1, (args, result.stderr)
    assert not (tmp_path / "out").exists() and not (tmp_path / "x.pth").exists() and not (tmp_path / "runs").exists()
