"""Science benchmark of the movie model on pretrained frame features (kind ``movie-features``,
the default of ``train-movie``) against the FIR ridge, over seeds and two film sets.

Data: :func:`napari_nrf.simulate.movies.simulate_movies` as ``benchmarks/movie_science.py``
(group average of 3 subjects, 3 films of 100 TR at TR 1.3 s, 4 frames per TR of 32 px,
300 voxels, the last film held out), for each seed, with the default motion (1.0) and with
more motion (2.0: faster pans and patches). Per data set:

* ``model``: the default (``train_movie_features``, encoder alone), scored by
  ``evaluate_movie`` (pooled, segments, held-out film; median r, median R^2, slope);
* ``encdec``: the same with the frame decoder (w 0.5);
* ``ridge``: the FIR ridge (efficientnet-lite0 on 4 frames per TR at 224 px + motion
  energy, delays 1-4 TR), scored on its TRs;
* with ``--claims`` (first data set only): A. the kernel's delay swept (HRF shifted by
  -2..2 TR: the peak should be at the simulated delay, shift 0 or the one matching 4 TR);
  B. SNR-selected voxels (top 30 %) trained alone vs all voxels; D. in hMT the chunk
  model vs the middle-frame model (``still``: no motion energy, no frame history).

Run (the CPU's minutes are in docs/results.md):
    OMP_NUM_THREADS=2 .venv/bin/python benchmarks/movie_features_science.py --work /tmp/mfs \\
        --seeds 0,1,2 --motions 1,2 --claims --out benchmarks/results/movie_features_science.json
``--work`` keeps the simulations and the ridge's features between runs.
"""

from __future__ import annotations

import argparse
import json
import pickle
import time
from pathlib import Path

import numpy as np

SIM = dict(n_subjects=3, n_films=3, n_trs=100, frames_per_tr=4, size=32, max_voxels=300)


def _s(rep):
    if rep is None:
        return None
    return {"median_r": round(float(rep["median_r"]), 4), "median_r2": round(float(rep["median_r2"]), 4),
            "slope": round(float(rep["calibration_slope"]), 3)}


def _parts(rep):
    return {p: _s(rep.get(p)) for p in ("pooled", "segments", "held_out_film")}


def data_set(work: Path, seed: int, motion: float, sim=SIM):
    from napari_nrf.movie import MovieDataset
    from napari_nrf.simulate.movies import simulate_movies

    d = work / f"sim_s{seed}_m{motion:g}"
    if not (d / "group.h5").exists():
        simulate_movies(d, seed=seed, motion=motion, **sim)
    return d, MovieDataset.load(d / "group.h5")


def ridge(d: Path, g, features="efficientnet-lite0"):
    from napari_nrf.movie.evaluate import fir_ridge

    rp = d / f"ridge-{features}.pkl"
    fc = pickle.loads(rp.read_bytes()) if rp.exists() else {}
    rep = fir_ridge(g, features=features, feature_cache=fc)
    rp.write_bytes(pickle.dumps(fc))
    return rep


def run_set(work, seed, motion, cache, claims=False, log=print, encdec=True, features="efficientnet-lite0",
            ridge_features="efficientnet-lite0") -> dict:
    from napari_nrf.movie.evaluate import evaluate_movie
    from napari_nrf.recipes import train_movie_features

    d, g = data_set(Path(work), seed, motion)
    cfg = {"features": features}
    out = {"seed": seed, "motion": motion}
    t = time.perf_counter()
    m, _ = train_movie_features(g, feature_cache=cache, model_config=cfg, seed=seed)
    out["train_seconds"] = round(time.perf_counter() - t, 1)
    m.frame_cache = cache  # the films' frames are cached: evaluation reads them
    rep = evaluate_movie(m, g, n_perm=0, return_r=True)
    out["model"] = _parts(rep)
    out["model_kept"] = m.provenance["training"]["kept"]
    log(f"seed {seed} motion {motion}: model {out['model']['pooled']} ({out['train_seconds']} s)")
    if encdec:
        me, _ = train_movie_features(g, feature_cache=cache, model_config=cfg, seed=seed, w=0.5)
        me.frame_cache = cache
        out["encdec"] = _parts(evaluate_movie(me, g, n_perm=0))
        log(f"  encoder-decoder {out['encdec']['pooled']}")
    t = time.perf_counter()
    out["ridge"] = _parts(ridge(d, g, ridge_features))
    log(f"  FIR ridge {out['ridge']['pooled']} ({time.perf_counter() - t:.0f} s)")
    if claims:
        out["claims"] = _claims(g, cache, cfg, seed, rep, log)
    g.close()
    return out


