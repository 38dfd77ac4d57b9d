"""Benchmark: simulate 4 subjects x 1000 images x ~15k voxels (target < 60 s, < 4 GB peak).

Each run is a fresh process (so peak RSS is its own and imports count); the result is
the median over runs. Usage::

    .venv/bin/python benchmarks/bench_simulate.py --runs 3 [--subjects 4 --images 1000 --voxels 15000]

Writes the response sets to a temporary folder (included in the time).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time


def once(args) -> dict:
    import resource
    import tempfile

    t0 = time.perf_counter()
    from napari_nrf.simulate import simulate

    with tempfile.TemporaryDirectory() as tmp:
        rs = simulate(n_subjects=args.subjects, n_images=args.images, seed=args.seed, out=tmp,
                      max_voxels=args.voxels, workers=args.workers)
        wall = time.perf_counter() - t0
    me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    peak_mb = max(me.ru_maxrss, kids.ru_maxrss) / 1024  # the helper process is a child (peak of each)
    cpu = me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime
    import os

    return {"wall_s": wall, "cpu_s": cpu, "peak_rss_mb_helper": kids.ru_maxrss / 1024, "load_avg_1min": os.getloadavg()[0], "peak_rss_mb": peak_mb, "voxels": [r.n_voxels for r in rs],
            "median_nc": [float(__import__("numpy").median(r.noise_ceiling)) for r in rs]}


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--subjects", type=int, default=4)
    p.add_argument("--images", type=int, default=1000)
    p.add_argument("--voxels", type=int, default=15000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--workers", type=int, default=2, help="processes for stimuli + descriptors")
    p.add_argument("--once", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.once:
        print(json.dumps(once(args)))
        return
    results = []
    for _ in range(args.runs):
        cmd = [sys.executable, __file__, "--once", "--subjects", str(args.subjects), "--images", str(args.images),
               "--voxels", str(args.voxels), "--seed", str(args.seed), "--workers", str(args.workers)]
        out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.strip().splitlines()[-1]
        results.append(json.loads(out))
        print(results[-1], flush=True)
    walls = sorted(r["wall_s"] for r in results)
    peaks = sorted(r["peak_rss_mb"] for r in results)
    cpus = sorted(r["cpu_s"] for r in results)
    print(f"median wall {walls[len(walls) // 2]:.1f} s, median CPU {cpus[len(cpus) // 2]:.1f} s, median peak RSS {peaks[len(peaks) // 2]:.0f} MB "
          f"over {len(results)} runs; voxels {results[0]['voxels']}")


if __name__ == "__main__":
    main()
