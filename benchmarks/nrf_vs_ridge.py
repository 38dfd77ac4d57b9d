"""Science experiment: NRF against a voxelwise ridge baseline on the project's virtual subjects.

Claims checked (seed 000):

A. data efficiency: median voxel Pearson of NRF and ridge at 20, 200, 800 and all
   training images, against the noisy test responses and against the noiseless truth
   (mean and spread over subjects);
B. local smoothness: shuffling the voxel <-> coordinate pairing (one permutation per
   subject, the same for every image, train and test) hurts NRF, most at low data; ridge
   is voxelwise and therefore unaffected. Opt-in ``--shuffle-kind roi`` (or ``global,roi``)
   adds the paper's second variant, permuting only within each ROI (``rs.roi``), keys
   ``nrf_shuffled_roi``/``ridge_shuffled_roi``; the paper finds global shuffling hurts most;
C. resolution: an NRF trained on ~2 mm samples and queried at 1 mm is closer to the 1 mm
   truth than trilinear upsampling of its own 2 mm predictions.

Data: ``napari_nrf.simulate`` (docs/simulator.md). ``make_subjects(3, seed=0)`` gives
sub-01 (2.0 mm grid), sub-02 (1.8 mm), sub-03 (2.0 mm), each grid with its own origin
offset. ``simulate`` shows each subject 1100 stimuli x 3 repeats: the 100 shared stimuli
are the test split, 100 of its own the validation split, 900 its training pool ("all").
Claims A/B use each subject's 2000 visual-cortex voxels (most inside an area first) and
fit one NRF and one ridge per subject and size. Claim C uses every grey-matter voxel of
V1 and V2 (``roi=["V1", "V2"]``) and an NRF trained on the union of the three subjects'
voxels (offset 2 / 1.8 mm grids; one continuous field in MNI space) and, for comparison,
one trained on sub-01 alone; both are queried on a 1 mm grid and on sub-01's own 2 mm grid
(trilinearly upsampled to 1 mm) and scored against sub-01's truth at 1 mm
(``truth_at``). ``fine_structure`` measures how much of the 1 mm truth trilinear
upsampling of the *true* 2 mm field misses (the room claim C has). The default simulator
has almost no sub-2 mm structure; ``--fine-mm 1.5`` gives every subject a shared (up to
its area displacement) fine field of 1.5 mm length in its preferences and tuning
(``VirtualSubject(fine_mm=...)``), a truth on which claim C can be tested.
``--identical-subjects`` makes an idealised population (``VirtualSubject(identical=True)``:
subjects differ only in grid and noise draws) to see whether pooling offset grids helps
when the subjects' fields agree; ``--res-subjects 0,1,2,3,4,5`` pools more grids.

Models: frozen efficientnet-lite0 features (``FeatureCache``) for all; NRF =
``build_nrf("efficientnet-lite0", "demo")`` trained with ``train.fit`` and its default step
schedule (claims A/B and C; ``--epochs`` / ``--res-epochs`` / ``--res-old-schedule`` give the
first runs' fixed schedules); baselines (``napari_nrf.baselines``): the robust ridge with
spatial PCA columns, the pooled-only ridge and fWRF (trained by ``train.fit``'s defaults).

Run (full, on one thread; the first, fixed-schedule run took about 46 min on the shared 2-core machine: claim C 11 min, A/B
35 min; partial results are written after every fit; --sizes none / --no-resolution split it):
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/nrf_vs_ridge.py --out benchmarks/results/nrf_vs_ridge.json
Tiny (tests): NRF_EXAMPLE_TINY=1 or --tiny.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np

from napari_nrf import space
from napari_nrf.data.responseset import ResponseSet
from napari_nrf.evaluate import RidgeBaseline, calibration_slope, metrics, write_json
from napari_nrf.train import fit, predict_set, voxel_pearson

FULL = dict(n_subjects=3, n_images=1100, n_shared=100, val_fraction=0.1, max_voxels=2000, image_size=96,
            sizes=(20, 200, 800, None), shuffle_sizes=(20, None), preset="demo", epochs=20, steps=40,
            patience=4, batch_images=32, batch_voxels=500, lr=1e-3, weight_decay=0.015,
            res_roi=("V1", "V2"), res_epochs=12, res_steps=60, res_subjects=(0, 1, 2), seed=0)
TINY = dict(FULL, n_subjects=2, n_images=40, n_shared=8, max_voxels=150, image_size=32, sizes=(20,),
            shuffle_sizes=(20,), preset="tiny", epochs=2, steps=3, patience=2, batch_voxels=100,
            res_roi=("V1",), res_epochs=2, res_steps=3, res_subjects=(0, 1), res_max_voxels=300, res_box=8.0,
            fit_overrides={"steps": 6})


# ---- data -------------------------------------------------------------------------------
def make_data(cfg, roi=None, max_voxels=None, cache_dir=None, log=print):
    """Response sets of the virtual subjects and their efficientnet-lite0 features."""
    from napari_nrf.features import FeatureCache, extract_features, get_backbone
    from napari_nrf.simulate import make_subjects, simulate

    t = time.perf_counter()
    subjects = make_subjects(cfg["n_subjects"], seed=cfg["seed"], fine_mm=cfg.get("fine_mm"),
                             fine_amp=cfg.get("fine_amp", 1.0), identical=bool(cfg.get("identical", False)))
    sets = simulate(subjects=subjects, n_images=cfg["n_images"], seed=cfg["seed"], n_shared=cfg["n_shared"],
                    max_voxels=max_voxels, roi=None if roi is None else list(roi), image_size=cfg["image_size"],
                    val_fraction=cfg["val_fraction"])
    log(f"simulated {[rs.n_voxels for rs in sets]} voxels in {time.perf_counter() - t:.0f} s")
    t = time.perf_counter()
    cache = FeatureCache(cache_dir) if cache_dir else None
    bb = get_backbone("efficientnet-lite0")
    feats = [extract_features(bb, rs.images, batch_size=32, cache=cache) for rs in sets]
    log(f"features in {time.perf_counter() - t:.0f} s")
    return subjects, sets, feats


def train_rows(rs: ResponseSet, n: int | None, seed: int) -> np.ndarray:
    tr = rs.indices("train")
    if n is None or n >= len(tr):
        return tr
    return np.sort(np.random.default_rng(seed).choice(tr, n, replace=False))


def with_train(rs: ResponseSet, rows: np.ndarray) -> ResponseSet:
    """``rs`` with only ``rows`` of its train split kept as training images (a view)."""
    split = rs.split.copy()
    keep = np.zeros(rs.n_images, bool)
    keep[rows] = True
    split[(split == 0) & ~keep] = 3  # neither train, val nor test
    return ResponseSet(responses=rs.responses, coords=rs.coords, split=split, images=rs.images,
                       image_ids=rs.image_ids, truth=rs.truth, subject=rs.subject, meta=rs.meta)


def shuffled(rs: ResponseSet, seed: int) -> ResponseSet:
    """The same set with its voxels' responses reassigned to randomly permuted coordinates."""
    perm = np.random.default_rng(seed).permutation(rs.n_voxels)
    return ResponseSet(responses=np.asarray(rs.responses)[:, perm], coords=rs.coords, split=rs.split,
                       images=rs.images, image_ids=rs.image_ids, truth=np.asarray(rs.truth)[:, perm],
                       subject=rs.subject, meta=rs.meta)


