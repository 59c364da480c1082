"""`multimae demo`: startup time of the page and the time of one prediction, tiny and base presets at 224 px.

Startup: `multimae demo` started as a user starts it, until the page and `/api/info` answer. Prediction: the
bundled photo (480x320: an 11x17 token grid per input at 224 px) picked as an example, then one `/api/predict`
per slider position as the page sends it (rgb visible tokens 1/8, 1/4, 1/2 of the grid...), median wall time seen
by the client (the request, the encoder and every decoder, the PNGs) and the server's own prediction time. Random
weights: the time does not depend on them. One JSON line.
    python benchmarks/demo.py [--runs 7] [--presets tiny,base] [--device cpu]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import torch

from multimae_cli import ModelConfig, create_model, save_model


def _call(url: str, data: bytes | None = None) -> dict:
    request = urllib.request.Request(url, data=data, method="POST" if data is not None else "GET",
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=120) as response:
        return json.loads(response.read()) if url.find("/api/") >= 0 else {"bytes": len(response.read())}


def measure(checkpoint: Path, runs: int, device: str) -> dict:
    started = time.perf_counter()
    server = subprocess.Popen([sys.executable, "-m", "multimae_cli", "demo", "--checkpoint", str(checkpoint),
                               "--port", "0", "--json", "--device", device], stdout=subprocess.PIPE, text=True)
    try:
        url = json.loads(server.stdout.readline())["url"]
        _call(url)
        _call(url + "api/info")
        startup = time.perf_counter() - started
        photo = _call(url + "api/example?name=photo", b"")["rgb"]
        walls, engine = [], []
        for run in range(runs + 1):
            visible = max(1, photo["tokens"] * (1 + run % 4) // 8)
            body = json.dumps({"images": {"rgb": photo["id"]}, "visible": {"rgb": visible}, "seed": run}).encode()
            began = time.perf_counter()
            answer = _call(url + "api/predict", body)
            if run:  # the first request warms the allocator up
                walls.append(time.perf_counter() - began)
                engine.append(answer["seconds"])
        return {"startup_s": round(startup, 2), "predict_ms": round(1000 * statistics.median(walls)),
                "engine_ms": round(1000 * statistics.median(engine)), "tokens_per_input": photo["tokens"]}
    finally:
        server.terminate()
        server.wait(timeout=60)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--presets", default="tiny,base")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    results = {}
    with tempfile.TemporaryDirectory() as folder:
        for preset in args.presets.split(","):
            torch.manual_seed(0)
            path = Path(folder) / f"{preset}.safetensors"
            save_model(create_model(ModelConfig.from_preset(preset)), path)
            results[preset] = measure(path, args.runs, args.device)
    print(json.dumps({"benchmark": "demo", "device": args.device, "threads": torch.get_num_threads(),
                      "image": "coffee 480x320 at 224 px", **results}))


if __name__ == "__main__":
    main()
