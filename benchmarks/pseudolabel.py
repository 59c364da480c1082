"""Images per second of `multimae pseudolabel` for each shipped teacher on CPU: the whole run (read, label,
write) over synthetic-scene photographs, best of `--repeats` runs. Prints one JSON line.

The model teachers are randomly initialised (nothing is downloaded): `multimae` is the `tiny` preset at the
image size; `hf` is a DPT with a ViT-S/16 backbone at the image size for depth and a SegFormer-B0 for semseg
(no processor file, so it runs at about 512^2 pixels, as the ADE20k SegFormers do). Their figures say what
the pipeline plus a small model costs; a real DPT-L or Mask2Former-L is many times slower.
    python benchmarks/pseudolabel.py [--n 32] [--size 224] [--batch 8] [--workers 2] [--threads 2]
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path

import torch

from multimae_cli import ModelConfig, create_model, save_model
from multimae_cli.data.synthetic.scenes import DEPTH_SCALE, render_scene
from multimae_cli.infer.pseudolabel import pseudolabel
from multimae_cli.plugin.registry import get_registry


def make_models(root: Path, size: int) -> dict[str, str]:
    """The model teachers' files, built from configs."""
    import transformers
    from transformers import DPTConfig, DPTForDepthEstimation, SegformerConfig, SegformerForSemanticSegmentation

    transformers.utils.logging.disable_progress_bar()
    torch.manual_seed(0)
    save_model(create_model(ModelConfig.from_preset("tiny", inputs=("rgb",), outputs=("depth", "semseg"),
                                                    image_size=size)), root / "tiny.safetensors")
    DPTForDepthEstimation(DPTConfig(hidden_size=384, num_hidden_layers=12, num_attention_heads=6,
                                    intermediate_size=1536, image_size=size, patch_size=16,
                                    backbone_out_indices=[2, 5, 8, 11], neck_hidden_sizes=[48, 96, 192, 384],
                                    fusion_hidden_size=64)).save_pretrained(root / "dpt")
    SegformerForSemanticSegmentation(SegformerConfig(num_labels=133)).save_pretrained(root / "segformer")
    return {"multimae depth": f"multimae:{root / 'tiny.safetensors'}", "hf depth (DPT ViT-S)": f"hf:{root / 'dpt'}",
            "hf semseg (SegFormer-B0)": f"hf:{root / 'segformer'}"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=32)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    registry = get_registry()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        data = tmp / "data" / "train"
        for name in ("rgb", "depth"):
            (data / name).mkdir(parents=True)
        for index in range(args.n):
            scene = render_scene(0, index, args.size)
            registry.modality("rgb").write(data / "rgb" / f"{index:04d}.png", scene["rgb"])
            registry.modality("depth").write(data / "depth" / f"{index:04d}.png", scene["depth"] * DEPTH_SCALE)
        runs = {"edges:canny": ("edges", "edges"), "edges:sobel": ("edges", "edges:sobel"),
                "normals-from-depth": ("normals", "normals-from-depth")}
        models = make_models(tmp, args.size)
        runs.update({label: (label.split()[1], spec) for label, spec in models.items()})
        results = {}
        for label, (modality, spec) in runs.items():
            best = 0.0
            for _ in range(args.repeats):
                shutil.rmtree(data / modality, ignore_errors=True)
                started = time.perf_counter()
                summary = pseudolabel(data / "rgb", tmp / "data", [modality], {modality: spec},
                                      batch_size=args.batch, workers=args.workers, device="cpu")
                best = max(best, summary["labelled"] / (time.perf_counter() - started))
            results[label] = round(best, 1)
    print(json.dumps({"benchmark": "pseudolabel", "unit": "images/s (load + label + write, CPU)",
                      "n": args.n, "size": args.size, "batch": args.batch, "workers": args.workers,
                      "threads": args.threads, "torch": torch.__version__, "teachers": results}))


if __name__ == "__main__":
    main()
