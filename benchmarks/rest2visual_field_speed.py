"""How long the default Rest2Visual (preset "field") trains on this CPU: the CPU time per
optimiser step of the default fit (NRF_FIT: 32 images x 2000 voxels per step, the
efficientnet-lite0 token maps and embedding), times the default schedule of 6 subjects x
300 images (train.default_steps of their training images), next to the image-only NRF's
default on the same data (the backbone's features come on top, once per image).

    PYTHONPATH=src OMP_NUM_THREADS=1 python benchmarks/rest2visual_field_speed.py

Process CPU time (``time.process_time``) with one thread: on a shared machine it is close
to what a quiet core takes, where wall time is not. Fake features of the backbone's shapes.
"""

from __future__ import annotations

import sys
import time

import numpy as np
import torch


def main(n_subjects: int = 6, n_images: int = 300, n_voxels: int = 3000, probe_steps: int = 20) -> dict:
    sys.path.insert(0, "tests")
    from _nrf_data import SHAPES, fake_features

    from napari_nrf import space
    from napari_nrf.data.responseset import ResponseSet
    from napari_nrf.recipes import train_rest2visual
    from napari_nrf.train import default_steps

    torch.set_num_threads(1)
    rng = np.random.default_rng(0)
    g = space.Grid.mni(4.0)
    xyz = g.coords(space.brain_mask(g))
    sets, feats = [], []
    split = np.zeros(n_images, np.uint8)
    split[-60:-30] = 1
    split[-30:] = 2
    for s in range(n_subjects):
        f = fake_features(n_images, s)
        pts = xyz[rng.choice(len(xyz), n_voxels, replace=False)]
        rs = ResponseSet(responses=rng.standard_normal((n_images, n_voxels)).astype(np.float32), coords=pts,
                         split=split, images=np.zeros((n_images, 8, 8, 3), np.uint8), subject=f"sub-{s + 1:02d}")
        rs.set_rest_maps(rng.standard_normal((2,) + g.shape).astype(np.float32), g)
        sets.append(rs)
        feats.append(f)
    n_train = int(sum((rs.split == 0).sum() for rs in sets))
    steps = default_steps(n_train)
    from napari_nrf.models.nrf import build_nrf
    from napari_nrf.train import fit

    t0 = time.process_time()
    train_rest2visual(sets, preset="field", feature_shapes=SHAPES, features=feats, steps=probe_steps, patience=100000)
    per_step = (time.process_time() - t0) / probe_steps
    t0 = time.process_time()  # the image-only NRF at its default, on the same data
    fit(build_nrf("efficientnet-lite0", "demo", feature_shapes=SHAPES), sets, features=feats, steps=probe_steps,
        patience=100000)
    nrf_step = (time.process_time() - t0) / probe_steps
    out = {"n_train_images": n_train, "default_steps": steps, "cpu_s_per_step": per_step,
           "estimated_minutes": per_step * steps / 60, "nrf_cpu_s_per_step": nrf_step,
           "nrf_estimated_minutes": nrf_step * steps / 60}
    print(out)
    return out


if __name__ == "__main__":
    main()
