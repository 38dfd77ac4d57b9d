"""Do the no-flag defaults of ``train-universal``, ``transfer`` and ``finetune`` train?

Each recipe's default settings (what the CLI runs with no schedule flags: the presets of
:mod:`napari_nrf.settings` and, for ``train-universal``, the CLI's model defaults) against
a small grid of schedules (learning rate x schedule length), on the virtual subjects of
``benchmarks/nrf_vs_ridge.py`` (``napari_nrf.simulate``, seed 0; 1000 visual-cortex voxels
per subject by default; the 100 shared stimuli are every subject's test images):

* ``universal``: a demo-size Universal encoder (E 64, C 32, dropout 0.1, embedding init
  std 0.1, embedding lr scale 1: the CLI's defaults) trained jointly on sub-01 and sub-02
  with ``--images`` training images each (:func:`napari_nrf.recipes.train_universal`).
  Score: the median over the two subjects of their test scores.
* ``transfer``: sub-03 added to the default-trained encoder from ``--transfer-images``
  images (:func:`napari_nrf.recipes.transfer_subject`, init "random", only its
  embeddings learn). Score: sub-03's test scores.
* ``finetune``: one NRF base (the NRF defaults, trained on sub-01's ``--images`` images)
  adapted to sub-03 by :func:`napari_nrf.finetune.finetune_ensemble` (K = 1: the schedule
  of the finetuning is what is measured) at each of ``--finetune-sizes``.

Scores on the test images: median voxel r against the noiseless truth (``r_truth``) and
the measured responses (``r_noisy``), median voxel R^2, calibration slope (measured
regressed on predicted, pooled over voxels) and MSE. The issue 22 target: each default
within 0.02 r (truth) of the best grid schedule.

Run (results in docs/results.md, "NRF defaults and units"):
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/recipe_defaults.py --out benchmarks/results/recipe_defaults.json
"""

from __future__ import annotations

import argparse
import copy
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(__file__))

# (lr, x default schedule length); the default itself is run separately.
UNIVERSAL_GRID = ((3e-4, 1.0), (1e-3, 0.5), (1e-3, 2.0), (3e-3, 1.0))
TRANSFER_GRID = ((1e-3, 4.0), (1e-2, 1.0), (1e-2, 4.0), (3e-2, 1.0))
FINETUNE_GRID = ((1e-4, 4.0), (3e-4, 1.0), (3e-4, 4.0), (1e-3, 1.0), (1e-3, 4.0))


def score(model, rs, feats):
    from napari_nrf.evaluate import metrics
    from napari_nrf.train import predict_set

    te = rs.indices("test")
    pred = predict_set(model, {k: v[te] for k, v in feats.items()}, rs)
    m = metrics(pred, rs.get_responses(te), truth=rs.get_truth(te))
    return {"r_truth": m["truth_pearson_median"], "r_noisy": m["pearson_median"], "r2": m["r2_median"],
            "slope": m["calibration_slope"], "mse": m["mse"]}


def median_scores(recs):
    return {k: float(np.median([r[k] for r in recs])) for k in recs[0]}


