"""Pretraining throughput: one full training step (masked forward, losses, backward, AdamW) of the official
configuration (rgb + depth + semseg in; rgb, depth, semseg, norm_rgb out; a sixth of the tokens visible) on
synthetic inputs already on the device, run as the training loop runs it (masks drawn per micro-batch on the
device, `PretrainStep`, loss values read once per step). Median of the timed steps after warm-up. Prints one
JSON line with img/s, ms/step, peak memory (GPU: allocated by torch; CPU: the process's peak resident size),
FLOPs per image (counted by torch's FlopCounterMode on the real forward) and MFU.
    python benchmarks/pretrain_throughput.py [--preset base] [--batch N] [--device cpu|cuda]
        [--precision auto|bf16|fp16|fp32] [--compile] [--compile-mode reduce-overhead]
        [--activation-checkpointing] [--steps N] [--floor] [--peak-tflops 782]
        [--ablate conv-patch-embed] [--ablate model-only-compile] [--from-files]
`--from-files` starts each step from a batch as the loader hands it over (uint8 rgb, depth in file units, class
ids; in pinned host memory on a GPU machine) and times the transfer and each plugin's normalisation on the device
too, as the training loop runs them: the most the loop can do when the data keeps up.
Ablations put back what the fast path replaced, for the per-optimisation table: `conv-patch-embed` the
official strided convolutions, `model-only-compile` compiles the model alone with the losses eager.
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
from multimae_cli.data.transforms import to_device
from multimae_cli.model import adapters
from multimae_cli.model.losses import PretrainStep
from multimae_cli.plugin.factory import resolve_modalities
from multimae_cli.train.distributed import DistInfo
from multimae_cli.train.optim import build_optimizer
from multimae_cli.train.pretrain import micro_batch_masks
from multimae_cli.train.runtime import resolve_precision

ABLATIONS = ("conv-patch-embed", "model-only-compile")


def conv_patch_embed() -> None:
    """Input adapters back on the official strided convolutions (same weights, same values)."""

    def patch(self, data):
        features = self.proj(data)
        grid = tuple(features.shape[-2:])
        return features.flatten(2).transpose(1, 2) + adapters.grid_tokens(self.pos_emb, grid, self.pos_interpolation)

    def class_patch(self, labels):
        return patch(self, self.class_emb(labels.long()).permute(0, 3, 1, 2))

    adapters.PatchInputAdapter.forward = patch
    adapters.ClassEmbeddingInputAdapter.forward = class_patch


class ModelOnlyCompiled(PretrainStep):
    """The step with only the model compiled and the losses eager (the previous release)."""

    def __init__(self, model, objective, dtype) -> None:
        super().__init__(torch.compile(model), objective, dtype)


def inputs_for(config: ModelConfig, batch: int, device: torch.device) -> dict[str, torch.Tensor]:
    h, w = config.image_size
    return {"rgb": torch.randn(batch, 3, h, w, device=device), "depth": torch.randn(batch, 1, h, w, device=device),
            "semseg": torch.randint(0, 133, (batch, h // 4, w // 4), device=device)}


def file_space_batch(config: ModelConfig, batch: int, device: torch.device) -> dict[str, torch.Tensor]:
    """A collated batch as the loader delivers it (before `to_device`)."""
    h, w = config.image_size
    host = {"rgb": torch.randint(0, 256, (batch, 3, h, w), dtype=torch.uint8),
            "depth": torch.rand(batch, 1, h, w) * 5000 + 500, "semseg": torch.randint(0, 133, (batch, h // 4, w // 4))}
    return {name: tensor.pin_memory() for name, tensor in host.items()} if device.type == "cuda" else host


def forward_flops(config: ModelConfig) -> float:
    model = create_model(config)
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(inputs_for(config, 1, torch.device("cpu")))
    return counter.get_total_flops()


def time_steps(config: ModelConfig, batch: int, device: torch.device, dtype, compile_mode: str | None,
               steps: int, warmup: int, recompute: bool = False, ablate: tuple[str, ...] = (),
               from_files: bool = False) -> tuple[list[float], list[float]]:
    """Seconds per training step, warm-up excluded (masks, masked forward, losses, backward, AdamW), and the
    loss of every step, warm-up included."""
    torch.manual_seed(0)
    torch._dynamo.reset()  # each run compiles its own static-shape graphs
    model = create_model(config).to(device).train()
    model.set_grad_checkpointing(recompute)
    objective = create_objective(config).to(device)
    optimizer = build_optimizer(model, OptimConfig(), 1e-4, device)
    scaler = torch.amp.GradScaler(device.type, enabled=dtype == torch.float16)
    if compile_mode and "model-only-compile" in ablate:
        step = ModelOnlyCompiled(model, objective, dtype)
    else:
        step = PretrainStep(model, objective, dtype)
        step = torch.compile(step, mode=None if compile_mode == "default" else compile_mode) if compile_mode else step
    host = file_space_batch(config, batch, device) if from_files else None
    modalities = resolve_modalities(config, names=list(host)) if host else {}
    data = inputs_for(config, batch, device)
    times, losses = [], []
    for i in range(warmup + steps):
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        if host is not None:
            data = to_device(host, modalities, device, non_blocking=True)
        inputs = {name: data[name] for name in config.inputs}
        targets = {name: data[name] for name in objective.sources.values()}
        masks = micro_batch_masks(config, i, DistInfo(), batch, device, seed=0)
        loss, parts = step(inputs, targets, masks)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        optimizer.zero_grad(set_to_none=True)
        losses.append(torch.stack([loss.detach(), *(v.detach() for v in parts.values())]).tolist()[0])
        if device.type == "cuda":
            torch.cuda.synchronize()
        if i >= warmup:
            times.append(time.perf_counter() - start)
    return times, losses


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="base")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--batch", type=int)
    parser.add_argument("--precision", default="auto")
    parser.add_argument("--compile", action="store_true", help="torch.compile the step, as `compile: true`.")
    parser.add_argument("--compile-mode", default="default", help="torch.compile mode, e.g. reduce-overhead.")
    parser.add_argument("--ablate", action="append", default=[], choices=ABLATIONS,
                        help="Put back a replaced implementation.")
    parser.add_argument("--activation-checkpointing", action="store_true", help="Recompute encoder activations.")
    parser.add_argument("--steps", type=int)
    parser.add_argument("--floor", action="store_true", help="Also time batch 16 (CPU: 1): the host-overhead floor.")
    parser.add_argument("--compare-fp32", action="store_true",
                        help="Also run the same steps eager in fp32 and report the largest relative loss difference.")
    parser.add_argument("--from-files", action="store_true",
                        help="Start each step from a loader's file-space batch: transfer and normalisation timed.")
    parser.add_argument("--peak-tflops", type=float, help="The device's measured bf16 matmul peak, for MFU.")
    args = parser.parse_args()
    device = torch.device(args.device)
    on_gpu = device.type == "cuda"
    batch = args.batch or (256 if on_gpu else 4)
    steps = args.steps or (20 if on_gpu else 5)
    config = ModelConfig.from_preset(args.preset)
    from multimae_cli.plugin.factory import complete_config

    config = complete_config(config)
    dtype = resolve_precision(args.precision, device)
    compile_mode = args.compile_mode if args.compile else None
    ablate = tuple(args.ablate)
    if "conv-patch-embed" in ablate:
        conv_patch_embed()
    if on_gpu:
        torch.cuda.reset_peak_memory_stats(device)
    warmup = 5 if on_gpu else 1
    times, losses = time_steps(config, batch, device, dtype, compile_mode, steps, warmup,
                               recompute=args.activation_checkpointing, ablate=ablate, from_files=args.from_files)
    median = statistics.median(times)
    flops = forward_flops(config)
    achieved = 3 * flops * batch / median  # forward + backward (2x forward)
    result = {
        "benchmark": "pretrain_throughput", "preset": args.preset, "device": torch.cuda.get_device_name(device)
        if on_gpu else "cpu", "threads": torch.get_num_threads(), "batch": batch,
        "precision": {None: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}[dtype],
        "compile": compile_mode or False, "ablate": list(ablate),
        "activation_checkpointing": args.activation_checkpointing, "from_files": args.from_files,
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
        floor = statistics.median(time_steps(config, small, device, dtype, compile_mode, steps, warmup=3,
                                             recompute=args.activation_checkpointing, ablate=ablate)[0])
        result[f"ms_per_step_batch{small}"] = round(floor * 1e3, 1)
    if args.compare_fp32:
        reference = time_steps(config, batch, device, None, None, steps, warmup, ablate=ablate)[1]
        result["loss_first_last"] = [round(losses[0], 4), round(losses[-1], 4)]
        result["loss_max_rel_diff_vs_fp32_eager"] = round(max(abs(a - b) / abs(b) for a, b in
                                                              zip(losses, reference, strict=True)), 5)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
