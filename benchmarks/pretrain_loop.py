"""End-to-end pretraining throughput from files, as a user runs it: `pretrain` on a folder of rendered scenes
(as `multimae data synth` writes them; rgb as JPEG by default, as ImageNet stores it) with DataLoader workers:
reading, augmentation, the transfer, normalisation on the device, masks, the step, logging. Reports the loop's
own img/s (its metrics) over the log windows after the first, which holds compilation and the workers' start.
Compared with `pretrain_throughput.py` (inputs already on the device), it says whether the data pipeline keeps up.
Prints one JSON line.
    python benchmarks/pretrain_loop.py [--preset base] [--batch 256] [--workers 15] [--n 4096] [--size 256]
        [--data DIR] [--steps 60] [--log-every 10] [--compile] [--compile-mode default] [--rgb-format jpg]
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import torch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="base")
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--workers", type=int, default=15)
    parser.add_argument("--n", type=int, default=4096, help="Scenes on disk (rendered first, not timed).")
    parser.add_argument("--data", help="Train on this dataset folder (e.g. from `multimae data synth`) instead "
                                       "of rendering one.")
    parser.add_argument("--size", type=int, default=256, help="Stored image size; training crops to the preset's.")
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--log-every", type=int, default=10)
    parser.add_argument("--compile", action="store_true")
    parser.add_argument("--compile-mode", default="default", choices=("default", "reduce-overhead"))
    parser.add_argument("--rgb-format", default="jpg", choices=("jpg", "png"),
                        help="rgb files: JPEG as ImageNet (the official pretraining data) or PNG.")
    args = parser.parse_args()

    from multimae_cli.config import DataConfig, OptimConfig, PretrainConfig
    from multimae_cli.data.synthetic.io import MODALITIES, write_synthetic
    from multimae_cli.plugin.registry import get_registry
    from multimae_cli.train.pretrain import pretrain

    registry = get_registry()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(args.data) if args.data else Path(tmp) / "scenes"
        start = time.perf_counter()
        if not args.data:
            write_synthetic(root, args.n, (args.size, args.size),
                            {name: registry.modality(name) for name in MODALITIES}, workers=max(1, args.workers),
                            rgb_format=args.rgb_format)
        render_s = time.perf_counter() - start
        rgb_files = [path for path in (root / "train" / "rgb").rglob("*") if path.is_file()]
        scenes, rgb_format = len(rgb_files), rgb_files[0].suffix.lstrip(".")
        config = PretrainConfig(
            preset=args.preset, model={}, batch_size=args.batch, steps=args.steps, log_every=args.log_every,
            compile=args.compile, compile_mode=args.compile_mode, preview_every=0, checkpoint_every=10**9,
            out_dir=str(Path(tmp) / "runs"), name="loop", optim=OptimConfig(),
            data=DataConfig(source="folder", path=str(root), workers=args.workers),
        )
        summary = pretrain(config, quiet=True)
        records = [json.loads(line) for line in (Path(summary["run"]) / "metrics.jsonl").read_text().splitlines()]
    rates = [record["img_per_s"] for record in records[1:]]
    print(json.dumps({
        "benchmark": "pretrain_loop", "preset": args.preset, "batch": args.batch, "workers": args.workers,
        "compile": args.compile, "compile_mode": args.compile_mode, "rgb_format": rgb_format,
        "device": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu",
        "data": args.data or "rendered", "scenes": scenes, "stored_size": args.size, "steps": args.steps,
        "render_s": round(render_s, 1),
        "img_per_s_median": round(statistics.median(rates), 1) if rates else None,
        "img_per_s_windows": [round(rate, 1) for rate in rates],
        "first_last_loss": [round(records[0]["loss"], 4), round(records[-1]["loss"], 4)],
    }))


if __name__ == "__main__":
    main()
