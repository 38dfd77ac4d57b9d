"""Science experiment: are the default NRF's predictions in the data's units on worlds that differ?

The claim (issue 38): after training, the gain fitted on the validation split
(:mod:`napari_nrf.calibration`, applied by every consumer) puts the default NRF's
predictions in the data's units on any data set: the calibration slope against the
noiseless truth within 0.85-1.15 in every cell, with no loss of median voxel r against the
truth above 0.005 (a positive per-voxel gain cannot change a voxel's r; this checks it).

Worlds: one virtual subject of :mod:`napari_nrf.simulate` (``make_subjects(1, seed)``),
its noiseless responses (``rs.truth``) to ``n_images`` procedural stimuli, and the
measured responses replaced by ``truth + noise``, Gaussian with sd ``k`` times each
voxel's signal sd (``--noise``, default 0.5, 1, 2), on ``--voxels`` voxels (most inside a
visual area first) and ``--sizes`` training images (drawn from the subject's own images;
the validation split is the simulator's, 10 % of the own images, whatever the training
size, or ``--val`` of them, as a user with few images has; the test split the shared images). ``--amplitude A`` multiplies the truth (and so
the noise) by ``A``: responses in other units than the simulator's (percent signal
change, unnormalised betas), which a default schedule may not reach. Frozen efficientnet-lite0 features
(``--cache``: a feature cache folder).

Model and schedule: what ``napari-nrf train`` does with no flags: ``build_nrf(
"efficientnet-lite0", "demo")`` and :func:`napari_nrf.train.fit` with its defaults
(:data:`napari_nrf.settings.NRF_FIT`; the gain is fitted at fit's end). Scores on the test
split (:func:`napari_nrf.evaluate.evaluate`): median voxel r against the truth, and the
calibration slope against the truth with and without the gain.

Run (the results in docs/results.md, "Calibration on worlds that differ"):
    OMP_NUM_THREADS=2 .venv/bin/python benchmarks/calibration_science.py --sizes 200 --voxels 500 \\
        --out benchmarks/results/calibration_science.json
Tiny (tests): --tiny.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time

import numpy as np

from napari_nrf.data.responseset import ResponseSet
from napari_nrf.evaluate import evaluate, write_json
from napari_nrf.models.nrf import build_nrf
from napari_nrf.train import fit

FULL = dict(n_images=1000, n_shared=100, image_size=64, preset="demo", seed=0, fit={})
TINY = dict(FULL, n_images=60, n_shared=10, image_size=32, preset="tiny", fit={"steps": 12})


def make_world(cfg, n_voxels: int, cache_dir=None, log=print):
    """(noiseless ResponseSet, features): one virtual subject's truth and its stimuli's
    efficientnet-lite0 features (name -> (n_images, ...) float32)."""
    from napari_nrf.features import FeatureCache, extract_features, get_backbone
    from napari_nrf.simulate import make_subjects, simulate

    t = time.perf_counter()
    subjects = make_subjects(1, seed=cfg["seed"])
    rs = simulate(subjects=subjects, n_images=cfg["n_images"], seed=cfg["seed"], n_shared=cfg["n_shared"],
                  max_voxels=n_voxels, image_size=cfg["image_size"])[0]
    log(f"simulated {rs.n_images} images x {rs.n_voxels} voxels in {time.perf_counter() - t:.0f} s")
    t = time.perf_counter()
    feats = extract_features(get_backbone("efficientnet-lite0"), rs.images, batch_size=32,
                             cache=FeatureCache(cache_dir) if cache_dir else None)
    log(f"features in {time.perf_counter() - t:.0f} s")
    return rs, {k: np.asarray(v, np.float32) for k, v in feats.items()}


def noisy(rs: ResponseSet, k: float, n_train: int, seed: int, amplitude: float = 1.0,
          n_val: int | None = None) -> ResponseSet:
    """``rs`` with responses ``truth + k * sd_v * N(0, 1)`` (``sd_v`` each voxel's signal sd
    over all images; the truth times ``amplitude``) and ``n_train`` of its training images
    kept (the rest split 3: unused), and ``n_val`` of its validation images (None: all)."""
    truth = np.asarray(rs.truth, np.float32) * np.float32(amplitude)
    sd = truth.std(0, keepdims=True)
    rng = np.random.default_rng([seed, int(round(100 * k))])
    resp = (truth + k * sd * rng.standard_normal(truth.shape)).astype(np.float32)
    split = rs.split.copy()
    tr = np.flatnonzero(split == 0)
    keep = np.random.default_rng(seed).choice(tr, min(n_train, len(tr)), replace=False)
    drop = np.setdiff1d(tr, keep)
    split[drop] = 3
    va = np.flatnonzero(split == 1)
    if n_val is not None and n_val < len(va):
        split[np.setdiff1d(va, np.random.default_rng(seed + 1).choice(va, n_val, replace=False))] = 3
    return ResponseSet(responses=resp, coords=rs.coords, split=split, images=rs.images, image_ids=rs.image_ids,
                       truth=truth, subject=rs.subject, meta=rs.meta)


def run_cell(cfg, rs, feats, k: float, n_train: int, amplitude: float = 1.0, n_val=None, log=print) -> dict:
    """One fit and its scores (JSON-able)."""
    data = noisy(rs, k, n_train, cfg["seed"], amplitude, n_val)
    model = build_nrf("efficientnet-lite0", cfg["preset"], seed=cfg["seed"])
    t = time.perf_counter()
    hist = fit(model, [data], features=[feats], seed=cfg["seed"], **cfg["fit"])
    secs = time.perf_counter() - t
    rep = evaluate(model, data, features=feats, ridge=False, n_repeats=1)
    cal = hist.calibration
    out = {"noise_sd": k, "amplitude": amplitude, "n_train": int((data.split == 0).sum()), "n_val": int((data.split == 1).sum()),
           "n_test": int((data.split == 2).sum()), "n_voxels": data.n_voxels,
           "r_truth": rep["truth_pearson_median"], "slope_truth_raw": rep["truth_calibration_slope_uncalibrated"],
           "slope_truth_gain": rep["truth_calibration_slope"], "slope_data_raw": rep["calibration_slope_uncalibrated"],
           "slope_data_gain": rep["calibration_slope"], "global_gain": cal.get("global_gain"),
           "tau2": cal.get("tau2"), "fallback": bool(cal.get("fallback")), "best_epoch": hist.best_epoch,
           "steps_run": len(hist.records) * model.provenance["training"]["steps_per_epoch"], "seconds": round(secs, 1)}
    # r against the truth with the gain off (the gain is per voxel and positive: the same r)
    from napari_nrf.train import predict_set, voxel_pearson

    te = data.indices("test")
    raw = predict_set(model, {n: v[te] for n, v in feats.items()}, data, calibrated=False)
    out["r_truth_raw"] = float(np.nanmedian(voxel_pearson(raw, data.get_truth(te))))
    out["holds"] = bool(0.85 <= out["slope_truth_gain"] <= 1.15 and out["r_truth_raw"] - out["r_truth"] <= 0.005)
    log(f"amplitude {amplitude:g}, noise {k:g} x signal, {out['n_train']} train / {out['n_val']} val images, {out['n_voxels']} voxels: "
        f"r truth {out['r_truth']:.3f} (raw {out['r_truth_raw']:.3f}), slope truth {out['slope_truth_raw']:.3f} -> "
        f"{out['slope_truth_gain']:.3f} (gain {out['global_gain']}), {secs:.0f} s")
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--tiny", action="store_true", help="a seconds-long smoke run (default: off)")
    ap.add_argument("--noise", default="0.5,1,2", help="noise sd in units of each voxel's signal sd, "
                    "comma-separated (default: %(default)s)")
    ap.add_argument("--sizes", default="200", help="training images, comma-separated (default: %(default)s)")
    ap.add_argument("--voxels", default="500", help="voxels of the subject, comma-separated (default: %(default)s)")
    ap.add_argument("--amplitude", type=float, default=1.0, help="multiply the truth by this (default: %(default)s)")
    ap.add_argument("--val", type=int, default=None, help="validation images kept (default: all of the "
                    "simulator's, 10 %% of the subject's own images)")
    ap.add_argument("--cache", default=None, help="feature cache folder (default: none)")
    ap.add_argument("--out", default="calibration_science.json", help="result file (default: %(default)s)")
    args = ap.parse_args(argv)
    cfg = TINY if args.tiny else FULL
    noises = [float(x) for x in args.noise.split(",")]
    sizes = [int(x) for x in args.sizes.split(",")]
    voxels = [int(x) for x in args.voxels.split(",")]
    if args.tiny:
        sizes, voxels = [20], [100]
    res = {"command": " ".join([os.path.basename(sys.argv[0])] + (argv if argv is not None else sys.argv[1:])),
           "cpu": platform.processor() or platform.machine(), "threads": os.environ.get("OMP_NUM_THREADS"),
           "config": {k: v for k, v in cfg.items()}, "cells": []}
    for nv in voxels:
        rs, feats = make_world(cfg, nv, args.cache)
        for n in sizes:
            for k in noises:
                res["cells"].append(run_cell(cfg, rs, feats, k, n, args.amplitude, args.val))
                write_json(res, args.out)  # partial results after every fit
    held = sum(c["holds"] for c in res["cells"])
    print(f"{held}/{len(res['cells'])} cells hold (slope against the truth 0.85-1.15 with the gain, r loss <= 0.005)")
    print(json.dumps([{k: c[k] for k in ("noise_sd", "amplitude", "n_train", "n_val", "n_voxels", "r_truth", "slope_truth_raw",
                                           "slope_truth_gain", "holds")} for c in res["cells"]]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
