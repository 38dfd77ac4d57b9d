"""Do the no-flag defaults of ``train-universal``, ``transfer`` and ``finetune`` train?

Each recipe's default settings (what the CLI runs with no schedule flags: the presets of
:mod:`napari_nrf.settings` and, for ``train-universal``, the CLI's model defaults) against
a small grid of schedules (learning rate x schedule length), on the virtual subjects of
``benchmarks/nrf_vs_ridge.py`` (``napari_nrf.simulate``, seed 0; 1000 visual-cortex voxels
per subject by default; the 100 shared stimuli are every subject's test images):

* ``universal``: a demo-size Universal encoder trained jointly on sub-01 and sub-02 with
  ``--images`` training images each (:func:`napari_nrf.recipes.train_universal`), with the
  model and fit settings that ``napari-nrf train-universal`` parses with no flags (E 64, C
  32, dropout 0.1, the embeddings' start and lr multiplier of :mod:`napari_nrf.settings`,
  the step schedule of ``UNIVERSAL_FIT``), then grid points (lr x steps, the former
  default "old"). Score: the median over the two subjects of their test scores.
* ``transfer``: sub-03 added to the default-trained encoder from each of
  ``--transfer-sizes`` images (:func:`napari_nrf.recipes.transfer_subject`, init "random",
  only its embeddings learn; ``napari-nrf transfer``'s no-flag settings), then grid points;
  "old" is the former default on the former encoder. Score: sub-03's test scores.
* ``finetune``: one NRF base (the NRF defaults, trained on sub-01's ``--images`` images)
  adapted to sub-03 by :func:`napari_nrf.finetune.finetune_ensemble` (K = 1: the schedule
  of the finetuning is what is measured) at each of ``--finetune-sizes``.

Scores on the test images: median voxel r against the noiseless truth (``r_truth``) and
the measured responses (``r_noisy``), median voxel R^2, calibration slope (measured
regressed on predicted, pooled over voxels) and MSE. The issue 22 target: each default
within 0.02 r (truth) of the best grid schedule.

Fits run in this order and the JSON is written after each: the defaults, the old defaults,
then universal and transfer grid points alternately. Run (results and the exact commands
in docs/results.md, "Training defaults and units"):
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

# train-universal / transfer grid points: (lr, optimiser steps[, embeddings' init std, their
# lr multiplier]); unset = the default's. "old" is the former no-flag default (20 / 30
# one-pass epochs validated each epoch, patience 5; embeddings std 0.1 at the shared lr).
# The default itself is what the CLI parses with no flags (cli/universal.py), run first.
UNIVERSAL_GRID = ("old", (1e-3, 260, 0.1, 1.0), (1e-3, 400), (3e-3, 800), (1e-3, 1600), (3e-4, 800))
TRANSFER_GRID = ("old", (1e-4, 400), (3e-3, 400), (1e-3, 1600))
FINETUNE_GRID = ((1e-4, 4.0), (3e-4, 1.0), (3e-4, 4.0), (1e-3, 1.0), (1e-3, 4.0))


def gtext(g) -> str:
    return g if isinstance(g, str) else ":".join(f"{v:g}" for v in g)


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
    ap.add_argument("--transfer-sizes", default="20,200", help="the new subject's training images, e.g. 20,200")
    ap.add_argument("--finetune-sizes", default="20,200")
    ap.add_argument("--max-voxels", type=int, default=1000)
    ap.add_argument("--universal-grid", help="old and/or lr:steps[:init_std:lr_scale] entries, e.g. "
                    "old,3e-3:800,1e-3:800:0.1:1 (default %s)" % ",".join(gtext(g) for g in UNIVERSAL_GRID))
    ap.add_argument("--transfer-grid", help="old and/or lr:steps entries (default %s)"
                    % ",".join(gtext(g) for g in TRANSFER_GRID))
    ap.add_argument("--finetune-grid", help="lr:multiple-of-100-steps pairs (default %s)"
                    % ",".join(f"{lr:g}:{m:g}" for lr, m in FINETUNE_GRID))
    ap.add_argument("--only-default", action="store_true", help="run each part's default only (no grid)")
    ap.add_argument("--grid-only", action="store_true",
                    help="universal part: skip the default fit (run it in another invocation; not with transfer)")
    ap.add_argument("--tiny", action="store_true")
    args = ap.parse_args(argv)

    def pairs(text, default):
        return default if not text else tuple(p if p == "old" else tuple(float(v) for v in p.split(":"))
                                              for p in text.split(","))
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    cfg = dict(FULL, max_voxels=args.max_voxels)
    ugrid, tgrid, fgrid = (pairs(args.universal_grid, UNIVERSAL_GRID), pairs(args.transfer_grid, TRANSFER_GRID),
                           pairs(args.finetune_grid, FINETUNE_GRID))
    if args.only_default:
        ugrid, tgrid, fgrid = (), (), ()
    sizes = [int(v) for v in args.finetune_sizes.split(",")]
    tsizes = [int(v) for v in args.transfer_sizes.split(",")]
    fast = {}
    if args.tiny:
        cfg.update(n_images=60, n_shared=8, max_voxels=120, image_size=32)
        ugrid, tgrid, fgrid = ugrid[:1], tgrid[:1], fgrid[:1]
        args.images, tsizes, sizes = 20, [10], [10]
        fast = {"epochs": 2, "steps": None}
    log = lambda s: print(time.strftime("%H:%M:%S"), s, flush=True)  # noqa: E731
    _, sets, feats = make_data(cfg, max_voxels=cfg["max_voxels"], cache_dir=args.cache, log=log)
    parts = args.parts.split(",")
    res = {"n_voxels": [rs.n_voxels for rs in sets], "images": args.images, "transfer_sizes": tsizes,
           "finetune_sizes": sizes, "defaults": {"universal": UNIVERSAL_FIT.to_kwargs(),
                                                  "transfer": TRANSFER_FIT.to_kwargs(),
                                                  "finetune": FINETUNE_FIT.to_kwargs()}, "runs": []}
    t0 = time.perf_counter()

    def record(rec):
        res["runs"].append(rec)
        res["seconds"] = round(time.perf_counter() - t0, 1)
        write_json(res, args.out)
        log(rec)

    # What `napari-nrf train-universal` / `transfer` run with no flags: their parsed defaults.
    from napari_nrf.cli import build_parser
    from napari_nrf.cli.universal import model_config
    from napari_nrf.settings import FitSettings

    cli_u = build_parser().parse_args(["train-universal", "a.h5", "--out", "m.safetensors"])
    cli_t = build_parser().parse_args(["transfer", "m.safetensors", "b.h5", "--out", "n.safetensors"])
    ucfg, ufit = model_config(cli_u), FitSettings.from_args(cli_u).to_kwargs()
    tfit = FitSettings.from_args(cli_t).to_kwargs()
    res["defaults"].update({"universal": ufit, "universal_model": ucfg, "transfer": tfit})
    uni_sets = [with_train(sets[i], train_rows(sets[i], args.images, seed=300 + i)) for i in (0, 1)]
    shapes = {k: v.shape[1:] for k, v in feats[0].items()}
    old_fit = dict(epochs=20, steps=None, val_every=1, patience=5)  # the former UNIVERSAL_FIT
    old_cfg = {**ucfg, "embed_init_std": 0.1, "embedding_lr_scale": 1.0}

    def spe(sets_):  # optimiser steps of one epoch (one pass over the training images)
        return sum(-(-len(rs.indices("train")) // ufit["batch_images"]) for rs in sets_)

    bases = {}

    def run_universal(name, kw, mcfg):
        t = time.perf_counter()
        model, hist = train_universal(uni_sets, feature_shapes=shapes, model_config=mcfg,
                                      features=[feats[0], feats[1]], **{**ufit, **kw, **fast})
        sc = median_scores([score(model, rs, feats[i]) for i, rs in zip((0, 1), uni_sets)])
        n_spe = spe(uni_sets)
        record({"part": "universal", "n_train": args.images, "schedule": name, "fit": {**ufit, **kw},
                "model": mcfg, **sc, "epochs_run": len(hist.records), "steps_run": len(hist.records) * n_spe,
                "best_epoch": hist.best_epoch, "best_step": (hist.best_epoch + 1) * n_spe,
                "seconds": round(time.perf_counter() - t, 1)})
        return model

    new = sets[2]
    tr_sets = {n: with_train(new, train_rows(new, n, seed=302)) for n in tsizes}

    def run_transfer(n, name, base, kw):
        if base not in bases:
            return
        t = time.perf_counter()
        tr_rs = tr_sets[n]
        # transfer_subject is what the CLI's transfer runs (init "random", its defaults).
        model, hist = transfer_subject(copy.deepcopy(bases[base]), tr_rs, features=[feats[2]], **{**tfit, **kw, **fast})
        n_spe = spe([tr_rs])
        record({"part": "transfer", "n_train": n, "schedule": name, "base": base, "fit": {**tfit, **kw},
                **score(model, tr_rs, feats[2]), "epochs_run": len(hist.records),
                "steps_run": len(hist.records) * n_spe, "best_epoch": hist.best_epoch,
                "best_step": (hist.best_epoch + 1) * n_spe, "seconds": round(time.perf_counter() - t, 1)})

    uvars, tvars = [], []
    for g in (ugrid if "universal" in parts else ()):
        if g == "old":
            uvars.insert(0, ("old default: 20 one-pass epochs, std 0.1 x1", old_fit, old_cfg))
            continue
        lr, st, std, sc = (list(g) + [None, None])[:4]
        mcfg = {**ucfg, **({} if std is None else {"embed_init_std": std}),
                **({} if sc is None else {"embedding_lr_scale": sc})}
        name = f"lr {lr:g}, {int(st)} steps" + (
            "" if mcfg == ucfg else f", std {mcfg['embed_init_std']:g} x{mcfg['embedding_lr_scale']:g}")
        uvars.append((name, {"lr": lr, "steps": int(st), "epochs": None}, mcfg))
    for g in (tgrid if "transfer" in parts else ()):
        if g == "old":  # the former default: 30 one-pass epochs on the former encoder
            tvars.insert(0, ("old default: 30 one-pass epochs, old encoder", "old",
                             {"epochs": 30, "steps": None, "val_every": 1, "patience": 5}))
            continue
        tvars.append((f"lr {g[0]:g}, {int(g[1])} steps", "default", {"lr": g[0], "steps": int(g[1]), "epochs": None}))
    # Order (results are written after each fit, so a stopped run keeps the most telling ones):
    # the defaults, the old defaults, then universal and transfer grid points alternately.
    if ("universal" in parts and not args.grid_only) or "transfer" in parts:
        bases["default"] = run_universal("default", {}, ucfg)
    for n in tsizes if "transfer" in parts else ():
        run_transfer(n, "default", "default", {})
    rest_u = list(uvars)
    if rest_u and rest_u[0][0].startswith("old default"):
        bases["old"] = run_universal(*rest_u.pop(0))
    rest_t = list(tvars)
    if rest_t and rest_t[0][0].startswith("old default"):
        old_t = rest_t.pop(0)
        for n in tsizes:
            run_transfer(n, *old_t)
    for i in range(max(len(rest_u), len(rest_t))):
        if i < len(rest_u):
            run_universal(*rest_u[i])
        if i < len(rest_t):
            for n in tsizes:
                run_transfer(n, *rest_t[i])
    if "finetune" in parts:
        t = time.perf_counter()
        base = build_nrf("efficientnet-lite0", "demo", seed=0)
        fit(base, [uni_sets[0]], features=[feats[0]], seed=0, **({"steps": 6} if args.tiny else {}))
        res["base"] = {**score(base, uni_sets[0], feats[0]), "seconds": round(time.perf_counter() - t, 1)}
        new = sets[2]
        for n in sizes:
            # Default: the CLI's FINETUNE_FIT (lr 1e-3, 20 epochs of 20 steps, patience 3).
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
