"""Do virtual experiments recover the simulator's category areas? (issue 34)

On the project's simulator, whose areas are known (``simulate/anatomy.py``), with a small
NRF trained on two virtual subjects of the world ``--world`` (300 stimuli each; world 0 is
the shipped demo model, another world is trained once and cached):

* faces vs others (``--per-set`` new face stimuli against as many of the other
  categories, never seen in training): Dice of the FWE-thresholded map (A > B side)
  with (a) the FFA ROI of the world's subjects (union of both, FFA-L + FFA-R) and (b) the
  *true* contrast map (the same test on the simulator's noiseless responses to the same
  images, averaged over the subjects); the distance of the map's peak near each FFA
  (within 15 mm) to the FFA centroid (mean of the subjects' blob centres);
* the localizer (face, body, scene, text, object against the rest): Dice of each
  category's label with its area (FFA, EBA, PPA, VWFA, LO);
* null splits: ``--splits`` random halves of one set of ``2 * per_set`` stimuli (all
  categories), FWE at alpha 0.05 with ``--permutations``: the share of splits with any
  voxel above threshold (nominal: 5 %).

At 2 mm and 1 mm (``--resolutions``). Prints one JSON object; ``--out`` writes it too.

    PYTHONPATH=src OMP_NUM_THREADS=2 python benchmarks/experiments_science.py --out benchmarks/results/experiments_science.json
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from napari_nrf import experiments as ex
from napari_nrf import space
from napari_nrf.simulate import anatomy
from napari_nrf.simulate.stimuli import make_stimulus_set
from napari_nrf.simulate.subjects import as_descriptors, make_subjects

AREA_OF = {"face": "FFA", "body": "EBA", "scene": "PPA", "text": "VWFA", "object": "LO"}


def world_model(seed: int, cache: Path):
    """The small NRF of world ``seed`` (the shipped demo model for 0; else trained once and cached)."""
    from napari_nrf.demo import load_demo_model, train_demo_model
    from napari_nrf.models import load_model

    if seed == 0:
        return load_demo_model()[0]
    path = cache / f"experiments_world{seed}.safetensors"
    if not path.exists():
        train_demo_model(path, seed=seed)
    return load_model(path)


def dice(a: np.ndarray, b: np.ndarray) -> float:
    s = int(a.sum()) + int(b.sum())
    return 2.0 * int((a & b).sum()) / s if s else float("nan")


def area_mask(subjects, grid, mask, name) -> np.ndarray:
    """Union over subjects of the ROI labels ``name``-L/-R at the extent's voxels."""
    xyz = grid.coords(mask)
    want = [k for k, v in anatomy.roi_names().items() if v.split("-")[0] == name]
    out = np.zeros(grid.shape, bool)
    hit = np.zeros(len(xyz), bool)
    for s in subjects:
        hit |= np.isin(s.roi_labels(xyz), want)
    out[mask] = hit
    return out


def centroids(subjects, name):
    """{hemisphere: mean blob centre (3,) mm over subjects} of area ``name``."""
    out = {}
    for s in subjects:
        for n, h, c, *_ in s._blobs:
            if n == name:
                out.setdefault(h, []).append(c)
    return {h: np.mean(v, 0) for h, v in out.items()}


def peak_distances(t, grid, centres, radius=15.0):
    """Per hemisphere: distance (mm) from the centroid to the largest t within ``radius`` mm."""
    xyz = grid.coords()
    tv = np.nan_to_num(t, nan=-np.inf).reshape(-1)
    out = {}
    for h, c in centres.items():
        near = np.linalg.norm(xyz - c, axis=1) <= radius
        if not np.isfinite(tv[near]).any():
            continue
        i = np.flatnonzero(near)[np.argmax(tv[near])]
        out[h] = float(np.linalg.norm(xyz[i] - c))
    return out


