"""Forward + backward time of one MultiMAE pretraining step (model + masked losses, no optimiser).

CPU: base preset, batch 4, fp32. GPU (when present): batch 256, bf16 autocast, img/s. Prints one JSON line.
    python benchmarks/model_step.py [--preset base] [--batch N] [--device cpu|cuda] [--steps N]
"""

from __future__ import annotations

import argparse
import json
import statistics

import torch
from pretrain_throughput import time_steps

from multimae_cli import ModelConfig
from multimae_cli.train.pretrain import resolve_precision


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="base")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--batch", type=int)
    parser.add_argument("--steps", type=int)
    args = parser.parse_args()
    device = torch.device(args.device)
    on_gpu = device.type == "cuda"
    batch = args.batch or (256 if on_gpu else 4)
    steps = args.steps or (20 if on_gpu else 5)
    dtype = resolve_precision("auto", device)
    if on_gpu:
        torch.cuda.reset_peak_memory_stats(device)
    times = time_steps(ModelConfig.from_preset(args.preset), batch, device, dtype, False, steps,
                       warmup=3 if on_gpu else 1, with_optimizer=False)
    median = statistics.median(times)
    result = {
        "benchmark": "model_step", "preset": args.preset,
        "device": torch.cuda.get_device_name(device) if on_gpu else "cpu", "threads": torch.get_num_threads(),
        "batch": batch, "precision": "bf16" if dtype == torch.bfloat16 else "fp32", "steps": steps,
        "ms_per_step": round(median * 1000, 1), "img_per_s": round(batch / median, 1), "torch": torch.__version__,
    }
    if on_gpu:
        result["peak_mem_gib"] = round(torch.cuda.max_memory_allocated(device) / 2**30, 2)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
