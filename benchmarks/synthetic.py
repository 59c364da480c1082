"""Synthetic scenes rendered per second on one core (numpy, one process). Prints one JSON line.
    python benchmarks/synthetic.py [--size 224] [--n 100] [--rounds 3]

Pin it to one core for the per-core figure (`taskset -c 0 python benchmarks/synthetic.py`). Scenes 0..n-1 are
rendered `--rounds` times; `scenes_per_s` is the median round's wall-clock rate and `cpu_scenes_per_s` the
median round's rate per second of this process's CPU time, which a busy shared machine disturbs less (time
spent waiting for the core is not counted).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--n", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    from multimae_cli.data.synthetic.scenes import render_scene

    render_scene(0, 0, args.size)
    wall, cpu = [], []
    for _ in range(max(1, args.rounds)):
        start, start_cpu = time.perf_counter(), time.process_time()
        for index in range(args.n):
            render_scene(0, index, args.size)
        wall.append(time.perf_counter() - start)
        cpu.append(time.process_time() - start_cpu)
    elapsed, elapsed_cpu = statistics.median(wall), statistics.median(cpu)
    print(json.dumps({"benchmark": "synthetic", "size": args.size, "scenes": args.n, "rounds": len(wall),
                      "scenes_per_s": round(args.n / elapsed, 1), "ms_per_scene": round(elapsed / args.n * 1000, 2),
                      "cpu_scenes_per_s": round(args.n / elapsed_cpu, 1),
                      "round_scenes_per_s": [round(args.n / w, 1) for w in wall]}))


if __name__ == "__main__":
    main()