def run(args) -> dict:
    cache = Path(args.cache)
    cache.mkdir(parents=True, exist_ok=True)
    model = world_model(args.world, cache)
    subjects = make_subjects(2, seed=args.world)
    n = args.per_set
    st = make_stimulus_set(np.arange(50000, 50000 + 12 * n), seed=args.world)
    cats = st.categories
    rng = np.random.default_rng(args.world)
    idx = {c: np.flatnonzero(cats == c) for c in AREA_OF}
    faces = idx["face"][:n]
    others = rng.permutation(np.flatnonzero(cats != "face"))[:n]
    loc_idx = {c: idx[c][:n] for c in AREA_OF}
    null_idx = rng.permutation(len(cats))[: 2 * n]
    desc = as_descriptors(st)
    out = {"world": args.world, "per_set": n, "min_effect": args.min_effect, "permutations": args.permutations, "splits": args.splits,
           "n_faces": int(len(faces)), "n_others": int(len(others)),
           "localizer_sizes": {c: int(len(v)) for c, v in loc_idx.items()}}
    for res in args.resolutions:
        t0 = time.perf_counter()
        grid = space.Grid.mni(res)
        mask, ext = ex.resolve_extent(model, grid, "data")
        xyz = grid.coords(mask)
        everything = np.unique(np.concatenate([faces, others, null_idx, *loc_idx.values()]))
        pos = {int(i): k for k, i in enumerate(everything)}
        pred = ex.predict_sets(model, [list(st.images[everything])], grid, mask)[0]
        truth = np.mean([s.truth(desc[everything], xyz) for s in subjects], 0)

        def rows(ids):
            return [pos[int(i)] for i in ids]

        r = {"voxels_tested": int(mask.sum()), "extent": ext}
        kw = dict(n_permutations=args.permutations, alpha=args.alpha, seed=args.world)
        c_model = ex.contrast_values(pred[rows(faces)], pred[rows(others)], grid, mask, tail="greater", **kw)
        c_true = ex.contrast_values(truth[rows(faces)], truth[rows(others)], grid, mask, tail="greater", **kw)
        ffa = area_mask(subjects, grid, mask, "FFA")
        sig = c_model.significant
        dist = peak_distances(c_model.t, grid, centroids(subjects, "FFA"))
        # The cluster(s) of the map that hold the FFA peaks: the "area" a user would read off.
        from scipy import ndimage

        lab, _ = ndimage.label(sig, structure=np.ones((3, 3, 3)))
        keep = set()
        for c in centroids(subjects, "FFA").values():
            near = np.linalg.norm(grid.coords() - c, axis=1).reshape(grid.shape) <= 6.0
            keep |= set(np.unique(lab[near & sig]).tolist())
        ffa_clusters = np.isin(lab, sorted(keep - {0}))
        r["faces_vs_others"] = {
            "threshold_t": c_model.threshold, "significant_voxels": int(sig.sum()),
            "true_map_voxels": int(c_true.significant.sum()), "ffa_roi_voxels": int(ffa.sum()),
            "dice_map_vs_true_map": dice(sig, c_true.significant),
            "dice_map_vs_ffa_roi": dice(sig, ffa),
            "dice_ffa_clusters_vs_ffa_roi": dice(ffa_clusters, ffa),
            "peak_to_ffa_centre_mm": dist,
            "global_peak_mm": grid.index_to_world(np.unravel_index(np.nanargmax(c_model.t), grid.shape)).tolist(),
            "global_peak_region": ex.default_atlas(grid).lookup(
                grid.index_to_world(np.unravel_index(np.nanargmax(c_model.t), grid.shape))[None])[0],
        }
        loc = ex.localizer_values({c: pred[rows(v)] for c, v in loc_idx.items()}, grid, mask,
                                  min_effect=args.min_effect, n_permutations=args.permutations, alpha=args.alpha,
                                  seed=args.world)
        # The same localizer on the simulator's noiseless responses: the true preferred-category map.
        loc_true = ex.localizer_values({c: truth[rows(v)] for c, v in loc_idx.items()}, grid, mask,
                                       min_effect=args.min_effect, n_permutations=args.permutations,
                                       alpha=args.alpha, seed=args.world)
        r["localizer"] = {}
        for i, c in enumerate(loc.categories):
            area = area_mask(subjects, grid, mask, AREA_OF[c])
            lab_c = loc.labels == i + 1
            true_c = loc_true.labels == i + 1
            sig_c = loc.contrasts[c].significant
            r["localizer"][c] = {"area": AREA_OF[c], "label_voxels": int(lab_c.sum()), "area_voxels": int(area.sum()),
                                 "dice_label_vs_area": dice(lab_c, area),
                                 "true_label_voxels": int(true_c.sum()),
                                 "dice_label_vs_true_label": dice(lab_c, true_c),
                                 "dice_true_label_vs_area": dice(true_c, area),
                                 "dice_significant_vs_area": dice(sig_c, area),
                                 "peak_to_centre_mm": peak_distances(loc.contrasts[c].t, grid,
                                                                     centroids(subjects, AREA_OF[c]))}
        if res in args.null_resolutions:
            hits = 0
            ynull = pred[rows(null_idx)]
            for k in range(args.splits):
                perm = np.random.default_rng([args.world, k, 99]).permutation(len(ynull))
                h = len(ynull) // 2
                cn = ex.contrast_values(ynull[perm[:h]], ynull[perm[h:]], grid, mask, n_permutations=args.permutations,
                                        alpha=args.alpha, seed=k)
                hits += bool(cn.significant.any())
            r["null_splits"] = {"splits": args.splits, "images": int(len(ynull)), "splits_with_any_voxel": hits,
                                "rate": hits / args.splits}
        r["seconds"] = round(time.perf_counter() - t0, 1)
        out[f"{res:g}mm"] = r
        print(json.dumps({f"{res:g}mm": r}), flush=True)
    return out


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--world", type=int, default=0, help="simulator seed (0: the shipped demo model's world)")
    p.add_argument("--per-set", type=int, default=50, help="images per set (default: %(default)s)")
    p.add_argument("--permutations", type=int, default=1000, help="(default: %(default)s)")
    p.add_argument("--alpha", type=float, default=0.05, help="(default: %(default)s)")
    p.add_argument("--min-effect", type=float, default=0.2,
                   help="the localizer's smallest effect for a label, data units (default: %(default)s)")
    p.add_argument("--splits", type=int, default=100, help="null splits (default: %(default)s)")
    p.add_argument("--resolutions", type=float, nargs="+", default=[2.0, 1.0], help="(default: %(default)s)")
    p.add_argument("--null-resolutions", type=float, nargs="*", default=[2.0, 1.0],
                   help="resolutions of the null splits; none: skip them (default: %(default)s)")
    p.add_argument("--cache", default=str(Path.home() / ".cache" / "napari-nrf" / "bench"),
                   help="where a trained world model is kept (default: %(default)s)")
    p.add_argument("--out", help="JSON file for the results")
    args = p.parse_args(argv)
    res = run(args)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(res, indent=2) + "\n")
    return res


if __name__ == "__main__":
    main()
