"""Science experiment: the movie encoder-decoder on virtual movies (seed 003).

Claims checked on :func:`napari_nrf.simulate.movies.simulate_movies` (group average of 3
subjects, 3 films of 100 TR at TR 1.3 s, the last film held out; SPM HRF peaking at 4 TR):

A. a delay sweep (2-6 TR) of the encoder-decoder peaks at the simulated delay (4 TR);
B. SNR-selected voxels (top 30 %, the paper's selection) are predicted better than all voxels
   (each model trained on its voxels; median r over its voxels);
C. the held-out film is predicted worse than the held-out final segments of the other films;
D. in the motion area (hMT) the chunk model beats a middle-frame model (the same network fed
   each TR's middle frame 4 times), since the simulation has a motion drive there;
E. encoder-decoder (w 0.5) vs encoder alone (w 1) over 3 seeds (the paper: 0.202 vs 0.139);
F. both against FIR ridge on TR-averaged frame features (efficientnet-lite0 embedding of 4
   frames per TR + 4 x 4 motion energy) with delays 1-4 TR, and FIR ridge on the group
   average vs a single subject;
G. static image kinds on each TR's middle frame with the delay (4 TR): the NRF and the
   Universal encoder on the group average, and the Universal encoder jointly over the single
   subjects (scored on sub-01, next to F's single-subject ridge); their recipes' default
   settings, their backbone efficientnet-lite0 (:mod:`napari_nrf.movie.baselines`).

Scores: voxelwise Pearson r over the test TRs (median over voxels), pooled over films;
"segments" = the last 20 % of the training films, "held-out film" = every TR of the last.

CPU settings (2 shared cores; the paper's in brackets): model size ``tiny`` (channels 4, 8,
4, 8, decoder 8) [paper], 4 frames per TR of 32 x 32 px [32 of 112 x 112], 300 voxels
[4,609], Adam lr 1e-3 for 8 epochs [1e-4, 11], no perceptual term (``perceptual="none"``,
so D = 0.35 (1 - SSIM) + 0.30 TV) [VGG16 blocks].

Run (about 25 min on 2 cores shared with a loaded machine):
    OMP_NUM_THREADS=2 .venv/bin/python benchmarks/movie_science.py --out benchmarks/results/movie_science.json
One part alone (the simulation is the same, seed 0): --only G (or a list: --only A,F).
Tiny (tests): NRF_EXAMPLE_TINY=1 or --tiny.
"""

from __future__ import annotations

import argparse
import json
import os
import time

import numpy as np

FULL = dict(n_subjects=3, n_films=3, n_trs=100, frames_per_tr=4, size=32, max_voxels=300, epochs=8,
            delays=(2, 3, 4, 5, 6), seeds=(0, 1, 2), ridge="efficientnet-lite0", static_steps=None)
TINY = dict(n_subjects=2, n_films=2, n_trs=30, frames_per_tr=4, size=32, max_voxels=60, epochs=1,
            delays=(3, 4), seeds=(0,), ridge="pixels", static_steps=3)
PARTS = "ABCDEFG"


def _med(rep, part="pooled"):
    p = rep.get(part)
    return None if p is None else round(float(p["median_r"]), 4)