def roi_shuffled(rs: ResponseSet, seed: int) -> ResponseSet:
    """The same set with its voxels' responses permuted only among voxels of the same ROI
    (``rs.roi``; voxels without a label, 0, are permuted among themselves): the paper's
    ROI-wise shuffle, which keeps each area's responses inside the area."""
    if rs.roi is None:
        raise ValueError("ROI-wise shuffling needs ROI labels per voxel (rs.roi)")
    rng = np.random.default_rng(seed)
    perm = np.arange(rs.n_voxels)
    for lab in np.unique(rs.roi):  # sorted labels: the draw order is fixed
        idx = np.flatnonzero(rs.roi == lab)
        perm[idx] = idx[rng.permutation(len(idx))]
    return ResponseSet(responses=np.asarray(rs.responses)[:, perm], coords=rs.coords, split=rs.split,
                       images=rs.images, image_ids=rs.image_ids, truth=np.asarray(rs.truth)[:, perm],
                       roi=rs.roi, roi_names=dict(rs.roi_names), subject=rs.subject, meta=rs.meta)


# ---- models -----------------------------------------------------------------------------
def fit_nrf(sets, feats, cfg, seed, epochs=None, steps=None, log=None, defaults=False):
    """One NRF; ``defaults=True`` (claims A/B): ``train.fit``'s own schedule, no arguments."""
    from napari_nrf.models.nrf import build_nrf

    model = build_nrf("efficientnet-lite0", cfg["preset"], seed=seed, **cfg.get("nrf_overrides", {}))
    n_tr = max(int((rs.split == 0).sum()) for rs in sets)
    if defaults:
        hist = fit(model, list(sets), features=list(feats), seed=seed, **cfg.get("fit_overrides", {}))
    else:
        hist = fit(model, list(sets), features=list(feats), epochs=epochs or cfg["epochs"],
                   steps_per_epoch=steps or cfg["steps"], batch_images=min(cfg["batch_images"], n_tr),
                   batch_voxels=cfg["batch_voxels"], lr=cfg["lr"], weight_decay=cfg["weight_decay"],
                   patience=cfg["patience"], seed=seed)
    info = {"epochs_run": len(hist.records), "best_epoch": hist.best_epoch, "val_r": hist.best_score}
    if log:
        log(f"    NRF fit: {info}")
    return model, info


