"""Synthetic scenes rendered per second on one core (numpy, one process). Prints one JSON line.
    python benchmarks/synthetic.py [--size 224] [--n 100]
"""

from __future__ import annotations

import argparse
import json
import os
import time


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--n", type=int, default=100)
    args = parser.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    from multimae_cli.data.synthetic import render_scene

    render_scene(0, 0, args.size)
    start = time.perf_counter()
    for index in range(args.n):
        render_scene(0, index, args.size)
    elapsed = time.perf_counter() - start
    print(json.dumps({"benchmark": "synthetic", "size": args.size, "scenes": args.n,
                      "scenes_per_s": round(args.n / elapsed, 1), "ms_per_scene": round(elapsed / args.n * 1000, 2)}))


if __name__ == "__main__":
    main()
