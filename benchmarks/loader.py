"""rgb + depth + semseg training samples per second from disk, ours against a plain PIL + torchvision
pipeline doing the same work (shared random resized crop and flip, bicubic rgb, bilinear depth, nearest
semseg at 1/4, ImageNet normalisation, robust depth standardisation), same files, same run, 2 workers.
Ours normalises each batch in the main process after it arrives (as training does, there on the device);
that time is counted, and both read every memory page of each batch they receive, as a training step would.
The two loaders are timed in alternating rounds (ours, reference, reference, ours, ...) and each reports its
median rate, so a load change on a shared machine hits both alike. `ours_worker_ms_per_sample` is what one of
our workers spends per sample (read, augment, collate), timed in-process on one thread. Prints one JSON line.
    python benchmarks/loader.py [--n 256] [--size 224] [--workers 2] [--batch 32] [--rounds 5] [--device cpu]
        [--rgb-format jpg]
Scenes are stored at 256 px: rgb as JPEG (quality 95) like ImageNet's, or as PNG; depth and semseg as PNG.
`--device cuda` moves each batch of ours to the GPU and normalises it there, as training on a GPU does.

`--shards`: ours from the folder against ours from its shards (`multimae data shard`, 256 MB target: one shard
here), same files, same transform, alternated as above; the shards read in training's streaming order (shuffle
buffer 1000), the folder in its random order. Also the shard writer's MB/s and the bytes per sample of both,
as files hold them (apparent) and as the disk allocates them (blocks).
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader


class PilTorchvisionDataset:
    """The reference pipeline: PIL decoding and torchvision.transforms.functional, as the official code."""

    def __init__(self, root: Path, size: int) -> None:
        self.files = sorted(path for path in (root / "rgb").rglob("*") if path.is_file())
        self.root, self.size = root, size

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int):
        import torchvision.transforms.functional as TF
        from torchvision.transforms import InterpolationMode, RandomResizedCrop

        rel = self.files[index].relative_to(self.root / "rgb")
        rgb = Image.open(self.files[index]).convert("RGB")
        depth = Image.open(self.root / "depth" / rel.with_suffix(".png"))
        semseg = Image.open(self.root / "semseg" / rel.with_suffix(".png"))
        top, left, h, w = RandomResizedCrop.get_params(rgb, scale=(0.2, 1.0), ratio=(3 / 4, 4 / 3))
        flip = random.random() < 0.5
        size = [self.size, self.size]
        rgb = TF.resized_crop(rgb, top, left, h, w, size, InterpolationMode.BICUBIC)
        depth = torch.from_numpy(np.array(depth, dtype=np.float32))[None]
        depth = TF.resized_crop(depth, top, left, h, w, size, InterpolationMode.BILINEAR, antialias=False)
        semseg = TF.resized_crop(semseg, top, left, h, w, [self.size // 4] * 2, InterpolationMode.NEAREST)
        if flip:
            rgb, depth, semseg = TF.hflip(rgb), TF.hflip(depth), TF.hflip(semseg)
        rgb = TF.normalize(TF.to_tensor(rgb), (0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
        flat = depth.flatten().sort().values
        band = flat[int(0.1 * len(flat)): int(0.9 * len(flat))]
        depth = (depth - band.mean()) / (band.var() + 1e-6).sqrt()
        return {"rgb": rgb, "depth": depth, "semseg": torch.from_numpy(np.array(semseg, dtype=np.int64))}


def touch(batch: dict[str, torch.Tensor]) -> int:
    """Read one value per 4 KiB page of every tensor, as a training step reads them all: this is what brings
    a batch's shared memory from the workers into this process (a loop that only counts samples never pays it)."""
    for tensor in batch.values():
        flat = tensor.reshape(-1)
        flat[::max(1, 4096 // flat.element_size())].sum()
    return len(batch["rgb"])


def worker_cost(dataset, batch: int, rounds: int = 5) -> float:
    """Milliseconds per sample of what a worker does (read, augment, collate), in this process on one thread:
    the per-sample CPU cost, steadier than a loader's rate on a busy machine (median of rounds)."""
    import cv2

    from multimae_cli.data.datasets import collate

    cv2.setNumThreads(1)  # as in a worker
    costs = []
    for _ in range(rounds + 1):  # the first round warms the file cache
        start = time.perf_counter()
        for first in range(0, len(dataset) - batch + 1, batch):
            collate([dataset[i] for i in range(first, first + batch)])
        costs.append((time.perf_counter() - start) * 1e3 / (len(dataset) // batch * batch))
    return statistics.median(costs[1:])


def throughput(loader: DataLoader, prepare, epochs: int = 2) -> float:
    start, count = time.perf_counter(), 0
    for _ in range(epochs):
        for batch in loader:
            count += touch(prepare(batch))
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return count / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=256)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--device", default="cpu", help="Where ours normalises each batch (training's device).")
    parser.add_argument("--rgb-format", default="jpg", choices=("jpg", "png"),
                        help="rgb files: JPEG as ImageNet (the official pretraining data) or PNG.")
    parser.add_argument("--shards", action="store_true", help="Folder against shards of the same data.")
    args = parser.parse_args()
    torch.set_num_threads(1)
    if args.shards:
        shards_main(args)
        return

    from multimae_cli.data.datasets import collate, make_loader
    from multimae_cli.data.folder import FolderDataset
    from multimae_cli.data.synthetic.io import MODALITIES, write_synthetic
    from multimae_cli.data.transforms import MultiModalTransform, to_device
    from multimae_cli.plugin.registry import get_registry

    registry = get_registry()
    all_modalities = {name: registry.modality(name) for name in MODALITIES}
    modalities = {name: all_modalities[name] for name in ("rgb", "depth", "semseg")}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        write_synthetic(root, args.n, (256, 256), all_modalities, workers=args.workers, rgb_format=args.rgb_format)
        ours = FolderDataset(root, modalities, transform=MultiModalTransform(modalities, args.size))
        ours_cost = worker_cost(ours, args.batch)
        loaders = {"ours": make_loader(ours, args.batch, workers=args.workers,
                                            pin_memory=args.device.startswith("cuda"))}
        reference = PilTorchvisionDataset(root / "train", args.size)
        loaders["reference"] = DataLoader(reference, batch_size=args.batch, shuffle=True, num_workers=args.workers,
                                          collate_fn=collate, drop_last=True, persistent_workers=True)
        prepare = {"ours": lambda batch: to_device(batch, modalities, args.device, non_blocking=True),
                   "reference": lambda batch: batch}
        for name, loader in loaders.items():  # warm-up epoch: worker start, file cache
            throughput(loader, prepare[name], 1)
        rates: dict[str, list[float]] = {name: [] for name in loaders}
        for round_ in range(args.rounds):
            for name in (("ours", "reference") if round_ % 2 == 0 else ("reference", "ours")):
                rates[name].append(throughput(loaders[name], prepare[name]))
        ours_rate, reference_rate = (statistics.median(rates[name]) for name in ("ours", "reference"))
    print(json.dumps({
        "benchmark": "loader", "samples": args.n, "size": args.size, "workers": args.workers, "batch": args.batch,
        "device": args.device, "rgb_format": args.rgb_format,
        "ours_samples_per_s": round(ours_rate, 1), "pil_torchvision_samples_per_s": round(reference_rate, 1),
        "speedup": round(ours_rate / reference_rate, 2), "rounds": args.rounds,
        "ours_worker_ms_per_sample": round(ours_cost, 3),
        "round_speedups": [round(a / b, 2) for a, b in zip(rates["ours"], rates["reference"], strict=True)],
    }))


def disk_bytes(paths: list[Path]) -> tuple[int, int]:
    """(apparent bytes, allocated bytes) of files."""
    stats = [path.stat() for path in paths]
    return sum(s.st_size for s in stats), sum(s.st_blocks * 512 for s in stats)


def shards_main(args) -> None:
    from multimae_cli.data.datasets import make_loader
    from multimae_cli.data.folder import FolderDataset
    from multimae_cli.data.shard_writer import write_shards
    from multimae_cli.data.shards import ShardDataset, ShardSampler
    from multimae_cli.data.synthetic.io import MODALITIES, write_synthetic
    from multimae_cli.data.transforms import MultiModalTransform, to_device
    from multimae_cli.plugin.registry import get_registry
    from multimae_cli.train.distributed import DistInfo, EpochSampler

    registry = get_registry()
    all_modalities = {name: registry.modality(name) for name in MODALITIES}
    modalities = {name: all_modalities[name] for name in ("rgb", "depth", "semseg")}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "folder"
        write_synthetic(root, args.n, (256, 256), all_modalities, workers=args.workers, rgb_format=args.rgb_format)
        written = write_shards(root, Path(tmp) / "shards", modalities, shard_bytes=256_000_000)
        transform = MultiModalTransform(modalities, args.size)
        datasets = {"folder": FolderDataset(root, modalities, transform=transform),
                    "shards": ShardDataset(Path(tmp) / "shards", modalities, transform=transform)}
        costs = {name: worker_cost(dataset, args.batch) for name, dataset in datasets.items()}
        sampler = ShardSampler(datasets["shards"], args.batch, 0, 1, seed=0, buffer=1000)
        folder_order = EpochSampler(len(datasets["folder"]), args.batch, DistInfo(), seed=0)  # training's sampler
        loaders = {"folder": make_loader(datasets["folder"], args.batch, sampler=folder_order, workers=args.workers),
                   "shards": make_loader(datasets["shards"], args.batch, sampler=sampler, workers=args.workers)}
        iterators = {name: iter(loader) for name, loader in loaders.items()}  # one per run, as training
        epoch = sampler.batches_per_epoch * args.batch

        def rate(name: str) -> float:  # two epochs' worth, from the run's one iterator
            start, count = time.perf_counter(), 0
            for _ in range(2 * epoch // args.batch):
                count += touch(to_device(next(iterators[name]), modalities, args.device))
            return count / (time.perf_counter() - start)

        for name in loaders:
            rate(name)  # warm-up: worker start, file cache
        rates: dict[str, list[float]] = {name: [] for name in loaders}
        for round_ in range(args.rounds):
            for name in (("folder", "shards") if round_ % 2 == 0 else ("shards", "folder")):
                rates[name].append(rate(name))
        folder_files = [p for name in modalities for p in (root / "train" / name).rglob("*") if p.is_file()]
        folder_bytes = disk_bytes(folder_files)
        shard_bytes = disk_bytes(sorted((Path(tmp) / "shards").glob("*.tar")))
    folder_rate, shard_rate = (statistics.median(rates[name]) for name in ("folder", "shards"))
    print(json.dumps({
        "benchmark": "loader-shards", "samples": args.n, "size": args.size, "workers": args.workers,
        "batch": args.batch, "rgb_format": args.rgb_format, "rounds": args.rounds,
        "folder_samples_per_s": round(folder_rate, 1), "shards_samples_per_s": round(shard_rate, 1),
        "ratio": round(shard_rate / folder_rate, 2),
        "round_ratios": [round(a / b, 2) for a, b in zip(rates["shards"], rates["folder"], strict=True)],
        "worker_ms_per_sample": {name: round(cost, 3) for name, cost in costs.items()},
        "writer_mb_per_s": written["mb_per_s"],
        "bytes_per_sample": {"folder_apparent": folder_bytes[0] // args.n,
                             "folder_allocated": folder_bytes[1] // args.n,
                             "shards_apparent": shard_bytes[0] // args.n,
                             "shards_allocated": shard_bytes[1] // args.n},
    }))


if __name__ == "__main__":
    main()