def score(pred, rs, rows):
    m = metrics(pred, rs.get_responses(rows), truth=rs.get_truth(rows))
    return {"r_noisy": m["pearson_median"], "r_truth": m["truth_pearson_median"], "r2": m["r2_median"],
            "r2_truth": m["truth_r2_median"], "slope": m["calibration_slope"], "mse": m["mse"]}


def sub_feats(feats, rows):
    return {k: v[rows] for k, v in feats.items()}


def one_size(rs, ft, size, s, cfg, shuffle: bool, log) -> dict:
    """NRF and ridge (and their shuffled versions) for subject ``rs`` at ``size`` images.

    ``cfg["shuffle_kinds"]`` (default ``("global",)``): which shuffles run where ``shuffle``;
    "global" gives the keys ``nrf_shuffled``/``ridge_shuffled``, "roi" (within-ROI
    permutation) ``nrf_shuffled_roi``/``ridge_shuffled_roi``.
    """
    test = rs.indices("test")
    rows = train_rows(rs, size, seed=300 + s)
    rec = {"subject": rs.subject, "n_train": int(len(rows))}
    kinds = tuple(cfg.get("shuffle_kinds", ("global",))) if shuffle else ()
    variants = [("", rs)]
    if "global" in kinds:
        variants.append(("_shuffled", shuffled(rs, seed=400 + s)))
    if "roi" in kinds:
        variants.append(("_shuffled_roi", roi_shuffled(rs, seed=500 + s)))
    if kinds and cfg.get("shuffle_only"):  # the unshuffled fits are claim A's cells: --merge them in
        variants = variants[1:]
    for suffix, data in variants:
        sub = with_train(data, rows)
        t = time.perf_counter()
        if not cfg.get("skip_nrf"):
            ncfg = {**cfg, "fit_overrides": {**cfg.get("fit_overrides", {}), **cfg.get("nrf_fit", {})}}
            model, info = fit_nrf([sub], [ft], ncfg, seed=s, log=log, defaults=cfg.get("nrf_defaults", True))
            pred = predict_set(model, sub_feats(ft, test), sub)
            rec["nrf" + suffix] = {**score(pred, sub, test), **info, "seconds": round(time.perf_counter() - t, 1)}
            if cfg.get("val_gain"):
                # Diagnostic (not in the product): the outputs scaled by the calibration slope
                # fitted on the validation images, a candidate calibration step of training.
                va = data.indices("val")
                gain = calibration_slope(predict_set(model, sub_feats(ft, va), sub), data.get_responses(va))
                rec["nrf_valgain" + suffix] = {**score(pred * gain, sub, test), "gain": gain}
        # Baselines (napari_nrf.baselines): the robust ridge with spatial (PCA) columns, the
        # pooled-only ridge (the old design, robustly standardised) and fWRF, trained by
        # train.fit with its defaults like the NRF.
        for name, spatial in (("ridge", True), ("ridge_pooled", False)):
            if name in cfg.get("baselines", ("ridge", "ridge_pooled", "fwrf")):
                t = time.perf_counter()
                rb = RidgeBaseline(spatial=spatial).fit(sub_feats(ft, rows), data.get_responses(rows))
                rec[name + suffix] = {**score(rb.predict(sub_feats(ft, test)), data, test),
                                      "alpha_median": float(np.median(rb.alpha_)),
                                      "seconds": round(time.perf_counter() - t, 1)}
        if "fwrf" in cfg.get("baselines", ("ridge", "ridge_pooled", "fwrf")):
            from napari_nrf.baselines import fit_fwrf

            t = time.perf_counter()
            fw, h = fit_fwrf(sub, ft, seed=s, **cfg.get("fit_overrides", {}))
            rec["fwrf" + suffix] = {**score(predict_set(fw, sub_feats(ft, test), sub), sub, test),
                                    "best_epoch": h.best_epoch, "seconds": round(time.perf_counter() - t, 1)}
        log(f"    {rs.subject} n={len(rows)}{suffix}: " + ", ".join(
            f"{k} r_truth {v['r_truth']:.3f} slope {v['slope']:.2f}" for k, v in rec.items() if isinstance(v, dict)))
    return rec


