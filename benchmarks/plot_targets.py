"""Figure of docs/benchmarks.md's "At a glance" table: each target's current measurement
as a share of its limit (below 1 = met), on a log scale.

    .venv/bin/python benchmarks/plot_targets.py [--out docs/images/benchmark_targets.png]

The numbers are the current ones of docs/benchmarks.md (copied here: update both together).
For "at least" targets (the engine's speed-up) the share is target / measured.
"""

from __future__ import annotations

import argparse
from pathlib import Path

# (label, measured, limit) in the limit's units; "at least" targets as (label, target, measured)
AT_MOST = [
    ("demo whole brain 2 mm, cold (s)", 0.54, 1.0),
    ("0.5 mm whole brain, memory above output (GB)", 0.341, 2.0),
    ("k-means 300k x 256 (s)", 0.87, 10.0),
    ("simulate 4 x 1000 x 15k, wall (s)", 43.6, 60.0),
    ("simulate, memory summed (GB)", 3.315, 4.0),
    ("drop -> visible, 2D (s)", 0.83, 2.0),
    ("drop -> visible, 3D (s)", 1.30, 2.0),
    ("top-k of 1,000 images (s)", 2.43, 10.0),
    ("demo, first run (s)", 15.6, 60.0),
    ("demo, later runs (s)", 8.9, 15.0),
    ("NSD import peak (GB)", 0.69, 3.50),
    ("rest-map .nii, wall (s)", 24.4, 60.0),
    ("rest-map .nii.gz, memory (GB)", 1.94, 2.0),
    ("Rest2Visual 2 mm prediction (s)", 0.069, 1.0),
    ("Rest2Visual drop -> first layer (s)", 1.26, 2.0),
    ("movie 600-TR prediction (s)", 22.7, 60.0),
    ("movie import peak (GB)", 0.857, 3.0),
]
AT_LEAST = [
    ("query engine speed-up, demo (x)", 3.0, 5.45),
    ("query engine speed-up, paper size (x)", 3.0, 1.04),
]


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=str(Path(__file__).resolve().parents[1] / "docs" / "images" /
                                          "benchmark_targets.png"))
    args = ap.parse_args(argv)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [(lab, m / lim) for lab, m, lim in AT_MOST] + [(lab, t / m) for lab, t, m in AT_LEAST]
    rows.sort(key=lambda r: r[1])
    fig, ax = plt.subplots(figsize=(7.5, 0.32 * len(rows) + 1.2), dpi=120)
    colors = ["#2a9d8f" if v <= 1 else "#e76f51" for _, v in rows]
    ax.barh([r[0] for r in rows], [r[1] for r in rows], color=colors)
    ax.axvline(1.0, color="k", lw=1)
    ax.set_xscale("log")
    ax.set_xlabel("measured / limit (below 1: target met)")
    ax.set_title("napari-nrf benchmark targets (2-core CPU machine)", fontsize=10)
    ax.tick_params(axis="y", labelsize=8)
    fig.tight_layout()
    fig.savefig(args.out)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
