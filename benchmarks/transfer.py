"""Transfer benchmark: does multi-modal pretraining (MultiMAE) transfer better than rgb-only MAE? One JSON line.

    python benchmarks/transfer.py --quick                 # <= 20 min on 2 CPU cores
    python benchmarks/transfer.py                          # the full setting (~90 min on 2 cores, estimated)
    python benchmarks/transfer.py --quick --set A.model.alphas=0.5 --out runs/transfer-alpha

Arms, each pretrained with the same steps and batch on the same scenes (seed s: scene stream s):
- A, MultiMAE: rgb + depth + semseg in, the four decoders out, Dirichlet token budgets.
- B, MAE: rgb in and out (with the norm-pix decoder), at its own best mask ratio of the sweep (50 %).
- C, no pretraining: a freshly initialised encoder.

Every pretrained encoder (and C's) is fine-tuned rgb -> depth, rgb -> semseg and (A, C) rgb + depth -> semseg, and
linearly probed on the same three with the encoder frozen (`freeze_encoder`, `head: linear`). Fine-tuning seed s
trains on the scene stream s (validation, used to keep `best/`, on its own stream); every model is scored on the
same held-out test scenes (the `test` stream of seed 0), used for nothing else. Reported: mean and std over the
pretraining seeds, and the paired differences A - B and A - C (same seed, same data).

Runs are cached in `--out` (`results.jsonl`): re-running the command finishes only what is missing, and arms or
settings changed with `--set` get runs of their own. `--results FILE` writes the table, with the command that
made it, into that Markdown file (its section for this setting is replaced; other sections are kept).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import statistics
import sys
import time
from pathlib import Path
from typing import Any

# The recipe every arm shares: tiny ViT (6 blocks) at 64 px, patch 16 (a 4 x 4 grid per modality), batch 16,
# pretraining lr 5e-4. Patch 8 transferred better for both A and B but costs 2.5-3x: it fits neither budget
# (docs/results.md).
COMMON: dict[str, Any] = {"preset": "tiny", "batch_size": 16,
                          "model": {"image_size": 64, "patch_size": 16, "depth": 6}}
PRETRAIN: dict[str, dict[str, Any]] = {
    "A": {"model": {"inputs": ["rgb", "depth", "semseg"], "num_encoded_tokens": 8, "alphas": 1.0},
          "optim": {"blr": 8e-3}},
    "B": {"model": {"inputs": ["rgb"], "num_encoded_tokens": 8}, "optim": {"blr": 8e-3}},  # MAE's best: 50 % masked
}
FINETUNES: dict[str, dict[str, Any]] = {  # name -> FinetuneConfig keys
    "rgb->depth": {"task": "depth", "inputs": ["rgb"], "head": "dpt",
                   "head_options": {"feature_dim": 64, "layer_dims": [32, 64, 128, 192]}},
    "rgb->semseg": {"task": "semseg", "inputs": ["rgb"], "head": "convnext",
                    "head_options": {"embed_dim": 512, "depth": 2}},
    "rgb+depth->semseg": {"task": "semseg", "inputs": ["rgb", "depth"], "head": "convnext",
                          "head_options": {"embed_dim": 512, "depth": 2}},
}
# lr 6e-4 beat 2e-4 and 1e-4 for every arm (docs/results.md); the official dense recipes' 1e-4 is for ViT-B
FINETUNE: dict[str, Any] = {"optim": {"lr": 6e-4, "betas": [0.9, 0.999], "warmup_fraction": 0.05}, "layer_decay": 0.75}
PROBE: dict[str, Any] = {"head": "linear", "head_options": {}, "freeze_encoder": True, "drop_path_rate": 0.0,
                         "layer_decay": None, "optim": {"lr": 2e-3, "betas": [0.9, 0.999], "warmup_fraction": 0.05,
                                                        "weight_decay": 0.0}}
SETTINGS: dict[str, dict[str, int]] = {
    "quick": {"pretrain_steps": 400, "finetune_steps": 100, "seeds": 3, "test_scenes": 128, "val_scenes": 32},
    "full": {"pretrain_steps": 2500, "finetune_steps": 500, "seeds": 3, "test_scenes": 256, "val_scenes": 64},
}
MAIN = {"depth": ("delta1", 100.0), "semseg": ("mIoU", 1.0)}  # main metric, factor to percent


def merge(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in update.items():
        out[key] = merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def assignment(text: str) -> tuple[str, dict[str, Any]]:
    """`A.model.alphas=0.5` -> ("A", {"model": {"alphas": 0.5}}); the scope is A, B, pretrain (A and B),
    finetune, probe or common."""
    import yaml

    key, sep, raw = text.partition("=")
    scope, _, rest = key.partition(".")
    if not sep or not rest or scope not in ("A", "B", "pretrain", "finetune", "probe", "common"):
        raise SystemExit(f"--set {text!r}: expected SCOPE.key=value with SCOPE one of A, B, pretrain, finetune, "
                         "probe, common (e.g. A.model.alphas=0.5)")
    value: Any = yaml.safe_load(raw)
    for part in reversed(rest.split(".")):
        value = {part: value}
    return scope, value


def key_of(config: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(config, sort_keys=True).encode()).hexdigest()[:10]


class Runner:
    """Runs (or reads back from `results.jsonl`) pretraining, fine-tuning and test-set evaluation jobs."""

    def __init__(self, out: Path, device: str, test_scenes: int, log) -> None:
        self.out, self.device, self.test_scenes, self.log = out, device, test_scenes, log
        out.mkdir(parents=True, exist_ok=True)
        self.results_file = out / "results.jsonl"
        self.done: dict[str, Any] = {}
        if self.results_file.is_file():
            for line in self.results_file.read_text().splitlines():
                if line.strip():
                    record = json.loads(line)
                    self.done[record["key"]] = record["result"]

    def _record(self, key: str, result: Any) -> Any:
        self.done[key] = result
        with self.results_file.open("a") as f:
            f.write(json.dumps({"key": key, "result": result}) + "\n")
        return result

    def pretrain(self, arm: str, values: dict[str, Any]) -> str:
        from multimae_cli.config import PretrainConfig, build_config
        from multimae_cli.train.pretrain import pretrain

        key = f"pretrain-{arm}-s{values['seed']}-{key_of(values)}"
        if key in self.done:
            return self.done[key]["checkpoint"]
        shutil.rmtree(self.out / key, ignore_errors=True)  # an interrupted run: start it again
        start = time.perf_counter()
        summary = pretrain(build_config(PretrainConfig, {**values, "out_dir": str(self.out), "name": key}), quiet=True)
        quality = {name: entry["value"] for name, entry in (summary["cross_modal"] or {}).get("outputs", {}).items()}
        self.log(f"{key}: loss {summary['first_loss']:.3f} -> {summary['final_loss']:.3f}, held-out from "
                 f"rgb {quality} ({time.perf_counter() - start:.0f} s)")
        return self._record(key, {"checkpoint": summary["checkpoint"], "final_loss": summary["final_loss"],
                                  "cross_modal": quality, "seconds": time.perf_counter() - start})["checkpoint"]

    def finetune(self, label: str, values: dict[str, Any]) -> dict[str, float]:
        from multimae_cli.config import FinetuneConfig, build_config
        from multimae_cli.train.evaluate import evaluate_checkpoint
        from multimae_cli.train.finetune import finetune

        key = f"{label}-s{values['seed']}-{key_of(values)}"
        if key in self.done:
            return self.done[key]
        shutil.rmtree(self.out / key, ignore_errors=True)
        start = time.perf_counter()
        summary = finetune(build_config(FinetuneConfig, {**values, "out_dir": str(self.out), "name": key}), quiet=True)
        test = evaluate_checkpoint(Path(summary["run"]), split="test", device=self.device,
                                   synthetic_scenes=self.test_scenes, seed=0, workers=values["data"]["workers"])
        metric, factor = MAIN[summary["task"]]
        self.log(f"{key}: test {metric} {factor * test['metrics'][metric]:.2f} % ({time.perf_counter() - start:.0f} s)")
        return self._record(key, test["metrics"])


def describe(values: list[float]) -> dict[str, float]:
    return {"mean": statistics.fmean(values), "std": statistics.stdev(values) if len(values) > 1 else 0.0,
            "n": len(values)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="the <= 20 min setting (fewer steps)")
    parser.add_argument("--seeds", type=int, help="pretraining seeds 0..N-1 (default: 3)")
    parser.add_argument("--arms", default="A,B,C", help="which arms to run (default: A,B,C)")
    parser.add_argument("--finetunes", default=",".join(FINETUNES),
                        help="which fine-tunes, quoted for the shell "
                             "(default: 'rgb->depth,rgb->semseg,rgb+depth->semseg')")
    parser.add_argument("--no-probe", action="store_true", help="skip the linear probes")
    parser.add_argument("--set", dest="assignments", action="append", default=[], metavar="SCOPE.KEY=VALUE",
                        help="change a setting: A., B., pretrain. (both), finetune., probe. or common. followed by "
                             "a config key, e.g. A.model.alphas=0.5 or finetune.optim.lr=1e-4 (repeatable)")
    parser.add_argument("--pretrain-steps", type=int, help="override the setting's pretraining steps")
    parser.add_argument("--finetune-steps", type=int, help="override the setting's fine-tuning (and probe) steps")
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda")
    parser.add_argument("--workers", type=int, default=2, help="loader processes per run (default: 2)")
    parser.add_argument("--out", type=Path, help="run folder (default: runs/transfer-quick or runs/transfer-full)")
    parser.add_argument("--results", type=Path, help="write the table into this Markdown file (e.g. docs/results.md)")
    args = parser.parse_args()

    setting_name = "quick" if args.quick else "full"
    setting = dict(SETTINGS[setting_name])
    for key in ("pretrain_steps", "finetune_steps"):
        if getattr(args, key) is not None:
            setting[key] = getattr(args, key)
    seeds = range(args.seeds or setting["seeds"])
    arms = [a.strip() for a in args.arms.split(",") if a.strip()]
    finetunes = [f.strip() for f in args.finetunes.split(",") if f.strip()]
    bad = [a for a in arms if a not in ("A", "B", "C")] + [f for f in finetunes if f not in FINETUNES]
    if bad:
        raise SystemExit(f"unknown arm or fine-tune: {', '.join(bad)} "
                         f"(arms A, B, C; fine-tunes {', '.join(FINETUNES)})")
    scopes: dict[str, dict[str, Any]] = {s: {} for s in ("A", "B", "pretrain", "finetune", "probe", "common")}
    for text in args.assignments:
        scope, value = assignment(text)
        scopes[scope] = merge(scopes[scope], value)
    common = merge(merge(COMMON, {"device": args.device}), scopes["common"])
    out = args.out or Path("runs") / f"transfer-{setting_name}"

    def log(message: str) -> None:
        print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)

    from multimae_cli.data.synthetic.io import split_seed

    seen = {split_seed(seed, split) for seed in seeds for split in ("train", "val")}
    if split_seed(0, "test") in seen:  # the test scenes must be scenes no run trains on or selects with
        raise SystemExit(f"the test scene stream {split_seed(0, 'test')} is also a training or validation stream")
    runner = Runner(out, args.device, setting["test_scenes"], log)
    data = {"workers": args.workers, "val_scenes": setting["val_scenes"]}
    started = time.perf_counter()
    scores: dict[str, dict[str, dict[int, float]]] = {}  # "A rgb->depth" -> {"finetune"|"probe": {seed: score}}
    for seed in seeds:
        for arm in arms:
            checkpoint = None
            if arm != "C":
                values = merge(merge(merge(common, PRETRAIN[arm]), scopes["pretrain"]), scopes[arm])
                values = merge(values, {"seed": seed, "steps": setting["pretrain_steps"], "preview_every": 0,
                                        "checkpoint_every": 10**9, "data": {"workers": args.workers}})
                checkpoint = runner.pretrain(arm, values)
            for name in finetunes:
                spec = FINETUNES[name]
                if arm == "B" and "depth" in spec["inputs"]:
                    continue  # MAE has no depth input
                for mode in ("finetune",) if args.no_probe else ("finetune", "probe"):
                    values = merge(merge(merge(common, FINETUNE), spec), {"steps": setting["finetune_steps"],
                                                                          "seed": seed, "data": data})
                    values = merge(values, scopes["finetune"])
                    if mode == "probe":
                        values = merge(merge({**values, "head_options": {}}, PROBE), scopes["probe"])
                    if checkpoint:
                        values = {**{k: v for k, v in values.items() if k not in ("model", "preset")},
                                  "checkpoint": checkpoint}
                    label = f"{arm}-{name.replace('->', '-to-').replace('+', '-')}-{mode}"
                    metrics = runner.finetune(label, values)
                    metric, factor = MAIN[spec["task"]]
                    scores.setdefault(f"{arm} {name}", {}).setdefault(mode, {})[seed] = factor * metrics[metric]

    table = summarise(scores, arms, finetunes)
    result = {"benchmark": "transfer", "setting": setting_name, "seeds": len(seeds), "arms": arms,
              "pretrain_steps": setting["pretrain_steps"], "finetune_steps": setting["finetune_steps"],
              "test_scenes": setting["test_scenes"], "overrides": args.assignments,
              "minutes": round((time.perf_counter() - started) / 60, 1), "results": table}
    print(json.dumps(result))
    if args.results:
        write_results(args.results, setting_name, " ".join(["python", "benchmarks/transfer.py", *sys.argv[1:]]),
                      result)


def summarise(scores: dict, arms: list[str], finetunes: list[str]) -> dict[str, Any]:
    """Per fine-tune and mode: each arm's mean/std over seeds, and paired differences A - B, A - C."""
    table: dict[str, Any] = {}
    for name in finetunes:
        for mode in ("finetune", "probe"):
            row: dict[str, Any] = {}
            for arm in arms:
                values = scores.get(f"{arm} {name}", {}).get(mode)
                if values:
                    row[arm] = {**describe(list(values.values())), "per_seed": values}
            for other in ("B", "C"):
                if "A" in row and other in row:
                    seeds = sorted(set(row["A"]["per_seed"]) & set(row[other]["per_seed"]))
                    diffs = [row["A"]["per_seed"][s] - row[other]["per_seed"][s] for s in seeds]
                    row[f"A-{other}"] = describe(diffs)
            if row:
                table[f"{name} {mode}"] = row
    return table


