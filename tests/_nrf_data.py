"""Small synthetic response sets for the NRF / training / query tests (no backbone needed).

Features are random arrays with efficientnet-lite0's names and shapes; the true response
at MNI point x to image i is a smooth field: ``sum_k (w_k . emb_i) * exp(-|x - c_k|^2 / 2 s^2)``.
"""

import numpy as np

from napari_nrf.data.responseset import ResponseSet
from napari_nrf.space import Grid, brain_mask

SHAPES = {"s8": (784, 40), "s16": (196, 112), "s32": (49, 320), "embedding": (1280,)}


def fake_features(n, seed=0, rank=6):
    """Random features of ``n`` images that share a low-rank latent (so they generalise)."""
    rng = np.random.default_rng(seed)
    z = rng.standard_normal((n, rank))
    fixed = np.random.default_rng(12345)  # the same "backbone" for every set
    out = {}
    for k, s in SHAPES.items():
        m = fixed.standard_normal((rank, int(np.prod(s))))
        out[k] = ((z @ m) + 0.3 * rng.standard_normal((n, int(np.prod(s))))).reshape((n,) + s).astype(np.float32)
    return out


def brain_coords(step=6.0, max_n=None, seed=0):
    g = Grid.from_extent(step)
    xyz = g.coords(brain_mask(g))
    if max_n is not None and len(xyz) > max_n:
        xyz = xyz[np.sort(np.random.default_rng(seed).choice(len(xyz), max_n, replace=False))]
    return xyz


def true_field(emb, xyz, k=6, width=25.0, seed=1):
    """Noiseless responses (n_images, V) of a smooth field driven by the embedding."""
    rng = np.random.default_rng(seed)
    centres = rng.uniform([-60, -90, -40], [60, 60, 70], size=(k, 3))
    w = rng.standard_normal((k, emb.shape[1])) / np.sqrt(emb.shape[1])
    amp = emb @ w.T                                              # (n, k)
    d2 = ((xyz[:, None, :] - centres[None]) ** 2).sum(-1)        # (V, k)
    bumps = np.exp(-d2 / (2 * width ** 2))
    return (amp @ bumps.T).astype(np.float32)


def synth_set(n=60, step=8.0, max_n=400, noise=0.3, seed=0, subject="sub-01", n_val=10, n_test=10):
    """(ResponseSet, features) with random 16x16 images (features are given, not computed)."""
    feats = fake_features(n, seed)
    xyz = brain_coords(step, max_n, seed)
    truth = true_field(feats["embedding"], xyz)
    truth = (truth - truth.mean(0)) / (truth.std(0) + 1e-6)
    rng = np.random.default_rng(seed + 7)
    resp = (truth + noise * rng.standard_normal(truth.shape)).astype(np.float32)
    split = np.zeros(n, np.uint8)
    split[n - n_val - n_test:n - n_test] = 1
    split[n - n_test:] = 2
    imgs = rng.integers(0, 255, (n, 16, 16, 3), dtype=np.uint8)
    rs = ResponseSet(responses=resp, coords=xyz, split=split, images=imgs, truth=truth, subject=subject,
                     roi=(xyz[:, 1] < -40).astype(np.int32) + 1, roi_names={1: "anterior", 2: "posterior"},
                     noise_ceiling=np.full(len(xyz), 80.0, np.float32))
    return rs, feats
