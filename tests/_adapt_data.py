"""Tiny new-subject adaptation inputs for the job tests: two NRF bases (tiny preset,
efficientnet-lite0 features, random weights) and a 20-image new subject (14 train, 6 val)."""

import numpy as np

from napari_nrf.data.responseset import ResponseSet


def make_adaptation_files(d):
    """Write base0/base1.safetensors and new.h5 under folder ``d``; returns (bases, data)."""
    from napari_nrf.models.nrf import build_nrf

    bases = [build_nrf("efficientnet-lite0", "tiny", seed=k).save(d / f"base{k}.safetensors") for k in range(2)]
    rng = np.random.default_rng(0)
    n, v = 20, 60
    imgs = rng.integers(0, 255, (n, 32, 32, 3), dtype=np.uint8)
    coords = rng.uniform(-50, 50, (v, 3)).astype(np.float32)
    bright = imgs.mean((1, 2, 3)) / 255.0
    resp = (bright[:, None] - 0.5) * np.cos(coords[:, 0] / 20)[None] + 0.1 * rng.standard_normal((n, v))
    split = np.zeros(n, np.uint8)
    split[14:] = 1
    rs = ResponseSet(responses=resp.astype(np.float32), coords=coords, split=split, images=imgs, subject="sub-new")
    return bases, rs.save(d / "new.h5")
