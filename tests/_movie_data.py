"""Small synthetic film data for the movie tests (no simulator, no backbone).

Chunks are (F, S, S, 3) uint8 of a bright square moving over a grey background; the
response of voxel v at TR t reads the chunk's mean brightness in four quadrants and its
motion energy through fixed random weights, plus noise.
"""

import numpy as np

from napari_nrf.data.responseset import ResponseSet


def synth_chunks(n, frames=4, size=16, seed=0):
    rng = np.random.default_rng(seed)
    out = np.full((n, frames, size, size, 3), 60, np.uint8)
    pos = rng.uniform(0, size - 6, (n, 2))
    vel = rng.normal(0, 1.0, (n, 2))
    lum = rng.uniform(120, 255, n)
    for i in range(n):
        for k in range(frames):
            y, x = np.clip(pos[i] + vel[i] * k, 0, size - 6).astype(int)
            out[i, k, y:y + 6, x:x + 6] = int(lum[i])
    return out


def chunk_signal(chunks):
    c = chunks.astype(np.float32) / 255.0
    h = c.shape[2] // 2
    q = np.stack([c[:, :, :h, :h].mean((1, 2, 3, 4)), c[:, :, :h, h:].mean((1, 2, 3, 4)),
                  c[:, :, h:, :h].mean((1, 2, 3, 4)), c[:, :, h:, h:].mean((1, 2, 3, 4)),
                  np.abs(np.diff(c, axis=1)).mean((1, 2, 3, 4))], 1)
    return (q - q.mean(0)) / (q.std(0) + 1e-6)


def synth_movie_set(coords, n=24, frames=4, size=16, noise=0.3, seed=0, subject="sub-01", n_val=6, n_test=4):
    """(ResponseSet whose images are chunks (n, F, S, S, 3) uint8, {"frames": chunks})."""
    chunks = synth_chunks(n, frames, size, seed)
    rng = np.random.default_rng(seed + 3)
    w = rng.standard_normal((5, len(coords)))
    truth = chunk_signal(chunks) @ w
    truth = ((truth - truth.mean(0)) / (truth.std(0) + 1e-6)).astype(np.float32)
    resp = (truth + noise * rng.standard_normal(truth.shape)).astype(np.float32)
    split = np.zeros(n, np.uint8)
    split[n - n_val - n_test:n - n_test] = 1
    split[n - n_test:] = 2
    rs = ResponseSet(responses=resp, coords=coords, split=split, images=chunks, truth=truth, subject=subject)
    return rs, {"frames": chunks}