# ---- claim C ----------------------------------------------------------------------------
def _box_grids(subject, xyz, margin=2.0):
    """Sub-box of ``subject``'s own grid around points ``xyz`` and a 1 mm grid inside it."""
    g = subject.grid
    ijk = g.world_to_index(xyz)
    lo = np.maximum(np.floor(ijk.min(0)) - 1, 0).astype(int)
    hi = np.minimum(np.ceil(ijk.max(0)) + 2, np.array(g.shape)).astype(int)
    g2 = space.Grid(tuple(int(v) for v in hi - lo), g.index_to_world(lo), g.zooms)
    a = g2.origin + margin
    b = g2.index_to_world(np.array(g2.shape) - 1) - margin
    g1 = space.Grid(tuple(int(v) for v in np.floor((b - a) / 1.0) + 1), a, (1.0, 1.0, 1.0))
    return g2, g1


def _eval_points(subject, g1, g2):
    """1 mm points of ``g1`` the subject would have as voxels (grey matter near its areas),
    inside ``g2``'s hull."""
    gm = space.gm_probability(g1).reshape(-1) >= subject.gm_threshold
    xyz = g1.coords()
    ok = gm & (subject.membership(xyz).sum(1) >= subject.voxel_threshold)
    ijk = g2.world_to_index(xyz)
    ok &= np.all((ijk >= 0) & (ijk <= np.array(g2.shape) - 1), axis=1)
    return np.flatnonzero(ok)


def _compare(pred, truth) -> dict:
    r = voxel_pearson(pred, truth)
    return {"r_truth_median": float(np.nanmedian(r)), "mse_truth": float(np.mean((pred - truth) ** 2))}


def fine_structure(subject, rs, g2, g1, pts, test) -> dict:
    """How much of the 1 mm truth trilinear upsampling of the true 2 mm field recovers."""
    from napari_nrf.simulate import truth_at

    t1 = truth_at(rs, g1.coords()[pts], rows=test)
    t2 = truth_at(rs, g2.coords(), rows=test).reshape(len(test), *g2.shape)
    up = np.stack([space.resample(v, g2, g1, order=1) for v in t2]).reshape(len(test), -1)[:, pts]
    out = {"upsampled_true_2mm": _compare(up, t1)}
    # Points where the true field has the most sub-2 mm structure (top decile of the relative
    # error of upsampling the true 2 mm field).
    rel = ((up - t1) ** 2).mean(0) / (t1.var(0) + 1e-9)
    hard = rel >= np.quantile(rel, 0.9)
    out["upsampled_true_2mm_hard_decile"] = _compare(up[:, hard], t1[:, hard])
    out["_hard"] = hard
    # Voxel-to-voxel correlation of the truth between 1 mm neighbours and 2 mm neighbours.
    tv = t1 - t1.mean(0)
    tv /= np.linalg.norm(tv, axis=0) + 1e-9
    xyz = g1.coords()[pts]
    for d in (1.0, 2.0, 3.0):
        shifted = xyz + np.array([d, 0, 0], np.float32)
        t_s = truth_at(rs, shifted, rows=test)
        t_s = t_s - t_s.mean(0)
        t_s /= np.linalg.norm(t_s, axis=0) + 1e-9
        out[f"neighbour_r_{d:g}mm_median"] = float(np.median((tv * t_s).sum(0)))
    return out, t1


