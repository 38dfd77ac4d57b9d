"""Rest2Visual on virtual subjects with resting state: the paper's ordering, ablations,
baselines, identification and the control population (issue 16; docs/results.md).

    PYTHONPATH=src OMP_NUM_THREADS=1 python benchmarks/rest2visual_science.py \
        --out benchmarks/results/rest2visual_science.json

Data: ``simulate_with_rest`` subjects (areas displaced by 5 mm sd), each with its own
training/validation images and a shared test set (the same images for everyone, never
trained on: the paper's unseen-stimulus setting), two resting runs of 300 volumes each
(TR 2 s) -> two PCC seed maps per subject on a 4 mm whole-brain grid. The first
``n_train`` subjects train the models; the others are unseen subjects (added to a trained
model from their rest maps alone).

Methods (predicting each subject's test maps at its voxels):
    Rest2Visual      the model (rest map + image)
    ns-stim          the same, trained with Gaussian noise in place of the image embedding
    ns-fmri          the same, trained with Gaussian noise in place of the rest map (stimulus only)
    Resting          the subject's rest map itself, the same for every image
    Random           Gaussian noise maps
    NRF              a stimulus-only NRF over the training subjects (one field, everyone alike)
    Tavor            Tavor et al. (2016) style: per training subject a linear regression over
                     voxels of the response on [1, rest, s, rest * s] with s the stimulus-only
                     (ns-fmri) prediction, coefficients averaged over subjects
    control          Rest2Visual trained and tested on a control population whose rest runs
                     come from the template layout (no individual information)
Scores (napari_nrf.mapmetrics): spatial Pearson, MAE, SSIM (7-voxel cube, true map range)
and RSA per subject, whole voxel set and V1-V5; identification accuracy on the shared
images (a subject's predicted maps against every subject's measured maps on a common
4 mm grid); within-subject map r.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from napari_nrf import mapmetrics as mm
from napari_nrf import space

FULL = dict(n_subjects=8, n_train=6, n_images=160, n_shared=32, max_voxels=3000, image_size=64, n_sessions=2,
            n_volumes=300, steps=400, batch_images=8, channels=[4, 8, 16, 16], resolution=4.0, nrf_steps=400,
            seed=0)
TINY = dict(n_subjects=3, n_train=2, n_images=14, n_shared=5, max_voxels=300, image_size=32, n_sessions=1,
            n_volumes=60, steps=3, batch_images=4, channels=[2, 4], resolution=8.0, nrf_steps=2, seed=0)


def _features(sets, cache=None):
    from napari_nrf.features import extract_features, get_backbone

    bb = get_backbone("efficientnet-lite0")
    return [{"embedding": np.asarray(extract_features(bb, rs.get_images(np.arange(rs.n_images)), cache=cache)
                                     ["embedding"], np.float32)} for rs in sets]


def _train(sets, feats, cfg, ablate="none"):
    from napari_nrf.recipes import train_rest2visual
    from napari_nrf.simulate.subjects import VISUAL_BOX

    model, hist = train_rest2visual(sets, preset="demo", feature_shapes={"embedding": (1280,)}, features=feats,
                                    extent=VISUAL_BOX, steps=cfg["steps"], batch_images=cfg["batch_images"],
                                    seed=cfg["seed"], model_config={"channels": cfg["channels"],
                                                                    "resolution": cfg["resolution"],
                                                                    "ablate": ablate})
    return model


def _predict(model, rs, feats, rows):
    from napari_nrf.rest2visual_eval import predict_maps

    torch.manual_seed(0)  # the ablations' noise inputs: the same draws for every run
    return predict_maps(model, rs, rows, feats)


def _score(sets, preds, rows_list, rows_shared):
    """Mean over subjects of the map scores, plus identification on the shared images."""
    from napari_nrf.rest2visual_eval import common_cells

    whole, roi, shared_p, shared_t = [], [], [], []
    for rs, pred, rows, rs_rows in zip(sets, preds, rows_list, rows_shared):
        true = rs.get_responses(rows)
        whole.append(mm.score_maps(pred, true, rs.coords))
        sel = mm.roi_points(rs)
        if sel.sum() >= 10:
            roi.append(mm.score_maps(pred[:, sel], true[:, sel], rs.coords[sel]))
        pos = {int(r): j for j, r in enumerate(rows)}
        idx = [pos[int(r)] for r in rs_rows]
        shared_p.append(pred[idx])
        shared_t.append(true[idx])
    out = {}
    for name, part in (("whole", whole), ("v1_v5", roi)):
        if part:
            out[name] = {k: float(np.mean([p[k] for p in part])) for k in ("pearson", "mae", "ssim", "rsa")}
            out[name]["pearson_sd"] = float(np.std([p["pearson"] for p in part]))
            out[name]["pearson_per_subject"] = [round(p["pearson"], 4) for p in part]
    if len(sets) > 1:
        P, T = common_cells(sets, shared_p), common_cells(sets, shared_t)
        out["identification"] = {k: v for k, v in mm.identification(P, T).items() if k != "matrix"}
    return out


def _tavor(train_sets, train_feats, ns_fmri, sets, feats, rows_list):
    """Tavor-style linear model: coefficients of [1, rest, s, rest*s] per training subject
    (voxels and training images as samples), averaged; s = the stimulus-only prediction."""
    def design(model, rs, f, rows):
        s = _predict(model, rs, f, rows)
        rest = space.sample_volume(rs.rest_maps.mean(0), rs.rest_grid, rs.coords)[None].repeat(len(rows), 0)
        return np.stack([np.ones_like(s), rest, s, rest * s], -1).reshape(-1, 4)

    coefs = []
    for rs, f in zip(train_sets, train_feats):
        rows = rs.indices("train")
        X = design(ns_fmri, rs, f, rows)
        y = rs.get_responses(rows).reshape(-1)
        coefs.append(np.linalg.lstsq(X, y, rcond=None)[0])
    w = np.mean(coefs, 0)
    return [(design(ns_fmri, rs, f, rows) @ w).reshape(len(rows), -1) for rs, f, rows in zip(sets, feats, rows_list)], w


def _nrf(train_sets, train_feats, cfg):
    from napari_nrf.models.nrf import build_nrf
    from napari_nrf.train import fit

    m = build_nrf("efficientnet-lite0", "demo", feature_shapes={"embedding": (1280,)}, token_maps={},
                  seed=cfg["seed"])
    fit(m, train_sets, features=train_feats, steps=cfg["nrf_steps"], seed=cfg["seed"])
    return m


def run(cfg: dict, cache=None, log=print) -> dict:
    from napari_nrf.rest2visual_eval import shared_rows
    from napari_nrf.simulate.rest import add_rest_maps, simulate_with_rest
    from napari_nrf.train import predict_set

    t0 = time.perf_counter()
    sets = simulate_with_rest(n_subjects=cfg["n_subjects"], n_images=cfg["n_images"], seed=cfg["seed"],
                              max_voxels=cfg["max_voxels"], image_size=cfg["image_size"], n_shared=cfg["n_shared"],
                              n_sessions=cfg["n_sessions"], n_volumes=cfg["n_volumes"])
    control = add_rest_maps([rs.subset() for rs in sets], n_sessions=cfg["n_sessions"], n_volumes=cfg["n_volumes"],
                            control=True)
    log(f"simulated {len(sets)} subjects with rest maps in {time.perf_counter() - t0:.0f} s")
    feats = _features(sets, cache)
    k = cfg["n_train"]
    tr_sets, tr_feats = sets[:k], feats[:k]
    rows_test = [rs.indices("test") for rs in sets]
    shared = shared_rows(sets, "test")
    groups = {"seen": list(range(k)), "unseen": list(range(k, len(sets)))}

    def scored(preds_all):
        out = {}
        for g, idx in groups.items():
            if idx:
                out[g] = _score([sets[i] for i in idx], [preds_all[i] for i in idx], [rows_test[i] for i in idx],
                                [shared[i] for i in idx])
        return out

    results, timings = {}, {}
    models = {}
    for name, ablate in (("Rest2Visual", "none"), ("ns-stim", "stimulus"), ("ns-fmri", "rest")):
        t = time.perf_counter()
        models[name] = _train(tr_sets, tr_feats, cfg, ablate)
        timings[name] = time.perf_counter() - t
        results[name] = scored([_predict(models[name], rs, f, r) for rs, f, r in zip(sets, feats, rows_test)])
        log(f"{name}: {timings[name]:.0f} s, seen r {results[name]['seen']['whole']['pearson']:.3f}")
    rng = np.random.default_rng(0)
    results["Resting"] = scored([space.sample_volume(rs.rest_maps.mean(0), rs.rest_grid, rs.coords)[None]
                                 .repeat(len(r), 0) for rs, r in zip(sets, rows_test)])
    results["Random"] = scored([rng.standard_normal((len(r), rs.n_voxels)) for rs, r in zip(sets, rows_test)])
    tav, w = _tavor(tr_sets, tr_feats, models["ns-fmri"], sets, feats, rows_test)
    results["Tavor"] = scored(tav)
    t = time.perf_counter()
    nrf = _nrf(tr_sets, tr_feats, cfg)
    timings["NRF"] = time.perf_counter() - t
    results["NRF"] = scored([predict_set(nrf, {kk: v[r] for kk, v in f.items()}, rs)
                             for rs, f, r in zip(sets, feats, rows_test)])
    t = time.perf_counter()
    cmodel = _train(control[:k], tr_feats, cfg, "none")
    timings["control"] = time.perf_counter() - t
    results["control Rest2Visual"] = scored([_predict(cmodel, rs, f, r) for rs, f, r in zip(control, feats, rows_test)])
    # the control population's own stimulus-only reference: the same ns-fmri model's maps
    results["control ns-fmri"] = results["ns-fmri"]
    log(f"done in {time.perf_counter() - t0:.0f} s")
    return {"config": cfg, "results": results, "tavor_coefficients": [float(v) for v in w],
            "train_seconds": timings, "seconds": time.perf_counter() - t0}


def table(rep: dict) -> str:
    """The docs table: method x (seen whole, seen V1-V5, unseen whole, identification)."""
    lines = ["| method | Pearson (brain) | MAE | SSIM | RSA | Pearson V1-V5 | identification (chance) | "
             "unseen subject Pearson | unseen identification |", "|---|---|---|---|---|---|---|---|---|"]
    for name, r in rep["results"].items():
        s, u = r.get("seen", {}), r.get("unseen", {})
        w, v = s.get("whole", {}), s.get("v1_v5", {})
        idt, uid = s.get("identification", {}), u.get("identification", {})
        f = lambda d, k: f"{d[k]:.3f}" if k in d else "-"  # noqa: E731
        lines.append(f"| {name} | {f(w, 'pearson')} ± {w.get('pearson_sd', 0):.3f} | {f(w, 'mae')} | {f(w, 'ssim')} | "
                     f"{f(w, 'rsa')} | {f(v, 'pearson')} | {f(idt, 'accuracy')} ({idt.get('chance', 0):.2f}) | "
                     f"{f(u.get('whole', {}), 'pearson')} | {f(uid, 'accuracy')} ({uid.get('chance', 0):.2f}) |")
    return "\n".join(lines)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--tiny", action="store_true", help="the test suite's small version")
    ap.add_argument("--out", default=None, help="JSON report")
    ap.add_argument("--steps", type=int, default=None)
    a = ap.parse_args(argv)
    cfg = dict(TINY if a.tiny else FULL)
    if a.steps:
        cfg["steps"] = a.steps
    torch.set_num_threads(max(1, torch.get_num_threads()))
    rep = run(cfg)
    print(table(rep))
    if a.out:
        from napari_nrf.errors import write_text_atomic

        write_text_atomic(Path(a.out), json.dumps(rep, indent=1))
    return rep


if __name__ == "__main__":
    main()
