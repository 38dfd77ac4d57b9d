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
   average vs a single subject.

Scores: voxelwise Pearson r over the test TRs (median over voxels), pooled over films;
"segments" = the last 20 % of the training films, "held-out film" = every TR of the last.

CPU settings (2 shared cores; the paper's in brackets): model size ``tiny`` (channels 4, 8,
4, 8, decoder 8) [paper], 4 frames per TR of 32 x 32 px [32 of 112 x 112], 300 voxels
[4,609], Adam lr 1e-3 for 8 epochs [1e-4, 11], no perceptual term (``perceptual="none"``,
so D = 0.35 (1 - SSIM) + 0.30 TV) [VGG16 blocks].

Run (about 25 min on 2 cores shared with a loaded machine):
    OMP_NUM_THREADS=2 .venv/bin/python benchmarks/movie_science.py --out benchmarks/results/movie_science.json
Tiny (tests): NRF_EXAMPLE_TINY=1 or --tiny.
"""

from __future__ import annotations

import argparse
import json
import os
import time

import numpy as np

FULL = dict(n_subjects=3, n_films=3, n_trs=100, frames_per_tr=4, size=32, max_voxels=300, epochs=8,
            delays=(2, 3, 4, 5, 6), seeds=(0, 1, 2), ridge="efficientnet-lite0")
TINY = dict(n_subjects=2, n_films=2, n_trs=30, frames_per_tr=4, size=32, max_voxels=60, epochs=1,
            delays=(3, 4), seeds=(0,), ridge="pixels")


def _med(rep, part="pooled"):
    p = rep.get(part)
    return None if p is None else round(float(p["median_r"]), 4)


def run(tiny: bool = False, out_dir=None, log=print) -> dict:
    import torch

    from napari_nrf.movie.evaluate import evaluate_movie, fir_ridge
    from napari_nrf.recipes import train_movie
    from napari_nrf.simulate.movies import simulate_movies

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

    # F. FIR ridge baseline (group and a single subject)
    cache = {}
    fr = fir_ridge(g, features=cfg["ridge"], feature_cache=cache)
    sub = sims["sub-01"]
    fr1 = fir_ridge(sub, features=cfg["ridge"], feature_cache=cache)
    res["F_fir_ridge"] = {"features": cfg["ridge"], "group": {p: _med(fr, p) for p in ("pooled", "segments",
                                                                                      "held_out_film")},
                          "single_subject": {p: _med(fr1, p) for p in ("pooled", "segments", "held_out_film")}}
    log(f"F {res['F_fir_ridge']}")
    res["seconds"] = round(time.perf_counter() - t0, 1)
    return res


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default=None, help="JSON report")
    ap.add_argument("--tiny", action="store_true")
    args = ap.parse_args(argv)
    tiny = args.tiny or os.environ.get("NRF_EXAMPLE_TINY") == "1"
    res = run(tiny=tiny)
    text = json.dumps(res, indent=2)
    if args.out:
        from pathlib import Path

        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(text)
    print(text)


if __name__ == "__main__":
    main()
