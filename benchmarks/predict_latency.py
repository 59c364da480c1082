"""Latency of `multimae predict` on one 224 px image with the base preset (rgb -> depth + semseg).

Whole process: `multimae predict` run as a user runs it (interpreter start, imports, checkpoint load,
read, predict, write), median of several runs. Model forward: encoder + both decoders, in-process,
median of repeated calls after a warm-up. Targets (CPU): whole process <= 2.5 s, forward <= 150 ms.
Prints one JSON line.
    python benchmarks/predict_latency.py [--runs 5] [--device cpu]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from multimae_cli import ModelConfig, create_model, save_model
from multimae_cli.data.transforms import to_device
from multimae_cli.infer.predictor import Predictor
from multimae_plugins import rgb


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        folder = Path(folder)
        torch.manual_seed(0)
        model = create_model(ModelConfig())  # the official ViT-B: rgb, depth, semseg in; + norm_rgb out
        save_model(model, folder / "base.safetensors")
        image = np.random.default_rng(0).integers(0, 255, (224, 224, 3), dtype=np.uint8)
        rgb.write(folder / "photo.png", image)

        walls = []
        for run in range(args.runs):
            started = time.perf_counter()
            subprocess.run([sys.executable, "-m", "multimae_cli", "predict", str(folder / "photo.png"),
                            "--checkpoint", str(folder / "base.safetensors"), "--out", str(folder / f"out{run}"),
                            "--device", args.device, "--quiet"], check=True)
            walls.append(time.perf_counter() - started)
        started = time.perf_counter()
        subprocess.run([sys.executable, "-c", "import torch, timm"], check=True)
        imports = time.perf_counter() - started

        predictor = Predictor(model, args.device)
        sample = [("photo", {"rgb": image})]
        forwards = []
        with torch.inference_mode():
            files = {"rgb": predictor.prepare(sample[0][1], (224, 224))["rgb"][None]}
            batch = to_device(files, predictor.modalities, predictor.device)
            for step in range(args.runs * 4 + 2):
                started = time.perf_counter()
                predictor.model.decode(predictor.model.encode(batch, mask_inputs=False), ["depth", "semseg"])
                if predictor.device.type == "cuda":
                    torch.cuda.synchronize()
                if step >= 2:
                    forwards.append(time.perf_counter() - started)
    print(json.dumps({
        "benchmark": "predict_latency", "preset": "base", "image": [224, 224], "device": args.device,
        "threads": torch.get_num_threads(), "whole_process_s": round(statistics.median(walls), 3),
        "import_torch_timm_s": round(imports, 3), "forward_ms": round(1000 * statistics.median(forwards), 1),
        "targets": {"whole_process_s": 2.5, "forward_ms": 150},
    }))


if __name__ == "__main__":
    main()
