"""The example logger in a real (tiny) run, through the CLI: every metrics.jsonl value is a row of scalars.csv."""

import csv
import json
import subprocess
import sys

MODEL = {"image_size": 32, "depth": 1, "dim": 32, "num_heads": 2, "decoder_dim": 16, "decoder_num_heads": 1,
         "decoder_depth": 1}


def test_every_logged_scalar_is_a_row(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "multimae_cli", "pretrain", "--logger", "csv", "--steps", "4", "--batch-size", "2",
         "--device", "cpu", "--out", str(tmp_path), "--name", "run", "--quiet", "--set", f"model={json.dumps(MODEL)}",
         "--set", "data.synthetic_scenes=8", "--set", "data.workers=0", "--set", "log_every=2",
         "--set", "preview_every=0"], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    with (tmp_path / "run" / "scalars.csv").open() as handle:
        rows = {(int(row["step"]), row["key"], float(row["value"])) for row in csv.DictReader(handle)}
    logged = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert rows == {(r["step"], key, float(value)) for r in logged for key, value in r.items() if key != "step"}
    assert {key for _, key, _ in rows} >= {"loss", "loss/rgb", "lr", "img_per_s"}