def _claims(g, cache, cfg, seed, rep, log) -> dict:
    from napari_nrf.movie.evaluate import evaluate_movie
    from napari_nrf.recipes import train_movie_features

    res = {}
    sweep = {}
    for sh in (-2, -1, 0, 1, 2):
        m, _ = train_movie_features(g, feature_cache=cache, model_config={**cfg, "hrf_shift": sh}, seed=seed)
        m.frame_cache = cache
        sweep[sh] = round(float(evaluate_movie(m, g, n_perm=0)["pooled"]["median_r"]), 4)
    from napari_nrf.models.movie_features import hrf_kernels

    peak0 = int(np.argmax(hrf_kernels(g.tr, 10, 1)[0]))
    res["A_kernel_delay_sweep"] = {"pooled_median_r": {str(k): v for k, v in sweep.items()},
                                   "kernel_peak_lag_tr": {str(k): peak0 + k for k in sweep},
                                   "best_peak_lag_tr": peak0 + max(sweep, key=sweep.get),
                                   "simulated_delay_tr": g.meta.get("delay_tr")}
    log(f"  A kernel delay sweep {res['A_kernel_delay_sweep']}")
    k = max(1, int(round(0.3 * g.n_voxels)))
    top = np.sort(np.argsort(-g.snr, kind="stable")[:k])
    ms, _ = train_movie_features(g, feature_cache=cache, model_config=cfg, seed=seed, voxels=top)
    ms.frame_cache = cache
    sel = evaluate_movie(ms, g, n_perm=0, voxels=top)["pooled"]["median_r"]
    res["B_snr"] = {"selected_top30": round(float(sel), 4),
                    "all": round(float(rep["pooled"]["median_r"]), 4),
                    "all_model_on_selected": round(float(np.nanmedian(rep["r"][top])), 4)}
    log(f"  B SNR {res['B_snr']}")
    mt = np.array([("hMT" in str(g.roi_names.get(int(v), ""))) for v in g.roi])
    if mt.any():
        still, _ = train_movie_features(g, feature_cache=cache, model_config=cfg, seed=seed, still=True)
        still.frame_cache = cache
        rs = evaluate_movie(still, g, n_perm=0, return_r=True, still=True)
        res["D_motion_hMT"] = {"chunk": round(float(np.nanmedian(rep["r"][mt])), 4),
                               "middle_frame": round(float(np.nanmedian(rs["r"][mt])), 4), "n_voxels": int(mt.sum())}
        log(f"  D hMT {res['D_motion_hMT']}")
    return res


def summarise(sets: list) -> dict:
    def ms(vals):
        v = np.asarray([x for x in vals if x is not None], float)
        return None if not len(v) else [round(float(v.mean()), 4), round(float(v.std()), 4)]

    out = {}
    for motion in sorted({s["motion"] for s in sets}):
        ss = [s for s in sets if s["motion"] == motion]
        row = {}
        for who in ("model", "encdec", "ridge"):
            for part in ("pooled", "segments", "held_out_film"):
                for met in ("median_r", "median_r2", "slope"):
                    vals = [(s.get(who) or {}).get(part, {}) or {} for s in ss]
                    row[f"{who}.{part}.{met}"] = ms([v.get(met) for v in vals])
        row["n_seeds"] = len(ss)
        out[f"motion {motion:g}"] = row
    return out


def main(argv=None):
    from napari_nrf.features import FeatureCache

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", required=True, help="folder for simulations, caches")
    ap.add_argument("--seeds", default="0,1,2", help="simulator seeds (default %(default)s)")
    ap.add_argument("--motions", default="1,2", help="motion of the film sets (default %(default)s)")
    ap.add_argument("--claims", action="store_true", help="claims A, B, D on the first data set")
    ap.add_argument("--no-encdec", action="store_true", help="skip the encoder-decoder")
    ap.add_argument("--out", default=None, help="JSON report (default: print only)")
    a = ap.parse_args(argv)
    work = Path(a.work)
    work.mkdir(parents=True, exist_ok=True)
    cache = FeatureCache(work / "frame-cache")
    sets, t0 = [], time.perf_counter()
    first = True
    for motion in [float(x) for x in a.motions.split(",")]:
        for seed in [int(x) for x in a.seeds.split(",")]:
            sets.append(run_set(work, seed, motion, cache, claims=a.claims and first, encdec=not a.no_encdec))
            first = False
            res = {"sim": SIM, "sets": sets, "summary": summarise(sets),
                   "seconds": round(time.perf_counter() - t0, 1)}
            if a.out:
                Path(a.out).parent.mkdir(parents=True, exist_ok=True)
                Path(a.out).write_text(json.dumps(res, indent=1))
    print(json.dumps(res["summary"], indent=1))
    return res


if __name__ == "__main__":
    main()
