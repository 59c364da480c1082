"""Pretraining throughput: one full training step (masked forward, losses, backward, AdamW) of the official
configuration (rgb + depth + semseg in; rgb, depth, semseg, norm_rgb out; a sixth of the tokens visible) on
synthetic inputs already on the device. Median of the timed steps after warm-up. Prints one JSON line with
img/s, ms/step, peak memory (GPU: allocated by torch; CPU: the process's peak resident size), FLOPs per image
(counted by torch's FlopCounterMode on the real forward) and MFU.
    python benchmarks/pretrain_throughput.py [--preset base] [--batch N] [--device cpu|cuda]
        [--precision auto|bf16|fp16|fp32] [--compile] [--activation-checkpointing] [--steps N] [--floor]
        [--peak-tflops 782]
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import time

import torch
from torch.utils.flop_counter import FlopCounterMode

from multimae_cli import ModelConfig, create_model, create_objective
from multimae_cli.config import OptimConfig
from multimae_cli.train.optim import build_optimizer
from multimae_cli.train.pretrain import resolve_precision


def inputs_for(config: ModelConfig, batch: int, device: torch.device) -> dict[str, torch.Tensor]:
    h, w = config.image_size
    return {"rgb": torch.randn(batch, 3, h, w, device=device), "depth": torch.randn(batch, 1, h, w, device=device),
            "semseg": torch.randint(0, 133, (batch, h // 4, w // 4), device=device)}


def forward_flops(config: ModelConfig) -> float:
    model = create_model(config)
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(inputs_for(config, 1, torch.device("cpu")))
    return counter.get_total_flops()


def time_steps(config: ModelConfig, batch: int, device: torch.device, dtype, compile_model: bool, steps: int,
               warmup: int, with_optimizer: bool = True, recompute: bool = False) -> list[float]:
    """Seconds per step, warm-up excluded: masked forward, losses, backward and (optionally) AdamW."""
    torch.manual_seed(0)
    model = create_model(config).to(device).train()
    model.set_grad_checkpointing(recompute)
    objective = create_objective(config).to(device)
    optimizer = build_optimizer(model, OptimConfig(), 1e-4, device)
    scaler = torch.amp.GradScaler(device.type, enabled=dtype == torch.float16)
    step_model = torch.compile(model) if compile_model else model
    data = inputs_for(config, batch, device)
    times = []
    for i in range(warmup + steps):
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        with torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
            preds, masks = step_model(data)
        loss, _ = objective(preds, data, masks)
        scaler.scale(loss).backward()
        if with_optimizer:
            scaler.step(optimizer)
            scaler.update()
        optimizer.zero_grad(set_to_none=True)
        if device.type == "cuda":
            torch.cuda.synchronize()
        if i >= warmup:
            times.append(time.perf_counter() - start)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="base")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--batch", type=int)
    parser.add_argument("--precision", default="auto")
    parser.add_argument("--compile", action="store_true")
    parser.add_argument("--activation-checkpointing", action="store_true", help="Recompute encoder activations.")
    parser.add_argument("--steps", type=int)
    parser.add_argument("--floor", action="store_true", help="Also time batch 16 (CPU: 1): the host-overhead floor.")
    parser.add_argument("--peak-tflops", type=float, help="The device's measured bf16 matmul peak, for MFU.")
    args = parser.parse_args()
    device = torch.device(args.device)
    on_gpu = device.type == "cuda"
    batch = args.batch or (256 if on_gpu else 4)
    steps = args.steps or (20 if on_gpu else 5)
    config = ModelConfig.from_preset(args.preset)
    from multimae_cli.factory import complete_config

    config = complete_config(config)
    dtype = resolve_precision(args.precision, device)
    if on_gpu:
        torch.cuda.reset_peak_memory_stats(device)
    times = time_steps(config, batch, device, dtype, args.compile, steps, warmup=5 if on_gpu else 1,
                       recompute=args.activation_checkpointing)
    median = statistics.median(times)
    flops = forward_flops(config)
    achieved = 3 * flops * batch / median  # forward + backward (2x forward)
    result = {
        "benchmark": "pretrain_throughput", "preset": args.preset, "device": torch.cuda.get_device_name(device)
        if on_gpu else "cpu", "threads": torch.get_num_threads(), "batch": batch,
        "precision": {None: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}[dtype], "compile": args.compile,
        "activation_checkpointing": args.activation_checkpointing,
        "steps": steps, "ms_per_step": round(median * 1e3, 1), "img_per_s": round(batch / median, 1),
        "gflop_fwd_per_img": round(flops / 1e9, 2), "tflops": round(achieved / 1e12, 2), "torch": torch.__version__,
    }
    if args.peak_tflops:
        result["mfu"] = round(achieved / (args.peak_tflops * 1e12), 3)
    if on_gpu:
        result["peak_mem_gib"] = round(torch.cuda.max_memory_allocated(device) / 2**30, 2)
    else:  # kibibytes on Linux; measured before the floor run below
        result["peak_rss_gib"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2)
    if args.floor:
        small = 16 if on_gpu else 1
        floor = statistics.median(time_steps(config, small, device, dtype, args.compile, steps, warmup=3,
                                             recompute=args.activation_checkpointing))
        result[f"ms_per_step_batch{small}"] = round(floor * 1e3, 1)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
