"""What users of other tools expect to find: --version, progress that works off a terminal, --print-config,
--mask-ratio, the masking budget in `info`, an honest note from `eval` on the selection split."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import yaml
from conftest import REPO, run_cli

TINY = ["--set", "model={\"image_size\": 32, \"depth\": 1, \"dim\": 32, \"num_heads\": 2, \"decoder_dim\": 32, "
        "\"decoder_num_heads\": 2, \"decoder_depth\": 1, \"inputs\": [\"rgb\"]}",
        "--set", "data.synthetic_scenes=8", "--set", "data.workers=0", "--set", "preview_every=0", "--device", "cpu"]


def test_version():
    result = run_cli("--version")
    assert result.returncode == 0 and re.fullmatch(r"multimae \d+\.\d+\.\d+\S* \(plugin API \d+\)\n", result.stdout)


def test_progress_off_a_terminal_is_one_plain_line_per_log_interval(tmp_path):
    """Piped (SLURM, nohup, CI): step, loss, lr, img/s and ETA on stderr every `log_every` steps; stdout keeps
    only the result."""
    result = run_cli("pretrain", "--steps", "6", "--set", "log_every=2", "--set", "batch_size=2", "--name", "p",
                     "--out", str(tmp_path / "runs"), *TINY)
    assert result.returncode == 0, result.stderr
    lines = result.stderr.strip().splitlines()
    assert [int(re.match(r"pretrain step (\d+)/6  loss [\d.]+  lr [\d.e+-]+  [\d.]+ img/s  eta \d+m\d\ds$",
                         line).group(1)) for line in lines] == [2, 4, 6], result.stderr
    assert result.stdout.startswith("done: 6 steps")
    card = (tmp_path / "runs" / "p" / "README.md").read_text()  # the model card of the run
    front = yaml.safe_load(card.split("---")[1])
    assert front["library_name"] == "multimae" and front["license"] == "other" and "rgb" in front["tags"]
    for line in ("| inputs | rgb |", "| started from | random initialisation |", "| steps | 6 at batch 2 per process |",
                 "## Results", f"multimae predict photo.jpg --out out/ --checkpoint {tmp_path / 'runs' / 'p'}"):
        assert line in card, line
    assert re.search(r"- loss: [\d.]+ -> [\d.]+\n", card)
    quiet = run_cli("pretrain", "--steps", "2", "--quiet", "--set", "batch_size=2", "--name", "q", "--out",
                    str(tmp_path / "runs"), *TINY)
    assert quiet.returncode == 0 and quiet.stderr == "" and quiet.stdout == ""


def test_print_config_round_trips_and_trains_nothing(tmp_path):
    printed = run_cli("pretrain", "--print-config", "--steps", "7", "--mask-ratio", "0.75", "--out",
                      str(tmp_path / "runs"), *TINY)
    assert printed.returncode == 0 and not (tmp_path / "runs").exists()
    values = yaml.safe_load(printed.stdout)
    assert values["steps"] == 7 and values["mask_ratio"] == 0.75 and values["model"]["depth"] == 1
    (tmp_path / "run.yaml").write_text(printed.stdout)
    again = run_cli("pretrain", "--config", str(tmp_path / "run.yaml"), "--print-config")
    assert again.stdout == printed.stdout
    finetune = run_cli("finetune", "--task", "depth", "--steps", "3", "--print-config")
    assert finetune.returncode == 0 and yaml.safe_load(finetune.stdout)["task"] == "depth"


def test_print_schema_describes_every_key_and_rejects_unknown_ones():
    """The JSON schema editors read (yaml-language-server): every key of the config, unknown keys refused, and
    each example config's keys among its properties."""
    from multimae_cli import config

    for command, cls, example in (("pretrain", "PretrainConfig", "pretrain-tiny-cpu.yaml"),
                                  ("finetune", "FinetuneConfig", "finetune-depth-tiny-cpu.yaml")):
        result = run_cli(command, "--print-schema")
        assert result.returncode == 0 and result.stderr == "", result.stderr
        schema = json.loads(result.stdout)
        fields = getattr(config, cls).model_fields
        assert schema["additionalProperties"] is False and set(schema["properties"]) == set(fields)
        keys = yaml.safe_load((REPO / "examples" / "configs" / example).read_text())
        assert set(keys) <= set(schema["properties"])


def test_shell_completion_offers_registered_names():
    """Completion is on (`--install-completion`); `--task`, `--modalities` and `--logger` complete with what the
    plugins registered, without importing torch."""
    def complete(words: str, index: int) -> list[str]:
        env = {**os.environ, "_MULTIMAE_COMPLETE": "complete_bash", "COMP_WORDS": words, "COMP_CWORD": str(index)}
        result = subprocess.run([sys.executable, "-m", "multimae_cli"], capture_output=True, text=True, env=env)
        assert result.returncode == 0, result.stderr
        return result.stdout.split()

    assert complete("multimae finetune --task s", 3) == ["semseg"]
    assert complete("multimae pretrain --modalities rgb,d", 3) == ["rgb,depth"]
    assert complete("multimae pretrain --logger t", 3) == ["tensorboard"]
    assert "--install-completion" in run_cli("--help").stdout


def test_mask_ratio_sets_the_visible_tokens_and_info_shows_the_budget(tmp_path):
    from multimae_cli.config import load_pretrain_config

    config = load_pretrain_config(None, {"mask_ratio": 0.75, "model": {"inputs": ["rgb"], "image_size": 64}}, [])
    assert config.model_config_resolved().num_encoded_tokens == 4  # a quarter of 16
    clash = run_cli("pretrain", "--mask-ratio", "0.5", "--set", "model.num_encoded_tokens=3", "--print-config")
    assert clash.returncode == 2 and clash.stderr.startswith("error: mask_ratio and model.num_encoded_tokens")
    info = run_cli("info", str(REPO / "tests" / "fixtures" / "official-compat" / "tiny_multivit.pth"))
    assert "  masking: 8 of 48 input tokens visible (83% masked), alphas 1.0" in info.stdout.splitlines()


def test_eval_notes_when_it_scores_the_selection_split(tmp_path, encoder):
    tuned = run_cli("finetune", "--task", "depth", "--checkpoint", str(encoder), "--steps", "2", "--set",
                    "batch_size=2", "--set", "data.synthetic_scenes=4", "--set", "data.workers=0", "--set",
                    "data.val_scenes=2", "--name", "d", "--out", str(tmp_path / "runs"), "--json", "--device", "cpu")
    assert tuned.returncode == 0, tuned.stderr
    run = json.loads(tuned.stdout)["run"]
    card = (Path(run) / "README.md").read_text()
    assert "fine-tuned for `depth`" in card and f"| started from | `{encoder}` |" in card
    on_val = run_cli("eval", run, "--scenes", "2", "--workers", "0")
    assert on_val.returncode == 0 and "the val split is where fine-tuning chooses best/" in on_val.stderr
    on_test = run_cli("eval", run, "--split", "test", "--scenes", "2", "--workers", "0")
    assert on_test.returncode == 0 and on_test.stderr == ""