def resolution_claim(cfg, cache_dir, log) -> dict:
    from napari_nrf.query import QueryEngine

    # Enough subjects for every one the multi-subject variant pools (more offset grids).
    n_sub = max(cfg["n_subjects"], max(cfg["res_subjects"]) + 1)
    subjects, sets, feats = make_data({**cfg, "n_subjects": n_sub}, roi=cfg["res_roi"],
                                      max_voxels=cfg.get("res_max_voxels"), cache_dir=cache_dir, log=log)
    tg = int(cfg.get("res_target", 0))  # the subject whose 1 mm truth scores the models
    if "res_box" in cfg:  # tiny: keep a small box of the target's voxels (and the others' in it)
        c = sets[tg].coords[0]
        keep = [np.flatnonzero(np.all(np.abs(rs.coords - c) <= cfg["res_box"], axis=1)) for rs in sets]
        sets = [rs.subset(voxels=k) if len(k) else rs.subset(voxels=np.arange(2)) for rs, k in zip(sets, keep)]
    subj, rs0, ft0 = subjects[tg], sets[tg], feats[tg]
    test = rs0.indices("test")
    g2, g1 = _box_grids(subj, rs0.coords)
    pts = _eval_points(subj, g1, g2)
    t = time.perf_counter()
    out = {"roi": list(cfg["res_roi"]), "target": rs0.subject, "n_voxels": {rs.subject: rs.n_voxels for rs in sets},
           "grid_2mm": {"shape": list(g2.shape), "origin": g2.origin.tolist(), "zooms": g2.zooms.tolist()},
           "n_points_1mm": int(len(pts))}
    fs, truth1 = fine_structure(subj, rs0, g2, g1, pts, test)
    hard = fs.pop("_hard")
    out["fine_structure"] = fs
    log(f"  fine structure ({time.perf_counter() - t:.0f} s): {json.dumps(fs)}")
    ft_test = sub_feats(ft0, test)
    variants = {"single_subject": [tg], "multi_subject": list(cfg["res_subjects"])}
    variants = {k: v for k, v in variants.items() if k in cfg.get("res_variants", variants)}
    for name, idx in variants.items():
        t = time.perf_counter()
        # Default: train.fit's own step schedule (what `napari-nrf train` runs); --res-epochs or
        # --res-old-schedule give the first runs' fixed schedule (res_epochs x res_steps).
        model, info = fit_nrf([sets[i] for i in idx], [feats[i] for i in idx], {**cfg, **cfg.get("res_model", {})},
                              seed=cfg["seed"], epochs=cfg["res_epochs"], steps=cfg["res_steps"], log=log,
                              defaults=cfg.get("res_defaults", True))
        eng = QueryEngine(model, device="cpu")
        mask1 = np.zeros(g1.n_points, bool)
        mask1[pts] = True
        v1 = eng.volume(ft_test, g1, mask=mask1.reshape(g1.shape)).reshape(len(test), -1)[:, pts]
        v2 = eng.volume(ft_test, g2)
        up = np.stack([space.resample(v, g2, g1, order=1) for v in v2]).reshape(len(test), -1)[:, pts]
        rec = {"subjects": [sets[i].subject for i in idx], **info, "nrf_1mm": _compare(v1, truth1),
               "upsampled_2mm": _compare(up, truth1),
               "hard_decile": {"nrf_1mm": _compare(v1[:, hard], truth1[:, hard]),
                               "upsampled_2mm": _compare(up[:, hard], truth1[:, hard])},
               "own_voxels_r_truth": score(predict_set(model, ft_test, rs0), rs0, test)["r_truth"],
               "seconds": round(time.perf_counter() - t, 1)}
        if cfg.get("res_detail"):  # how much sub-2 mm detail the model itself adds (1 mm query vs upsampled)
            rec["nrf_1mm_vs_upsampled"] = _compare(v1, up)
            rec["nrf_detail_var_share"] = float(((v1 - up) ** 2).mean() / (v1.var(0).mean() + 1e-12))
        out[name] = rec
        log(f"  claim C {name}: {json.dumps(rec)}")
    return out


