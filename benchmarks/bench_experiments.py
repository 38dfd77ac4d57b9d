"""Speed of a virtual experiment (issue 34): a contrast of 2 x 50 images with the demo model
at 2 mm (extent "data"), FWE with 1,000 permutations.

Three timings: ``cold`` (the backbone encodes every image: an empty feature cache),
``warm`` (features from the on-disk cache, best of 3: the images were seen before), and
``permutations`` (the 1,000 permutations alone, on the predictions). Prints one JSON object.

    PYTHONPATH=src python benchmarks/bench_experiments.py
"""

from __future__ import annotations

import json
import platform
import tempfile
import time

import numpy as np
import torch


def main() -> dict:
    from napari_nrf import experiments as ex
    from napari_nrf.demo import load_demo_model
    from napari_nrf.features import FeatureCache
    from napari_nrf.simulate.stimuli import make_stimulus_set

    model, _ = load_demo_model()
    st = make_stimulus_set(np.arange(70000, 70400), seed=0)
    a = list(st.images[st.categories == "face"][:50])
    b = list(st.images[st.categories != "face"][:50])
    cache = FeatureCache(tempfile.mkdtemp(prefix="nrf-bench-exp-"))
    grid = None
    t = time.perf_counter()
    res = ex.contrast(model, a, b, resolution=2.0, n_permutations=1000, feature_cache=cache)
    cold = time.perf_counter() - t
    warm = []
    for _ in range(3):
        t = time.perf_counter()
        ex.contrast(model, a, b, resolution=2.0, n_permutations=1000, feature_cache=cache)
        warm.append(time.perf_counter() - t)
    grid, mask = res.grid, res.mask
    ya = np.random.default_rng(0).standard_normal((50, int(mask.sum()))).astype(np.float32)
    yb = np.random.default_rng(1).standard_normal((50, int(mask.sum()))).astype(np.float32)
    t = time.perf_counter()
    ex.contrast_values(ya, yb, grid, mask, n_permutations=1000)
    perm = time.perf_counter() - t
    return {"images": [len(a), len(b)], "resolution_mm": 2.0, "voxels": int(mask.sum()), "permutations": 1000,
            "cold_s": round(cold, 2), "warm_s": round(min(warm), 2), "statistics_only_s": round(perm, 2),
            "torch_threads": torch.get_num_threads(), "cpu": platform.processor() or platform.machine(),
            "significant_voxels": int(res.significant.sum())}


if __name__ == "__main__":
    print(json.dumps(main()))
