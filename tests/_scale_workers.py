"""Functions the data-parallel tests run on each rank (spawned processes import them)."""

from pathlib import Path

import numpy as np

from napari_nrf.testing import save_run


def small_fit_setup(seed=0):
    """(model, response set, features) of a small, deterministic NRF fit (fake features)."""
    from _nrf_data import synth_set
    from napari_nrf.models.nrf import build_nrf

    rs, feats = synth_set(n=44, step=8.0, max_n=150, seed=seed, n_val=8, n_test=4)
    model = build_nrf("efficientnet-lite0", "tiny", feature_shapes={k: v.shape[1:] for k, v in feats.items()},
                      seed=0)
    return model, rs, feats


FIT = dict(epochs=4, batch_images=8, batch_voxels=64, lr=1e-3, seed=3, val_every=1, patience=100)


def fit_rank(out_dir, ckdir, cancel_at_step=None, epochs=None):
    """Fit on this rank; rank 0 writes the model (``model.safetensors``) and the history."""
    import torch

    from napari_nrf.train import TrainingCancelled, fit

    torch.set_num_threads(1)
    model, rs, feats = small_fit_setup()
    calls = [0]

    def cancel():
        calls[0] += 1
        return cancel_at_step is not None and calls[0] > cancel_at_step

    kw = dict(FIT, epochs=epochs or FIT["epochs"])
    try:
        hist = fit(model, [rs], features=[feats], checkpoint_dir=ckdir, cancel=cancel, device="cpu", **kw)
    except TrainingCancelled:
        return
    save_run(model, hist, out_dir)


def cache_writer(root, images_seed, n):
    """Put features of ``n`` random images into a shared FeatureCache (several processes at once)."""
    from napari_nrf.features import FeatureCache
    from napari_nrf.features.images import image_hash

    rng = np.random.default_rng(images_seed)
    cache = FeatureCache(root)
    for i in range(n):
        im = rng.integers(0, 255, (8, 8, 3), dtype=np.uint8)
        h = image_hash(im)
        cache.put("toy", [h], {"f": np.full((1, 4), float(h[:4] != "0000") + i, np.float32)})


def ddp_sequence(tmp):
    """On each of 2 ranks, in one process group: an uninterrupted fit (``two``), a fit
    cancelled in its third epoch (``ck3``, copied to ``ck4``), then ``ck4`` resumed on the
    same 2 ranks (``resumed2``). The test resumes ``ck3`` on 1 process."""
    import shutil

    from napari_nrf.distributed import barrier, is_main

    tmp = Path(tmp)
    fit_rank(tmp / "two", tmp / "ck2")
    fit_rank(tmp / "never", tmp / "ck3", cancel_at_step=10)
    if is_main():
        shutil.copytree(tmp / "ck3", tmp / "ck4")
    barrier()
    fit_rank(tmp / "resumed2", tmp / "ck4")
    universal_rank(tmp / "universal2")


def universal_rank(out_dir):
    """A tiny two-subject Universal encoder (dropout 0): a step of one subject leaves the
    other's embeddings without a gradient, on every rank."""
    import torch

    from _nrf_data import synth_set
    from napari_nrf.models.universal import UniversalEncoder
    from napari_nrf.train import fit

    torch.set_num_threads(1)
    a, fa = synth_set(n=30, step=8.0, max_n=80, seed=0, subject="sub-01", n_val=6, n_test=2)
    b, fb = synth_set(n=30, step=8.0, max_n=90, seed=1, subject="sub-02", n_val=6, n_test=2)
    model = UniversalEncoder.example({k: v.shape[1:] for k, v in fa.items()},
                                     {"sub-01": a.coords, "sub-02": b.coords}, seed=0)
    hist = fit(model, [a, b], features=[fa, fb], epochs=2, batch_images=8, batch_voxels=40, lr=1e-3, seed=2,
               val_every=1, patience=100, device="cpu")
    save_run(model, hist, out_dir)


def kind_fit(kind, out_dir):
    """Fit a tiny ``kind`` (its ``example()``) on its tiny data; rank 0 writes the model
    (napari_nrf.testing.rank_fit, the battery's two-rank check)."""
    import inspect

    from _kinds import example_kinds
    from napari_nrf.testing import rank_fit

    cls = example_kinds()[kind]
    rank_fit(kind, cls.__module__, inspect.getsourcefile(cls), out_dir)


def kinds_fits(tmp, kinds):
    """On each rank: :func:`kind_fit` of every kind in ``kinds`` into ``tmp/<kind>``."""
    for kind in kinds:
        kind_fit(kind, Path(tmp) / kind)
