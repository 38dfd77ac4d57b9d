"""Before/after check of the query engine: the same timings for whichever napari-nrf is
first on ``PYTHONPATH``, so two checkouts can be compared at equal machine load.

Best of 7 ``QueryEngine.points`` calls (demo model, 100k points; paper model, 512 points)
and best of 5 whole-brain 2 mm volumes (demo model, grid's point state cached), on random
features. Run each version in its own process, alternately, e.g.:

    for v in /path/to/old /path/to/new; do
        PYTHONPATH=$v/src .venv/bin/python benchmarks/bench_query_ab.py; done
"""

from __future__ import annotations

import json
import time

import numpy as np

from napari_nrf import space
from napari_nrf.models.nrf import build_nrf
from napari_nrf.query import QueryEngine


def _features(model):
    import torch

    g = torch.Generator().manual_seed(0)
    out = {name: torch.randn(1, p, c, generator=g) for name, p, c, _ in model.token_maps}
    if model.embedding:
        out[model.embedding[0]] = torch.randn(1, model.embedding[1], generator=g)
    return out


def _best(fn, n: int) -> float:
    ts = []
    for _ in range(n):
        t = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t)
    return min(ts)


def main() -> dict:
    out = {}
    for name, model, n in (("demo_points_per_s", build_nrf("efficientnet-lite0", "demo"), 100000),
                           ("paper_points_per_s", build_nrf("clip-vit-b16", "paper"), 512)):
        feats = _features(model)
        xyz = np.random.default_rng(0).uniform(-70, 70, (n, 3)).astype(np.float32)
        eng = QueryEngine(model, device="cpu")
        eng.points(feats, xyz)
        out[name] = n / _best(lambda: eng.points(feats, xyz), 7)
    model = build_nrf("efficientnet-lite0", "demo")
    feats, eng, grid = _features(model), QueryEngine(model, device="cpu"), space.Grid.mni(2.0)
    eng.volume(feats, grid, mask="brain")
    out["whole_brain_2mm_cached_s"] = _best(lambda: eng.volume(feats, grid, mask="brain"), 5)
    return out


if __name__ == "__main__":
    print(json.dumps(main()))