# ---- driver -----------------------------------------------------------------------------
def run(tiny: bool = False, cache_dir=None, log=print, subject_ids=None, sizes=None, resolution: bool = True,
        out=None, overrides: dict | None = None) -> dict:
    import torch

    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    cfg = dict(TINY if tiny else FULL)
    cfg.update(overrides or {})
    if sizes is not None:
        cfg["sizes"] = tuple(sizes)
    t0 = time.perf_counter()
    res = {"config": {k: (list(v) if isinstance(v, tuple) else v) for k, v in cfg.items()}, "runs": []}

    def save():
        res["summary"] = summarise(res["runs"])
        res["seconds"] = round(time.perf_counter() - t0, 1)
        if out is not None:
            write_json(res, out)

    if cfg["sizes"]:
        subjects, sets, feats = make_data(cfg, max_voxels=cfg["max_voxels"], cache_dir=cache_dir, log=log)
        res["n_voxels"] = {rs.subject: rs.n_voxels for rs in sets}
        res["grids_mm"] = {rs.subject: s.resolution for rs, s in zip(sets, subjects)}
        res["n_train_pool"] = {rs.subject: int(len(rs.indices("train"))) for rs in sets}
        ids = range(len(sets)) if subject_ids is None else subject_ids
        for size in cfg["sizes"]:  # sizes outer: every size gets all subjects before the next one
            for s in ids:
                rec = one_size(sets[s], feats[s], size, s, cfg, size in cfg["shuffle_sizes"], log)
                res["runs"].append(rec)
                log(json.dumps(rec))
                save()
    if resolution:
        res["resolution"] = resolution_claim(cfg, cache_dir, log)
    save()
    return res


def summarise(runs: list) -> dict:
    """Mean, standard deviation and count over subjects per training size, model and target."""
    out = {}
    for n in sorted({r["n_train"] for r in runs}):
        rs = [r for r in runs if r["n_train"] == n]
        row = {}
        for model in ("nrf", "ridge", "ridge_pooled", "fwrf", "nrf_shuffled", "ridge_shuffled", "nrf_shuffled_roi",
                      "ridge_shuffled_roi"):
            vals = [r[model] for r in rs if model in r]
            for key in ("r_noisy", "r_truth", "r2", "slope", "mse") if vals else ():
                if any(key not in v for v in vals):
                    continue
                a = np.array([v[key] for v in vals])
                row[f"{model}.{key}"] = [float(a.mean()), float(a.std()), len(a)]
        out[str(n)] = row
    return out


def merge(paths) -> dict:
    """Runs of several result files combined per (subject, n_train); a later file's model
    entries replace an earlier one's (e.g. a baseline re-fitted after a fix, with the NRF
    numbers of an earlier run whose code is unchanged)."""
    runs = {}
    for p in paths:
        with open(p) as fh:
            for r in json.load(fh)["runs"]:
                runs.setdefault((r["subject"], r["n_train"]), {}).update(r)
    res = {"merged_from": list(paths), "runs": [runs[k] for k in sorted(runs, key=lambda k: (k[1], k[0]))]}
    res["summary"] = summarise(res["runs"])
    return res


