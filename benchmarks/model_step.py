"""Forward + backward time of one MultiMAE pretraining step (model + masked losses, no optimiser).

CPU: base preset, batch 4, fp32. GPU (when present): batch 256, bf16 autocast, img/s. Prints one JSON line.
    python benchmarks/model_step.py [--preset base] [--batch N] [--device cpu|cuda] [--steps N]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

from multimae_cli import ModelConfig, create_model, create_objective


def make_batch(config: ModelConfig, batch: int, device: torch.device) -> dict[str, torch.Tensor]:
    h, w = config.image_size
    return {
        "rgb": torch.randn(batch, 3, h, w, device=device),
        "depth": torch.randn(batch, 1, h, w, device=device),
        "semseg": torch.randint(0, 133, (batch, h // 4, w // 4), device=device),
    }


def measure(preset: str, batch: int, device: torch.device, steps: int, warmup: int) -> dict:
    torch.manual_seed(0)
    config = ModelConfig.from_preset(preset)
    model = create_model(config).to(device).train()
    objective = create_objective(config)
    inputs = make_batch(config, batch, device)
    use_bf16 = device.type == "cuda" and torch.cuda.is_bf16_supported()
    times = []
    for step in range(warmup + steps):
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_bf16):
            preds, masks = model(inputs)
            loss, _ = objective(preds, inputs, masks)
        loss.backward()
        model.zero_grad(set_to_none=True)
        if device.type == "cuda":
            torch.cuda.synchronize()
        if step >= warmup:
            times.append(time.perf_counter() - start)
    median = statistics.median(times)
    result = {
        "benchmark": "model_step", "preset": preset, "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "threads": torch.get_num_threads(), "batch": batch, "precision": "bf16" if use_bf16 else "fp32",
        "steps": steps, "ms_per_step": round(median * 1000, 1), "img_per_s": round(batch / median, 1),
        "torch": torch.__version__,
    }
    if device.type == "cuda":
        result["peak_mem_gib"] = round(torch.cuda.max_memory_allocated(device) / 2**30, 2)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="base")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--batch", type=int)
    parser.add_argument("--steps", type=int)
    args = parser.parse_args()
    device = torch.device(args.device)
    batch = args.batch or (256 if device.type == "cuda" else 4)
    steps = args.steps or (20 if device.type == "cuda" else 5)
    print(json.dumps(measure(args.preset, batch, device, steps, warmup=3 if device.type == "cuda" else 1)))


if __name__ == "__main__":
    main()