def main(argv=None) -> int:
    import torch

    from napari_nrf.cli.universal import UNIVERSAL_PRESETS
    from napari_nrf.evaluate import write_json
    from napari_nrf.finetune import finetune_ensemble
    from napari_nrf.models.nrf import build_nrf
    from napari_nrf.recipes import train_universal, transfer_subject
    from napari_nrf.settings import FINETUNE_FIT, TRANSFER_FIT, UNIVERSAL_FIT
    from napari_nrf.train import fit
    from nrf_vs_ridge import FULL, make_data, train_rows, with_train

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="recipe_defaults.json")
    ap.add_argument("--cache", default=None)
    ap.add_argument("--parts", default="universal,transfer,finetune")
    ap.add_argument("--images", type=int, default=200, help="training images per subject (universal, NRF base)")
    ap.add_argument("--transfer-images", type=int, default=100)
    ap.add_argument("--finetune-sizes", default="20,200")
    ap.add_argument("--max-voxels", type=int, default=1000)
    ap.add_argument("--universal-grid", help="lr:multiple pairs, e.g. 3e-3:1,1e-3:2 (default %s)"
                    % ",".join(f"{lr:g}:{m:g}" for lr, m in UNIVERSAL_GRID))
    ap.add_argument("--transfer-grid", help="lr:multiple pairs (default %s)"
                    % ",".join(f"{lr:g}:{m:g}" for lr, m in TRANSFER_GRID))
    ap.add_argument("--finetune-grid", help="lr:multiple-of-100-steps pairs (default %s)"
                    % ",".join(f"{lr:g}:{m:g}" for lr, m in FINETUNE_GRID))
    ap.add_argument("--only-default", action="store_true", help="run each part's default only (no grid)")
    ap.add_argument("--tiny", action="store_true")
    args = ap.parse_args(argv)

    def pairs(text, default):
        return default if not text else tuple(tuple(float(v) for v in p.split(":")) for p in text.split(","))
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    cfg = dict(FULL, max_voxels=args.max_voxels)
    ugrid, tgrid, fgrid = (pairs(args.universal_grid, UNIVERSAL_GRID), pairs(args.transfer_grid, TRANSFER_GRID),
                           pairs(args.finetune_grid, FINETUNE_GRID))
    if args.only_default:
        ugrid, tgrid, fgrid = (), (), ()
    sizes = [int(v) for v in args.finetune_sizes.split(",")]
    fast = {}
    if args.tiny:
        cfg.update(n_images=60, n_shared=8, max_voxels=120, image_size=32)
        ugrid, tgrid, fgrid = ugrid[:1], tgrid[:1], fgrid[:1]
        args.images, args.transfer_images, sizes = 20, 10, [10]
        fast = {"epochs": 2}
    log = lambda s: print(time.strftime("%H:%M:%S"), s, flush=True)  # noqa: E731
    _, sets, feats = make_data(cfg, max_voxels=cfg["max_voxels"], cache_dir=args.cache, log=log)
    parts = args.parts.split(",")
    res = {"n_voxels": [rs.n_voxels for rs in sets], "images": args.images, "transfer_images": args.transfer_images,
           "finetune_sizes": sizes, "defaults": {"universal": UNIVERSAL_FIT.to_kwargs(),
                                                  "transfer": TRANSFER_FIT.to_kwargs(),
                                                  "finetune": FINETUNE_FIT.to_kwargs()}, "runs": []}
    t0 = time.perf_counter()

    def record(rec):
        res["runs"].append(rec)
        res["seconds"] = round(time.perf_counter() - t0, 1)
        write_json(res, args.out)
        log(rec)

    # The CLI's model defaults of train-universal (cli/universal.py).
    ucfg = dict(**UNIVERSAL_PRESETS["demo"], dropout=0.1, embed_init_std=0.1, embedding_lr_scale=1.0)
    uni_sets = [with_train(sets[i], train_rows(sets[i], args.images, seed=300 + i)) for i in (0, 1)]
    shapes = {k: v.shape[1:] for k, v in feats[0].items()}
    default_uni = None
    if "universal" in parts or "transfer" in parts:
        variants = [("default", {}, ucfg)] if "universal" not in parts else (
            [("default", {}, ucfg)]
            + [(f"lr{lr:g}_x{m:g}", {"lr": lr, "epochs": max(1, round(UNIVERSAL_FIT.epochs * m))}, ucfg)
               for lr, m in ugrid]
            + [("default, embeddings std 0.01 x10 lr", {}, {**ucfg, "embed_init_std": 0.01, "embedding_lr_scale": 10.0})])
        for name, kw, mcfg in variants:
            t = time.perf_counter()
            model, hist = train_universal(uni_sets, feature_shapes=shapes, model_config=mcfg,
                                          features=[feats[0], feats[1]], **{**kw, **fast})
            sc = median_scores([score(model, rs, feats[i]) for i, rs in zip((0, 1), uni_sets)])
            record({"part": "universal", "schedule": name, **kw, "model": mcfg, **sc, "epochs_run": len(hist.records),
                    "best_epoch": hist.best_epoch, "seconds": round(time.perf_counter() - t, 1)})
            if name == "default":
                default_uni = model
    if "transfer" in parts:
        new = sets[2]
        tr_rs = with_train(new, train_rows(new, args.transfer_images, seed=302))
        for name, kw in [("default", {})] + [(f"lr{lr:g}_x{m:g}", {"lr": lr, "epochs": max(1, round(TRANSFER_FIT.epochs * m))})
                                              for lr, m in tgrid]:
            t = time.perf_counter()
            # What the CLI passes: TRANSFER_FIT's settings (cli/universal.py), over UNIVERSAL_FIT.
            model, hist = transfer_subject(copy.deepcopy(default_uni), tr_rs, features=[feats[2]],
                                           **{**TRANSFER_FIT.to_kwargs(), **kw, **fast})
            record({"part": "transfer", "schedule": name, **kw, **score(model, tr_rs, feats[2]),
                    "epochs_run": len(hist.records), "best_epoch": hist.best_epoch,
                    "seconds": round(time.perf_counter() - t, 1)})
    if "finetune" in parts:
        t = time.perf_counter()
        base = build_nrf("efficientnet-lite0", "demo", seed=0)
        fit(base, [uni_sets[0]], features=[feats[0]], seed=0, **({"steps": 6} if args.tiny else {}))
        res["base"] = {**score(base, uni_sets[0], feats[0]), "seconds": round(time.perf_counter() - t, 1)}
        new = sets[2]
        for n in sizes:
            # Default: the CLI's FINETUNE_FIT (epochs 10 of one pass over the n images, lr 1e-4).
            for name, kw in [("default", {})] + [(f"lr{lr:g}_steps{int(m * 100)}", {"lr": lr, "steps": int(m * 100)})
                                                  for lr, m in fgrid]:
                t = time.perf_counter()
                fkw = {**FINETUNE_FIT.to_kwargs(), **kw, **fast}
                fkw.pop("val_every")
                ens, info = finetune_ensemble([base], new, n_images=n, features=feats[2], device="cpu", **fkw)
                h = info["histories"][0] or {}
                record({"part": "finetune", "n_train": n, "schedule": name, **kw, **score(ens, new, feats[2]),
                        "best_epoch": h.get("best_epoch") if isinstance(h, dict) else None,
                        "seconds": round(time.perf_counter() - t, 1)})
    res["seconds"] = round(time.perf_counter() - t0, 1)
    write_json(res, args.out)
    for r in res["runs"]:
        print(f"| {r['part']} | {r.get('n_train', '')} | {r['schedule']} | {r['r_truth']:.3f} | {r['r_noisy']:.3f} | "
              f"{r['r2']:.3f} | {r['slope']:.2f} | {r['mse']:.3f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
