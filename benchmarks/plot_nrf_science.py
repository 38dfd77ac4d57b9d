"""Figure of the NRF science experiment (claims A and B) from its saved results.

Reads the ``summary`` of the result files of ``benchmarks/nrf_vs_ridge.py`` (per
training size, mean / sd / n over subjects of the median voxel Pearson r; by default the
issue-22 re-run with the library's default NRF schedule and the fair baselines:
``nrf_vs_ridge_i22_merged.json`` (claim A: NRF, robust spatial ridge, fWRF) plus
``nrf_vs_ridge_i22_shuffle.json`` (claim B, global and ROI-wise shuffles); where several
files have a value, the one over more subjects wins, then the first file's) and draws r
against the number of training images for NRF, the baselines and the NRF trained on
globally (and, where a file has it, ROI-wise) shuffled coordinates, against the noisy test
data and against the noiseless truth.

    .venv/bin/python benchmarks/plot_nrf_science.py [--results FILE ...] [--out docs/images/nrf_vs_ridge.png]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
ALL_IMAGES = 900  # nrf_vs_ridge.py's training pool per subject ("all")
SERIES = (("nrf", "NRF", "C0", "-"), ("ridge", "ridge (robust, spatial PCA columns)", "C1", "-"),
          ("fwrf", "fWRF", "C3", "-"),
          ("nrf_shuffled", "NRF, coordinates shuffled globally", "C2", ":"),
          ("nrf_shuffled_roi", "NRF, shuffled within each ROI", "C4", "--"))


def plot(summary: dict, out: Path) -> Path:
    """Two panels (noisy test data, noiseless truth); returns ``out``."""
    sizes = sorted(summary, key=int)
    x = list(range(len(sizes)))  # evenly spaced: 800 and 900 would collide on a log axis
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.6), sharex=True)
    for ax, target, title in zip(axes, ("r_noisy", "r_truth"), ("against the noisy test data",
                                                                 "against the noiseless truth")):
        for key, label, colour, style in SERIES:
            pts = [(xi, summary[s][f"{key}.{target}"]) for xi, s in zip(x, sizes) if f"{key}.{target}" in summary[s]]
            if not pts:
                continue
            xs = [p[0] for p in pts]
            mean = [p[1][0] for p in pts]
            sd = [p[1][1] for p in pts]
            ax.errorbar(xs, mean, yerr=sd, color=colour, ls=style, marker="o", ms=4, capsize=3, label=label)
        ax.set_xticks(x)
        ax.set_xticklabels([f"{s} (all)" if int(s) == ALL_IMAGES else s for s in sizes])
        ax.set_xlabel("training images per subject")
        ax.set_title(title, fontsize=10)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("median voxel Pearson r\n(mean ± sd over 3 subjects)")
    axes[0].legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    res = ROOT / "benchmarks" / "results"
    ap.add_argument("--results", nargs="+", default=[str(res / "nrf_vs_ridge_i22_merged.json"),
                                                     str(res / "nrf_vs_ridge_i22_shuffle.json")])
    ap.add_argument("--out", default=str(ROOT / "docs" / "images" / "nrf_vs_ridge.png"))
    args = ap.parse_args(argv)
    summary: dict = {}
    for f in args.results:
        for size, vals in json.loads(Path(f).read_text())["summary"].items():
            for k, v in vals.items():
                # (mean, sd, n subjects): the value over more subjects wins, then the first file's
                have = summary.setdefault(size, {}).get(k)
                if have is None or v[2] > have[2]:
                    summary[size][k] = v
    print(plot(summary, Path(args.out)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