def write_results(path: Path, setting: str, command: str, result: dict[str, Any]) -> None:
    """Replace this setting's section of the Markdown file `path` (other sections are kept)."""
    metric = {"depth": "delta1 %", "semseg": "mIoU %"}

    def cell(stats: dict[str, Any] | None, signed: bool = False) -> str:
        if not stats:
            return "n/a"
        return f"{stats['mean']:+.1f} ± {stats['std']:.1f}" if signed else f"{stats['mean']:.1f} ± {stats['std']:.1f}"

    lines = [f"<!-- transfer:{setting} -->", f"## Transfer benchmark, {setting} setting", "",
             f"`{command}` ({result['minutes']} min; {result['seeds']} pretraining seeds, "
             f"{result['pretrain_steps']} pretraining and {result['finetune_steps']} fine-tuning steps, "
             f"{result['test_scenes']} held-out test scenes). Mean ± std over seeds; A - B and A - C are paired "
             "by seed.", "",
             "| fine-tune (input -> target), metric | mode | A MultiMAE | B MAE | C none | A - B | A - C |",
             "|---|---|---|---|---|---|---|"]
    for label, row in result["results"].items():
        name, mode = label.rsplit(" ", 1)
        task = FINETUNES[name]["task"]
        lines.append(f"| {name}, {metric[task]} | {'linear probe' if mode == 'probe' else 'fine-tune'} | "
                     f"{cell(row.get('A'))} | {cell(row.get('B'))} | {cell(row.get('C'))} | "
                     f"{cell(row.get('A-B'), True)} | {cell(row.get('A-C'), True)} |")
    lines += ["", "```json", json.dumps(result), "```", f"<!-- /transfer:{setting} -->"]
    section = "\n".join(lines)
    text = path.read_text() if path.is_file() else "# Results\n"
    start, end = f"<!-- transfer:{setting} -->", f"<!-- /transfer:{setting} -->"
    if start in text and end in text:
        text = text[:text.index(start)] + section + text[text.index(end) + len(end):]
    else:
        text = text.rstrip("\n") + "\n\n" + section + "\n"
    path.write_text(text)


if __name__ == "__main__":
    main()