def markdown(res: dict) -> str:
    """The summary as a markdown table (mean +- sd over subjects)."""
    def cell(row, key):
        if key not in row:
            return "-"
        m, sd, n = row[key]
        return f"{m:.3f} +- {sd:.3f}"

    keys = tuple(f"{m}.{k}" for m in ("nrf", "ridge", "fwrf", "ridge_pooled") for k in ("r_truth", "r_noisy", "r2", "slope"))
    head = "| train images | " + " | ".join(f"{m} {k}" for m in ("NRF", "ridge", "fWRF", "ridge pooled")
                                          for k in ("r (truth)", "r (noisy)", "R^2", "slope")) + " |"
    if any("nrf_shuffled.r_noisy" in row for row in res["summary"].values()):
        keys += ("nrf_shuffled.r_noisy", "nrf_shuffled.r_truth")
        head += " NRF shuffled r (noisy) | NRF shuffled r (truth) |"
    if any("nrf_shuffled_roi.r_noisy" in row for row in res["summary"].values()):  # only with --shuffle-kind roi
        keys += ("nrf_shuffled_roi.r_noisy", "nrf_shuffled_roi.r_truth")
        head += " NRF ROI-shuffled r (noisy) | NRF ROI-shuffled r (truth) |"
    lines = [head, "|---" * (len(keys) + 1) + "|"]
    for n, row in sorted(res["summary"].items(), key=lambda kv: int(kv[0])):
        lines.append(f"| {n} | " + " | ".join(cell(row, k) for k in keys) + " |")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tiny", action="store_true", default=os.environ.get("NRF_EXAMPLE_TINY") == "1")
    ap.add_argument("--out", default="nrf_vs_ridge.json")
    ap.add_argument("--cache", default=None, help="feature cache folder")
    ap.add_argument("--subject-ids", help="comma-separated 0-based subject indices")
    ap.add_argument("--sizes", default=None, help="training sizes, e.g. 20,200,800,all; 'none' skips A/B")
    ap.add_argument("--no-resolution", action="store_true", help="skip claim C")
    ap.add_argument("--epochs", type=int, help="claims A/B: maximum NRF epochs (default: train.fit's own "
                    "step schedule; with --epochs the old fixed schedule, %d steps an epoch)" % FULL["steps"])
    ap.add_argument("--max-voxels", type=int, help="claims A/B: voxels per subject (default %d)" % FULL["max_voxels"])
    ap.add_argument("--baselines", help="claims A/B: comma-separated of ridge,ridge_pooled,fwrf (default all)")
    ap.add_argument("--shuffle-sizes", help="sizes with the shuffle ablation (default 20,all)")
    ap.add_argument("--shuffle-only", action="store_true",
                    help="at the shuffle sizes, fit only the shuffled variants (deterministic: the unshuffled "
                         "ones equal claim A's; combine with --merge)")
    ap.add_argument("--shuffle-kind", help="comma-separated shuffles at the shuffle sizes, of global,roi "
                    "(default global; roi permutes only within each ROI)")
    ap.add_argument("--res-epochs", type=int, help="claim C: maximum NRF epochs of the old fixed schedule "
                    "(%d steps an epoch; default: train.fit's own step schedule)" % FULL["res_steps"])
    ap.add_argument("--res-old-schedule", action="store_true", help="claim C: the first runs' fixed schedule "
                    "(<= %d epochs x %d steps) instead of train.fit's defaults" % (FULL["res_epochs"], FULL["res_steps"]))
    ap.add_argument("--res-fourier-std", type=float, help="claim C: NRF Fourier-feature std (default 32)")
    ap.add_argument("--res-fourier-n", type=int, help="claim C: number of NRF Fourier features (default 32)")
    ap.add_argument("--seed", type=int, help="population seed of the simulator, also claim C's fit seed "
                                             "(default 0; another value is a replicate on new data)")
    ap.add_argument("--res-width", type=int, help="claim C: NRF MLP width (default: the demo preset's 128)")
    ap.add_argument("--res-variants", help="claim C: comma-separated, of single_subject,multi_subject")
    ap.add_argument("--res-target", type=int, help="claim C: 0-based subject whose grid and 1 mm truth score the "
                                                   "models and whom the single-subject variant trains on (default 0)")
    ap.add_argument("--fine-mm", type=float, help="simulator: add shared fine structure of this length in mm "
                    "(opt-in sub-2 mm truth; default none)")
    ap.add_argument("--fine-amp", type=float, help="simulator: strength of the --fine-mm field (default 1.0)")
    ap.add_argument("--identical-subjects", action="store_true", help="simulator: idealised population, subjects "
                    "differ only in grid and noise draws (VirtualSubject(identical=True))")
    ap.add_argument("--res-detail", action="store_true", help="claim C: also compare the model's 1 mm query "
                    "with its own upsampled 2 mm predictions (the sub-2 mm detail it adds)")
    ap.add_argument("--res-subjects", help="claim C: comma-separated 0-based subjects the multi-subject variant "
                    "pools (default 0,1,2; more simulates more subjects, 2.0 / 1.8 mm alternately)")
    ap.add_argument("--nrf-weight-decay", type=float, help="claims A/B: the NRF's AdamW weight decay (default: "
                                                            "train.fit's 0.015; the baselines keep theirs)")
    ap.add_argument("--val-gain", action="store_true", help="claims A/B, diagnostic: also score the NRF with its "
                                                           "outputs scaled by the calibration slope fitted on the "
                                                           "validation images (key nrf_valgain)")
    ap.add_argument("--skip-nrf", action="store_true", help="claims A/B: fit only the baselines (refresh them "
                    "when the NRF code is unchanged; combine with --merge)")
    ap.add_argument("--merge", help="comma-separated result files: combine their runs (later files win per model), "
                    "write --out and print the table; nothing is fitted")
    args = ap.parse_args(argv)
    if args.merge:
        res = merge(args.merge.split(","))
        write_json(res, args.out)
        print(markdown(res))
        return 0
    sizes = None
    if args.sizes:
        sizes = tuple(None if v == "all" else int(v) for v in args.sizes.split(",") if v != "none")
    ids = [int(v) for v in args.subject_ids.split(",")] if args.subject_ids else None
    over = {}
    if args.epochs:
        over["epochs"] = args.epochs
        over["nrf_defaults"] = False
    if args.max_voxels:
        over["max_voxels"] = args.max_voxels
    if args.skip_nrf:
        over["skip_nrf"] = True
    if args.nrf_weight_decay is not None:
        over["nrf_fit"] = {"weight_decay": args.nrf_weight_decay}
    if args.val_gain:
        over["val_gain"] = True
    if args.baselines:
        over["baselines"] = tuple(args.baselines.split(","))
    if args.shuffle_sizes:
        over["shuffle_sizes"] = tuple(None if v == "all" else int(v) for v in args.shuffle_sizes.split(","))
    if args.shuffle_only:
        over["shuffle_only"] = True
    if args.shuffle_kind:
        kinds = tuple(args.shuffle_kind.split(","))
        if not set(kinds) <= {"global", "roi"}:
            ap.error(f"--shuffle-kind: unknown {sorted(set(kinds) - {'global', 'roi'})}")
        over["shuffle_kinds"] = kinds
    if args.res_epochs:
        over["res_epochs"] = args.res_epochs
    if args.res_epochs or args.res_old_schedule:
        over["res_defaults"] = False
    if args.seed is not None:
        over["seed"] = args.seed
    res_nrf = {k: v for k, v in (("fourier_std", args.res_fourier_std), ("n_fourier", args.res_fourier_n),
                                 ("width", args.res_width)) if v}
    if res_nrf:
        over["res_model"] = {"nrf_overrides": res_nrf}
    if args.res_variants:
        over["res_variants"] = args.res_variants.split(",")
    if args.fine_mm:
        over["fine_mm"] = args.fine_mm
    if args.fine_amp:
        over["fine_amp"] = args.fine_amp
    if args.identical_subjects:
        over["identical"] = True
    if args.res_detail:
        over["res_detail"] = True
    if args.res_target is not None:
        over["res_target"] = args.res_target
    if args.res_subjects:
        over["res_subjects"] = tuple(int(v) for v in args.res_subjects.split(","))
    t = time.time()
    res = run(overrides=over, tiny=args.tiny, cache_dir=args.cache, sizes=sizes, subject_ids=ids, resolution=not args.no_resolution,
              log=lambda s: print(time.strftime("%H:%M:%S"), s, flush=True), out=args.out)
    print(markdown(res))
    print(f"wrote {args.out} in {time.time() - t:.0f} s", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