def run(tiny: bool = False, out_dir=None, log=print, only=None) -> dict:
    """The claims of the module doc; ``only``: the parts to run (letters, default all; B-E
    need A's models, so A runs with them)."""
    import torch

    from napari_nrf.recipes import train_movie
    from napari_nrf.simulate.movies import simulate_movies

    parts = set(PARTS if only is None else str(only).upper().replace(",", ""))
    if parts - set(PARTS):
        raise ValueError(f"unknown parts {sorted(parts - set(PARTS))}; choose from {PARTS}")
    cfg = TINY if tiny else FULL
    t0 = time.perf_counter()
    sims = simulate_movies(out_dir, n_subjects=cfg["n_subjects"], n_films=cfg["n_films"], n_trs=cfg["n_trs"],
                           frames_per_tr=cfg["frames_per_tr"], size=cfg["size"], max_voxels=cfg["max_voxels"],
                           seed=0)
    g = sims["group"]
    log(f"simulated in {time.perf_counter() - t0:.0f} s: {g.n_voxels} voxels, delay {g.meta['delay_tr']} TR")
    res = {"settings": {k: (list(v) if isinstance(v, tuple) else v) for k, v in cfg.items()},
           "simulated_delay_tr": g.meta["delay_tr"], "torch_threads": torch.get_num_threads()}

    def train(seed=0, **kw):
        t = time.perf_counter()
        m, h = train_movie(g, size="tiny", epochs=cfg["epochs"], lr=1e-3, seed=seed, **kw)
        return m, time.perf_counter() - t

    if parts & set("ABCDEF"):
        res.update(_movie_parts(cfg, g, sims, parts, train, log))
    if "G" in parts:
        res["G_static"] = _static_part(cfg, g, sims, log)
    res["parts"] = "".join(sorted(parts))
    res["seconds"] = round(time.perf_counter() - t0, 1)
    return res


def _static_part(cfg, g, sims, log) -> dict:
    """G: the NRF and the Universal encoder on each TR's middle frame, delay 4 TR."""
    from napari_nrf.features import FeatureCache
    from napari_nrf.movie.baselines import static_baseline

    d = 4
    cache = FeatureCache()
    kw = {} if cfg["static_steps"] is None else {"steps": cfg["static_steps"]}
    out = {"delay_tr": d, "settings": "the recipes' defaults" if not kw else kw}
    for kind in ("nrf", "universal"):
        rep = static_baseline(g, kind, d, feature_cache=cache, **kw)
        out[f"{kind}_group"] = {p: _med(rep, p) for p in ("pooled", "segments", "held_out_film")}
        out[f"{kind}_group"].update({"pooled_median_r2": round(rep["pooled"]["median_r2"], 4),
                                     "pooled_calibration_slope": round(rep["pooled"]["calibration_slope"], 3),
                                     "best_epoch": rep["best_epoch"], "seconds": rep["seconds"]})
        log(f"G static {kind} (group): {out[f'{kind}_group']}")
    subs = [sims[k] for k in sorted(sims) if k.startswith("sub-")]
    rep = static_baseline(subs, "universal", d, feature_cache=cache, **kw)
    out["universal_joint_subjects_on_sub01"] = {p: _med(rep, p) for p in ("pooled", "segments", "held_out_film")}
    out["universal_joint_subjects_on_sub01"].update({"n_subjects": len(subs), "seconds": rep["seconds"],
                                                     "pooled_calibration_slope":
                                                         round(rep["pooled"]["calibration_slope"], 3)})
    log(f"G static universal (joint over {len(subs)} subjects, on sub-01): {out['universal_joint_subjects_on_sub01']}")
    return out


def _movie_parts(cfg, g, sims, parts, train, log) -> dict:
    """Parts A-F (A-E together: A's models serve B-E)."""
    res = {}
    if parts & set("ABCDE"):
        res.update(_parts_a_to_e(cfg, g, train, log))
    if "F" in parts:
        res["F_fir_ridge"] = _fir_part(cfg, g, sims, log)
    return res


