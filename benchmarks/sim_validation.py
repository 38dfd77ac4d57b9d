"""Experiment: does the simulator do what docs/simulator.md says? Prints a results table.

    .venv/bin/python benchmarks/sim_validation.py [--subjects 2 --images 300 --voxels 15000] [--tiny]

Measures, per subject: the noise ceiling against the configured SNR and against the
realised r^2 between responses and truth; face-vs-scene selectivity of FFA and the
reverse in PPA (truth, in units of the response sd); hemifield lateralisation of V1;
the correlation of neighbouring (<= 1 voxel) versus distant (> 40 mm) voxels.
"""

from __future__ import annotations

import argparse
import json

import numpy as np

from napari_nrf.simulate import make_parametric, simulate, subject_from_meta


def _labels(rs, name):
    want = [k for k, v in rs.roi_names.items() if v.split("-")[0] == name or v == name]
    return np.isin(rs.roi, want)


def validate(rs) -> dict:
    subj = subject_from_meta(rs.meta)
    out = {"subject": rs.subject, "voxels": rs.n_voxels, "images": rs.n_images,
           "resolution_mm": rs.meta["grid_zooms"][0], "snr": rs.meta["simulator"]["snr"]}
    nc = rs.noise_ceiling
    got = np.sqrt(nc / np.maximum(100 - nc, 1e-6) / rs.meta["n_reps"])
    want = subj.ncsnr(rs.coords)
    out["median_nc_pct"] = float(np.median(nc))
    out["ncsnr_median_ratio"] = float(np.median(got) / np.median(want))
    out["ncsnr_corr"] = float(np.corrcoef(got, want)[0, 1])
    x, t = rs.responses - rs.responses.mean(0), rs.truth - rs.truth.mean(0)
    r = (x * t).sum(0) / (np.linalg.norm(x, axis=0) * np.linalg.norm(t, axis=0) + 1e-9)
    out["mean_r2_resp_truth"] = float(np.mean(r ** 2))
    out["mean_nc_over_100"] = float(np.mean(nc) / 100)
    cats = np.array(rs.meta["categories"])
    sd = rs.responses.std()
    for area, a, b in (("FFA", "face", "scene"), ("PPA", "scene", "face"), ("VWFA", "text", "scene"),
                       ("EBA", "body", "scene")):
        m = _labels(rs, area)
        if m.any() and (cats == a).any() and (cats == b).any():
            out[f"{area}_{a}_minus_{b}"] = float((rs.truth[cats == a][:, m].mean() - rs.truth[cats == b][:, m].mean()) / sd)
    left = np.stack([make_parametric("checkerboard", side="left", cycles=c) for c in (4, 8)])
    right = np.stack([make_parametric("checkerboard", side="right", cycles=c) for c in (4, 8)])
    v1r, v1l = _labels(rs, "V1-R"), _labels(rs, "V1-L")
    d = subj.truth(left, rs.coords).mean(0) - subj.truth(right, rs.coords).mean(0)
    out["V1R_left_minus_right"] = float(d[v1r].mean())
    out["V1L_left_minus_right"] = float(d[v1l].mean())
    rng = np.random.default_rng(0)
    idx = rng.choice(rs.n_voxels, min(500, rs.n_voxels), replace=False)
    z = x / (np.linalg.norm(x, axis=0) + 1e-9)
    c = z[:, idx].T @ z
    dist = np.linalg.norm(rs.coords[idx, None] - rs.coords[None], axis=-1)
    res = rs.meta["grid_zooms"][0]
    out["corr_neighbours"] = float(c[(dist > 0) & (dist <= res * 1.01)].mean())
    out["corr_far_40mm"] = float(c[dist > 40].mean())
    return out


def main(argv=None):
    p = argparse.ArgumentParser()
    p.add_argument("--subjects", type=int, default=2)
    p.add_argument("--images", type=int, default=300)
    p.add_argument("--voxels", type=int, default=15000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--tiny", action="store_true")
    p.add_argument("--json", default=None)
    a = p.parse_args(argv)
    if a.tiny:
        a.images, a.voxels = 30, 3000
    rs = simulate(n_subjects=a.subjects, n_images=a.images, seed=a.seed, max_voxels=a.voxels)
    rows = [validate(r) for r in rs]
    keys = list(rows[0])
    print("| " + " | ".join(keys) + " |")
    print("|" + "---|" * len(keys))
    for row in rows:
        print("| " + " | ".join(f"{row[k]:.3g}" if isinstance(row[k], float) else str(row[k]) for k in keys) + " |")
    if a.json:
        with open(a.json, "w") as f:
            json.dump(rows, f, indent=1)
    return rows


if __name__ == "__main__":
    main()
