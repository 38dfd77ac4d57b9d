"""Science experiment: new-subject adaptation (seed 000, Tables 2 and 3) on virtual subjects.

Design: ``napari_nrf.simulate`` makes 4 virtual subjects, each shown 1000 stimuli (100
shared test images, 810 own training and 90 own validation images; own stimuli differ
between subjects); one of them (``--held-out``, default subject 4) is the new subject, and
an NRF base is trained on each of the other three alone (270 of its training images, a CPU
budget, early-stopped on its 90 validation images). Rotating ``--held-out`` over three
subjects and ``--merge`` of the three JSON files gives mean +- sd over held-out subjects.
With 20, 200 and 800 of subject 4's training images (its validation images early-stop
every fit) we compare, on subject 4's test images (the shared stimuli, never trained on):

* scratch          a new NRF trained on the n images only;
* finetune base k  each base finetuned end to end on the n images (Table 3 rows);
* simple average   the mean of the K finetuned bases;
* finetune+ensemble the voxelwise least-squares ensemble (eq. 1-2) of the finetuned bases
                   (napari_nrf.finetune.finetune_ensemble, the library code the job runs);
* ensemble only    the same ensemble over the pretrained bases, without finetuning.

Metric: median voxel Pearson r over subject 4's voxels on its test images, against the
measured (noisy) responses and against the simulator's noiseless truth.

Schedules: every fit with its library defaults (``train.fit``'s step schedule for the bases
and scratch; :data:`napari_nrf.settings.FINETUNE_FIT` for the finetuning: what the CLI runs
with no flags); ``--old-schedule`` gives the first run's fixed schedules. Fair baselines on
the same n images: the robust spatial ridge and fWRF (``napari_nrf.baselines``). Scores
also in the data's units (median voxel R^2, calibration slope, MSE).

CPU-sized on purpose (2 shared cores): the "demo" NRF preset on efficientnet-lite0
features, 1 torch thread. Run (the issue-22 re-run, sized for a busy 2-core machine: 1000
voxels, 20, 200 and 800 images, about 40 min of one core per held-out subject; without ``--sizes`` / ``--max-voxels`` it is 2000
voxels at 20, 200 and 800 images; features are cached):

    for h in 4 1 2; do OMP_NUM_THREADS=1 .venv/bin/python benchmarks/finetune_science.py --max-voxels 1000 --held-out $h --out ft_sub0$h.json; done
    .venv/bin/python benchmarks/finetune_science.py --merge ft_sub04.json,ft_sub01.json,ft_sub02.json --out docs/results_finetune.json

Tiny (tests): ``NRF_EXAMPLE_TINY=1`` or ``--tiny``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch


def log(*a):
    print(time.strftime("%H:%M:%S"), *a, flush=True)


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", help="write the results (JSON) here")
    ap.add_argument("--tiny", action="store_true", default=os.environ.get("NRF_EXAMPLE_TINY") == "1")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--sizes", type=int, nargs="+", help="new-subject training sizes (default 20 200 800)")
    ap.add_argument("--cache", help="feature cache folder (default: $NAPARI_NRF_CACHE)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--max-voxels", type=int, help="voxels per subject (default 2000)")
    ap.add_argument("--old-schedule", action="store_true",
                    help="the fixed schedules of the first run (bases 15 x 20 steps, finetune lr 3e-4, 10 x 20 "
                         "steps); default: every fit with its library defaults (train.fit for bases and scratch, "
                         "FINETUNE_FIT for the finetuning), as the CLI runs them")
    ap.add_argument("--baselines", default="ridge,fwrf",
                    help="comma-separated fair baselines fitted on the new subject's n images: ridge, fwrf "
                         "(default both; 'none' skips)")
    ap.add_argument("--held-out", type=int, default=4,
                    help="the new subject (1-4; default 4); the bases are the other three")
    ap.add_argument("--merge", help="comma-separated result files (one per held-out subject): write mean, sd "
                                    "and per-subject values of every score to --out; trains nothing")
    args = ap.parse_args(argv)
    if args.merge:
        return merge(args.merge.split(","), args.out)
    if not 1 <= args.held_out <= 4:
        ap.error("--held-out must be 1, 2, 3 or 4")
    torch.set_num_threads(args.threads)

    from napari_nrf.features import FeatureCache
    from napari_nrf.finetune import finetune_ensemble, select_images
    from napari_nrf.models.nrf import build_nrf
    from napari_nrf.simulate import simulate
    from napari_nrf.train import fit, predict_set, set_features, voxel_pearson

    if args.tiny:
        cfg = dict(n_images=36, n_base_train=12, n_shared=6, max_voxels=120, sizes=[6, 12], base_epochs=2, ft_epochs=2, steps=3,
                   batch_images=8, batch_voxels=100, image_size=32)
    else:
        cfg = dict(n_images=1000, n_base_train=270, n_shared=100, max_voxels=2000, sizes=[20, 200, 800], base_epochs=15, ft_epochs=10, steps=20,
                   batch_images=32, batch_voxels=500, image_size=96)
    if args.sizes:
        cfg["sizes"] = list(args.sizes)
    if args.max_voxels:
        cfg["max_voxels"] = args.max_voxels
    defaults = not args.old_schedule and not args.tiny
    baselines = [] if args.baselines == "none" else args.baselines.split(",")
    preset = "tiny" if args.tiny else "demo"
    lr_scratch, lr_ft = 1e-3, 3e-4
    t_all = time.time()
    log("simulating", cfg)
    from napari_nrf.simulate import make_subjects

    # Every subject is simulated with the same image count so that their own stimuli are
    # disjoint (ids depend on the count); the bases then train on a subset (CPU budget). The
    # shared stimuli (the test split, ids 0..n_shared-1) are never trained on.
    subj = make_subjects(4, seed=args.seed)
    h = args.held_out - 1
    order = [k for k in range(4) if k != h] + [h]
    full = simulate(subjects=[subj[k] for k in order], n_images=cfg["n_images"], seed=args.seed,
                    max_voxels=cfg["max_voxels"], image_size=cfg["image_size"], n_shared=cfg["n_shared"])
    cache = FeatureCache(args.cache) if args.cache else FeatureCache()
    probe = build_nrf("efficientnet-lite0", preset, seed=0)
    sets, feats = [], []
    for j, rs in enumerate(full):
        t0 = time.time()
        f = set_features(probe, rs, cache=cache)
        f = {k: np.asarray(v, np.float32).astype(np.float16).astype(np.float32) for k, v in f.items()}
        if j < 3:  # a base: n_base_train of its training images and all its validation images
            rs, rows = select_images(rs, cfg["n_base_train"], seed=args.seed + 50)
            f = {k: v[rows] for k, v in f.items()}
        sets.append(rs)
        feats.append(f)
        log(f"features {rs.subject}: {rs.n_images} images, {rs.n_voxels} voxels, {time.time() - t0:.0f} s")

    fit_kw = dict(batch_images=cfg["batch_images"], batch_voxels=cfg["batch_voxels"], steps_per_epoch=cfg["steps"],
                  weight_decay=0.015, patience=3)
    bases, base_info = [], []
    for k in range(3):
        t0 = time.time()
        m = build_nrf("efficientnet-lite0", preset, seed=args.seed * 10 + k)
        if defaults:
            h = fit(m, [sets[k]], features=[feats[k]], seed=args.seed + k)
        else:
            h = fit(m, [sets[k]], features=[feats[k]], epochs=cfg["base_epochs"], lr=lr_scratch, seed=args.seed + k,
                    **fit_kw)
        bases.append(m)
        base_info.append({"subject": sets[k].subject, "val_score": float(h.best_score), "best_epoch": h.best_epoch,
                          "epochs_run": len(h.records), "seconds": round(time.time() - t0, 1)})
        log(f"base {sets[k].subject}: val median r {h.best_score:.3f} ({time.time() - t0:.0f} s)")

    new = sets[3]
    te = new.indices("test")
    y_te, truth_te = new.get_responses(te), new.get_truth(te)
    f_te = {k: v[te] for k, v in feats[3].items()}

    from napari_nrf.evaluate import metrics

    def score(pred):
        m = metrics(pred, y_te, truth=truth_te)
        return {"r_median": m["pearson_median"], "truth_r_median": m["truth_pearson_median"], "r2": m["r2_median"],
                "slope": m["calibration_slope"], "mse": m["mse"]}

    from napari_nrf.settings import FINETUNE_FIT, NRF_FIT

    if defaults:  # record what ran, not the old fixed schedule's numbers
        sched = {"schedule": "library defaults", "bases_scratch_fit": NRF_FIT.to_kwargs(),
                 "finetune_fit": FINETUNE_FIT.to_kwargs()}
        for k in ("base_epochs", "ft_epochs", "steps", "batch_images", "batch_voxels"):
            cfg.pop(k, None)
    else:
        sched = {"schedule": "fixed (old)", "lr_scratch": lr_scratch, "lr_finetune": lr_ft}
    results = {"config": {**cfg, "preset": preset, **sched, "baselines": baselines,
                          "seed": args.seed, "held_out": args.held_out, "new_subject": new.subject, "n_test_images": int(len(te)),
                          "n_voxels": new.n_voxels, "bases": [s.subject for s in sets[:3]]},
               "bases": base_info,
               "sizes": {}}
    for n in cfg["sizes"]:
        row = {}
        t0 = time.time()
        sub, rows = select_images(new, n, seed=args.seed)
        scratch = build_nrf("efficientnet-lite0", preset, seed=args.seed + 100)
        f_sub = {k: v[rows] for k, v in feats[3].items()}
        if defaults:
            fit(scratch, [sub], features=[f_sub], seed=args.seed)
        else:
            fit(scratch, [sub], features=[f_sub], epochs=cfg["ft_epochs"], lr=lr_scratch, seed=args.seed, **fit_kw)
        row["scratch"] = score(predict_set(scratch, f_te, new))
        tr_sub = sub.indices("train")
        if "ridge" in baselines:  # the fair baselines on the same n images (napari_nrf.baselines)
            from napari_nrf.baselines import RidgeBaseline

            rb = RidgeBaseline().fit({k: v[tr_sub] for k, v in f_sub.items()}, sub.get_responses(tr_sub))
            row["ridge"] = score(rb.predict(f_te))
        if "fwrf" in baselines:
            from napari_nrf.baselines import fit_fwrf

            fw, _ = fit_fwrf(sub, f_sub, seed=args.seed, **({"steps": 6} if args.tiny else {}))
            row["fwrf"] = score(predict_set(fw, f_te, new))
        ens0, _ = finetune_ensemble(bases, new, n_images=n, features=feats[3], finetune=False, seed=args.seed)
        row["ensemble_pretrained"] = score(predict_set(ens0, f_te, new))
        if defaults:  # FINETUNE_FIT, what `napari-nrf finetune` runs with no flags
            ens, info = finetune_ensemble(bases, new, n_images=n, features=feats[3], seed=args.seed)
        else:
            ens, info = finetune_ensemble(bases, new, n_images=n, features=feats[3], epochs=cfg["ft_epochs"], lr=lr_ft,
                                          seed=args.seed, **fit_kw)
        with torch.no_grad():
            base_pred = ens.base_predictions({k: torch.as_tensor(v) for k, v in f_te.items()}).numpy()
        for k in range(len(bases)):
            row[f"finetune_base{k + 1}"] = score(base_pred[k])
        row["simple_average"] = score(base_pred.mean(0))
        row["finetune_ensemble"] = score(predict_set(ens, f_te, new))
        # Variant (not in the paper): the same ensemble with a ridge term on the weights.
        tr = rows[sub.split == 0]
        ens.fit({k: torch.as_tensor(v[tr]) for k, v in feats[3].items()}, new.get_responses(tr), ridge=1.0)
        row["finetune_ensemble_ridge1"] = score(predict_set(ens, f_te, new))
        row["seconds"] = round(time.time() - t0, 1)
        results["sizes"][str(n)] = row
        log(f"n={n}: " + ", ".join(f"{k} {v['r_median']:.3f}" for k, v in row.items() if isinstance(v, dict)))
        if args.out:  # partial results after every size
            Path(args.out).write_text(json.dumps(results, indent=1))
    results["seconds"] = round(time.time() - t_all, 1)
    results["command"] = "python benchmarks/finetune_science.py " + " ".join(argv if argv is not None else sys.argv[1:])
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=1))
    return results


def merge(paths: list[str], out: str | None) -> dict:
    """Mean, sd (ddof 1) and per-subject values of every score over the held-out runs."""
    runs = [json.loads(Path(p).read_text()) for p in paths]
    sizes = [n for n in runs[0]["sizes"] if all(n in r["sizes"] for r in runs)]
    merged = {"config": {**runs[0]["config"], "held_out": [r["config"]["held_out"] for r in runs],
                         "new_subject": [r["config"]["new_subject"] for r in runs]},
              "sources": paths, "commands": [r.get("command") for r in runs],
              "bases": {r["config"]["new_subject"]: r["bases"] for r in runs}, "sizes": {}}
    for n in sizes:
        row = {}
        for method, v in runs[0]["sizes"][n].items():
            if not isinstance(v, dict):
                continue
            row[method] = {}
            for key in v:
                vals = np.array([r["sizes"][n][method][key] for r in runs], float)
                row[method][key] = {"mean": float(vals.mean()), "sd": float(vals.std(ddof=1)) if len(vals) > 1 else 0.0,
                                    "per_subject": vals.tolist()}
        merged["sizes"][n] = row
    if out:
        Path(out).write_text(json.dumps(merged, indent=1))
    return merged


if __name__ == "__main__":
    main()
