"""Do NRF's default schedule train? The defaults against a small grid of schedules.

For each training size (default 20, 200, 800 images of one virtual subject,
``napari_nrf.simulate`` as in ``nrf_vs_ridge.py``), one NRF is fitted with **no schedule
arguments** (``train.fit`` defaults: ``default_steps``, lr 1e-3, batch 32 x 2000, early
stopping on validation R^2 / r) and one per grid schedule (learning rate x multiple of the
default step count). Scores on the 100 shared test images: median voxel r against the
noiseless truth and the measured responses, median voxel R^2, calibration slope
(measured responses regressed on predictions, pooled over voxels) and MSE.
The issue 22 target: the default within 0.02 r (truth) of the best grid schedule.

Run (results in docs/results.md, "Training defaults and units"):
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/nrf_schedule.py --out benchmarks/results/nrf_schedule.json
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(__file__))

GRID = ((3e-4, 2.0), (1e-3, 0.5), (1e-3, 2.0), (3e-3, 1.0))  # (lr, x default steps)


def main(argv=None) -> int:
    import torch

    from napari_nrf.evaluate import metrics, write_json
    from napari_nrf.models.nrf import build_nrf
    from napari_nrf.train import default_steps, fit, predict_set
    from nrf_vs_ridge import FULL, make_data, train_rows, with_train

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="nrf_schedule.json")
    ap.add_argument("--cache", default=None)
    ap.add_argument("--sizes", default="20,200,800")
    ap.add_argument("--subject", type=int, default=0)
    ap.add_argument("--max-voxels", type=int, default=2000)
    ap.add_argument("--tiny", action="store_true")
    args = ap.parse_args(argv)
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    cfg = dict(FULL, max_voxels=args.max_voxels)
    grid = GRID
    if args.tiny:
        cfg.update(n_subjects=1, n_images=60, n_shared=8, max_voxels=120, image_size=32)
        grid = GRID[:1]
    log = lambda s: print(time.strftime("%H:%M:%S"), s, flush=True)  # noqa: E731
    _, sets, feats = make_data(cfg, max_voxels=cfg["max_voxels"], cache_dir=args.cache, log=log)
    rs, ft = sets[args.subject], feats[args.subject]
    test = rs.indices("test")
    res = {"subject": rs.subject, "n_voxels": rs.n_voxels, "grid": [list(g) for g in grid], "runs": []}
    t0 = time.perf_counter()
    for size in (int(v) for v in args.sizes.split(",")):
        rows = train_rows(rs, size, seed=300 + args.subject)
        sub = with_train(rs, rows)
        base = default_steps(len(rows))
        for name, kw in [("default", {})] + [(f"lr{lr:g}_x{mult:g}", {"lr": lr, "steps": int(base * mult)})
                                             for lr, mult in grid]:
            t = time.perf_counter()
            model = build_nrf("efficientnet-lite0", "demo", seed=0)
            hist = fit(model, [sub], features=[ft], seed=0, **kw)
            pred = predict_set(model, {k: v[test] for k, v in ft.items()}, sub)
            m = metrics(pred, sub.get_responses(test), truth=sub.get_truth(test))
            rec = {"n_train": int(len(rows)), "schedule": name, **kw, "steps_cap": hist_steps(hist, kw, base),
                   "epochs_run": len(hist.records), "best_epoch": hist.best_epoch,
                   "r_truth": m["truth_pearson_median"], "r_noisy": m["pearson_median"], "r2": m["r2_median"],
                   "calibration_slope": m["calibration_slope"], "mse": m["mse"],
                   "seconds": round(time.perf_counter() - t, 1)}
            res["runs"].append(rec)
            log(json.dumps(rec))
            res["seconds"] = round(time.perf_counter() - t0, 1)
            write_json(res, args.out)
    print(markdown(res))
    return 0


def hist_steps(hist, kw, base):
    return int(kw.get("steps", base))


def markdown(res) -> str:
    lines = ["| train images | schedule | steps (cap) | epochs run | r truth | r noisy | R^2 | calibration slope | MSE |",
             "|---|---|---|---|---|---|---|---|---|"]
    for n in sorted({r["n_train"] for r in res["runs"]}):
        rows = [r for r in res["runs"] if r["n_train"] == n]
        best = max(r["r_truth"] for r in rows)
        for r in rows:
            flag = " (best)" if r["r_truth"] == best else ""
            lines.append(f"| {n} | {r['schedule']}{flag} | {r['steps_cap']} | {r['epochs_run']} | {r['r_truth']:.3f} "
                         f"| {r['r_noisy']:.3f} | {r['r2']:.3f} | {r['calibration_slope']:.2f} | {r['mse']:.3f} |")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
