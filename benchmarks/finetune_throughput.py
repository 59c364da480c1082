"""Fine-tuning step time: forward + loss + backward + AdamW of a task head on the base encoder.

CPU default: base preset, batch 2, 224 px (DPT depth from rgb; ConvNeXt semseg from rgb + depth), fp32.
GPU (when present): batch 64, bf16 autocast. Median of the timed steps after warm-up. Prints one JSON line.
    python benchmarks/finetune_throughput.py [--task depth|semseg|classification] [--batch N] [--steps N]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

from multimae_cli import ModelConfig, create_model
from multimae_cli.config import OptimConfig
from multimae_cli.plugin.factory import build_task_model
from multimae_cli.plugin.registry import get_registry
from multimae_cli.train.optim import build_optimizer
from multimae_cli.train.runtime import resolve_precision

SETUPS = {  # task -> (inputs, head, outputs)
    "depth": (("rgb",), "dpt", 1),
    "semseg": (("rgb", "depth"), "convnext", 40),
    "classification": (("rgb",), "linear", 1000),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task", default="depth", choices=sorted(SETUPS))
    parser.add_argument("--preset", default="base")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--batch", type=int)
    parser.add_argument("--steps", type=int)
    parser.add_argument("--size", type=int, default=224)
    args = parser.parse_args()
    device = torch.device(args.device)
    on_gpu = device.type == "cuda"
    batch = args.batch or (64 if on_gpu else 2)
    steps = args.steps or (20 if on_gpu else 5)
    inputs, head, outputs = SETUPS[args.task]
    task = get_registry().task(args.task)
    torch.manual_seed(0)
    config = ModelConfig.from_preset(args.preset, inputs=inputs, outputs=(), image_size=args.size,
                                     num_encoded_tokens=0, drop_path_rate=0.1)
    model = build_task_model(create_model(config), task, head, outputs).to(device).train()
    optimizer = build_optimizer(model, OptimConfig(), 1e-4, device, layer_decay=0.75)
    criterion = next(iter(task.losses.values()))({})
    dtype = resolve_precision("auto", device)
    data = {"rgb": torch.randn(batch, 3, args.size, args.size, device=device)}
    if "depth" in inputs:
        data["depth"] = torch.randn(batch, 1, args.size, args.size, device=device)
    if task.kind == "classification":
        target = torch.randint(0, outputs, (batch,), device=device)
    elif task.name == "semseg":
        target = torch.randint(0, outputs, (batch, args.size, args.size), device=device)
    else:
        target = torch.rand(batch, 1, args.size, args.size, device=device) * 5 + 0.5
    times = []
    for step in range(steps + 2):
        if on_gpu:
            torch.cuda.synchronize()
        started = time.perf_counter()
        with torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
            pred = model(data)
        loss = criterion(pred.float(), target)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if on_gpu:
            torch.cuda.synchronize()
        if step >= 2:
            times.append(time.perf_counter() - started)
    median = statistics.median(times)
    print(json.dumps({
        "benchmark": "finetune_throughput", "task": args.task, "head": head, "inputs": list(inputs),
        "preset": args.preset, "device": str(device), "batch": batch, "image": args.size,
        "precision": "bf16" if dtype == torch.bfloat16 else "fp32", "threads": torch.get_num_threads(),
        "ms_per_step": round(1000 * median, 1), "img_per_s": round(batch / median, 2),
        "peak_memory_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2) if on_gpu else None,
    }))


if __name__ == "__main__":
    main()