def _parts_a_to_e(cfg, g, train, log) -> dict:
    from napari_nrf.movie.evaluate import evaluate_movie

    res = {}
    # A. delay sweep (encoder-decoder, seed 0)
    sweep, models = {}, {}
    for d in cfg["delays"]:
        m, sec = train(delay=d)
        rep = evaluate_movie(m, g, n_perm=0, return_r=True)
        sweep[d] = _med(rep)
        models[d] = (m, rep)
        log(f"A delay {d} TR: pooled median r {sweep[d]} ({sec:.0f} s)")
    res["A_delay_sweep"] = {"median_r": {str(k): v for k, v in sweep.items()},
                            "peak": int(max(sweep, key=lambda k: sweep[k]))}
    d0 = 4 if 4 in models else cfg["delays"][-1]
    m4, rep4 = models[d0]

    # B. SNR-selected vs all voxels
    k = max(1, int(round(0.3 * g.n_voxels)))
    top = np.sort(np.argsort(-g.snr, kind="stable")[:k])
    ms, _ = train(delay=d0, voxels=top)
    rep_s = evaluate_movie(ms, g, n_perm=0, voxels=top)
    res["B_snr"] = {"selected_top30": _med(rep_s), "all": _med(rep4), "n_selected": int(k), "n_all": g.n_voxels,
                    "all_model_on_selected_voxels": round(float(np.nanmedian(rep4["r"][top])), 4)}
    log(f"B SNR-selected {res['B_snr']}")

    # C. held-out film vs held-out segments (the delay-4 encoder-decoder)
    res["C_heldout"] = {"held_out_film": _med(rep4, "held_out_film"), "segments": _med(rep4, "segments")}
    log(f"C {res['C_heldout']}")
    from napari_nrf.movie.evaluate import decoder_saliency

    sal = decoder_saliency(m4, g)["by_roi"]
    res["saliency_by_roi_top20"] = {k_: round(float(v), 3) for k_, v in list(sal.items())[:6]}
    log(f"saliency {res['saliency_by_roi_top20']}")

    # D. chunk vs middle-frame model in hMT
    mst, _ = train(delay=d0, still=True)
    rep_st = evaluate_movie(mst, g, n_perm=0, still=True, return_r=True)
    names = g.roi_names
    mt = np.isin(g.roi, [k_ for k_, v in names.items() if v.startswith("hMT")])
    res["D_motion"] = {"n_hMT_voxels": int(mt.sum()),
                       "chunk_hMT": round(float(np.nanmedian(rep4["r"][mt])), 4) if mt.any() else None,
                       "middle_frame_hMT": round(float(np.nanmedian(rep_st["r"][mt])), 4) if mt.any() else None,
                       "chunk_all": _med(rep4), "middle_frame_all": _med(rep_st)}
    log(f"D {res['D_motion']}")

    # E. encoder-decoder vs encoder alone over seeds
    ed, eo = [], []
    for s in cfg["seeds"]:
        me = models[d0][0] if s == 0 else train(delay=d0, seed=s)[0]
        ed.append(_med(rep4) if s == 0 else _med(evaluate_movie(me, g, n_perm=0)))
        mo, _ = train(delay=d0, seed=s, w=1.0)
        eo.append(_med(evaluate_movie(mo, g, n_perm=0)))
        log(f"E seed {s}: enc-dec {ed[-1]}, encoder alone {eo[-1]}")
    res["E_encdec_vs_enc"] = {"encoder_decoder": ed, "encoder_alone": eo,
                              "mean_sd": {"encoder_decoder": [float(np.mean(ed)), float(np.std(ed))],
                                          "encoder_alone": [float(np.mean(eo)), float(np.std(eo))]},
                              "ssim_predicted": round(float(rep4.get("ssim_predicted", float("nan"))), 4),
                              "ssim_measured": round(float(rep4.get("ssim_measured", float("nan"))), 4)}

    return res


def _fir_part(cfg, g, sims, log) -> dict:
    """F. FIR ridge baseline (group and a single subject)."""
    from napari_nrf.movie.evaluate import fir_ridge

    cache = {}
    fr = fir_ridge(g, features=cfg["ridge"], feature_cache=cache)
    sub = sims["sub-01"]
    fr1 = fir_ridge(sub, features=cfg["ridge"], feature_cache=cache)
    out = {"features": cfg["ridge"], "group": {p: _med(fr, p) for p in ("pooled", "segments", "held_out_film")},
           "single_subject": {p: _med(fr1, p) for p in ("pooled", "segments", "held_out_film")}}
    log(f"F {out}")
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default=None, help="JSON report")
    ap.add_argument("--tiny", action="store_true")
    ap.add_argument("--only", default=None, help=f"parts to run, letters of {PARTS} (default all), e.g. G or A,F")
    args = ap.parse_args(argv)
    tiny = args.tiny or os.environ.get("NRF_EXAMPLE_TINY") == "1"
    res = run(tiny=tiny, only=args.only)
    text = json.dumps(res, indent=2)
    if args.out:
        from pathlib import Path

        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(text)
    print(text)


if __name__ == "__main__":
    main()
