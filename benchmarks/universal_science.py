"""Science experiment: the Universal encoder on virtual subjects (seed 002, sections 4 and 5).

Claims checked, on subjects of :func:`napari_nrf.simulate.simulate` (different images per
subject except the shared test images; the voxels of the planted areas V1 ... VWFA):

A. joint training on 4 subjects beats each single-subject model on that subject's test
   images (median voxel Pearson against the measured test responses);
B. transfer to a held-out 5th subject with 100 training images (only its voxel
   embeddings learn; random start as in the paper, and the nearest-voxel start
   ``init="nearest"``) beats a single-subject model trained from scratch on all of its
   training images (seed 002 section 4.4);
C. k-means of the jointly learned voxel embeddings (L2-normalised, as
   :func:`napari_nrf.analysis.cluster_embeddings`) recovers the planted areas: adjusted
   Rand index against the area labels (hemispheres merged) over all area voxels (k = 10)
   and over the voxels of the category-selective areas LO, hMT, EBA, FFA, PPA, VWFA
   (k = 6). The same clustering of the simulator's noiseless response profiles over the
   shared test images is the reference (the areas are not all functionally distinct:
   V1, V2 and V3 differ mostly by pRF size, and retinotopy varies within each area);
D. the top-activating images of the most face-area-like cluster are faces (categories of
   the 8 best of the shared test images and the subjects' validation images).

CPU settings (2 shared cores; the paper's are in brackets): efficientnet-lite0 levels
s16, s32 and the pooled embedding [DINOv2 ViT-L/14 layers 1, 6, 12, 18, 24 with LoRA],
E = 64 [256], C = 32 [128], 1000 voxels per batch [5000], frozen backbone, 3 mm voxels
[1.8 mm]. Two deviations for the few steps a CPU run affords: embeddings start at
std 0.01 [random, std not given] and learn with 10x the learning rate of the shared
weights (``embedding_lr_scale``; [Adam lr 1e-3 for all]).

Run (full, about 45 min on 2 shared CPU cores, one thread):
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/universal_science.py --out docs/universal_science.json
Tiny (tests): NRF_EXAMPLE_TINY=1 or --tiny.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

LEVELS = ["s16", "s32", "embedding"]


def _log(*a):
    print(time.strftime("%H:%M:%S"), *a, flush=True)


CATEGORY_AREAS = ["LO", "hMT", "EBA", "FFA", "PPA", "VWFA"]


def test_median_r(model, rs, feats) -> float:
    from napari_nrf.train import predict_set, voxel_pearson

    rows = rs.indices("test")
    pred = predict_set(model, {k: v[rows] for k, v in feats.items()}, rs)
    return float(np.nanmedian(voxel_pearson(pred, rs.get_responses(rows))))


def _area(rs) -> np.ndarray:
    """Area name per voxel (hemispheres merged; "none" outside every area)."""
    names = {**rs.roi_names, 0: "none"}
    return np.array([names[int(v)].rsplit("-", 1)[0] for v in rs.roi])


def _kmeans_ari(x: dict, labels: dict, k: int, seed: int, keep=None) -> float:
    """ARI of k-means (L2-normalised rows, several subjects together) vs ``labels``."""
    from sklearn.metrics import adjusted_rand_score

    from napari_nrf.analysis import cluster_embeddings

    keep = keep or {s: np.ones(len(v), bool) for s, v in labels.items()}
    if k < 2 or sum(int(v.sum()) for v in keep.values()) < k:
        return float("nan")  # tiny runs: too few voxels of these areas
    res = cluster_embeddings({s: v[keep[s]] for s, v in x.items()}, k, seed=seed)
    pred = np.concatenate([res.labels[s] for s in x])
    return float(adjusted_rand_score(np.concatenate([labels[s][keep[s]] for s in x]), pred))


def clustering_claims(joint, train, feats, seed: int) -> dict:
    """Claim C: ARI of k-means maps vs the planted areas, for the embeddings (the paper),
    the readout weights K e, and the noiseless response profiles (reference)."""
    area = {rs.subject: _area(rs) for rs in train}
    inside = {s: a != "none" for s, a in area.items()}
    cat = {s: np.isin(a, CATEGORY_AREAS) for s, a in area.items()}
    emb = {rs.subject: joint.embeddings(rs.subject) for rs in train}
    k_fun = joint.functional.detach().cpu().numpy()
    spaces = {"embeddings": emb, "readout_weights": {s: e @ k_fun.T for s, e in emb.items()}}
    truth = {}
    for rs in train:
        t = rs.get_truth(rs.indices("test")) if hasattr(rs, "get_truth") else rs.truth[rs.indices("test")]
        t = np.asarray(t, np.float64)
        truth[rs.subject] = ((t - t.mean(0)) / (t.std(0) + 1e-8)).T.astype(np.float32)
    spaces["truth_profiles_reference"] = truth
    out = {}
    for name, x in spaces.items():
        k_all = len(np.unique(np.concatenate([area[s][inside[s]] for s in area])))
        k_cat = len(np.unique(np.concatenate([area[s][cat[s]] for s in area])))
        out[name] = {"all_areas": {"k": k_all, "ari": _kmeans_ari(x, area, k_all, seed, inside)},
                     "category_areas": {"k": k_cat, "ari": _kmeans_ari(x, area, k_cat, seed, cat)}}
        _log(f"k-means {name}: all areas ARI {out[name]['all_areas']['ari']:.3f} (k={k_all}), "
             f"category areas ARI {out[name]['category_areas']['ari']:.3f} (k={k_cat})")
    out["n_voxels"] = {"all_areas": int(sum(v.sum() for v in inside.values())),
                       "category_areas": int(sum(v.sum() for v in cat.values()))}
    return out


def face_cluster(joint, train, feats, k: int, seed: int) -> dict:
    """Claim D: k-means of all embeddings; the cluster with the largest FFA share; its top images."""
    from napari_nrf.analysis import cluster_embeddings, cluster_mean_responses

    emb = {rs.subject: joint.embeddings(rs.subject) for rs in train}
    res = cluster_embeddings(emb, k, seed=seed)
    ffa = {rs.subject: _area(rs) == "FFA" for rs in train}
    share = np.zeros(k)
    for s in emb:
        share += np.bincount(res.labels[s][ffa[s]], minlength=k)
    sizes = sum(np.bincount(res.labels[s], minlength=k) for s in emb)
    face_c = int(np.argmax(share / np.maximum(sizes, 1)))
    lib_feats, lib_cats = [], []
    for i, rs in enumerate(train):
        r = rs.indices("val") if i else np.concatenate([rs.indices("test"), rs.indices("val")])
        lib_feats.append({kk: v[r] for kk, v in feats[i].items()})
        lib_cats += [rs.meta["categories"][j] for j in r]
    lib = {kk: np.concatenate([f[kk] for f in lib_feats]) for kk in LEVELS}
    mean = cluster_mean_responses(joint, lib, res)
    top = np.argsort(-mean[face_c])[:8]
    cats = [lib_cats[j] for j in top]
    base = float(np.mean([x == "face" for x in lib_cats]))
    d = {"k": int(k), "cluster": face_c, "ffa_voxel_fraction": float(share[face_c] / max(sizes[face_c], 1)),
         "ffa_voxels_in_cluster_fraction": float(share[face_c] / max(share.sum(), 1)),
         "cluster_size": int(sizes[face_c]), "top8_categories": cats,
         "top8_face_fraction": float(np.mean([x == "face" for x in cats])), "library_size": int(len(lib_cats)),
         "library_face_fraction": base}
    _log(f"face-like cluster {face_c} ({d['ffa_voxel_fraction']:.2f} FFA of {d['cluster_size']} voxels): "
         f"top-8 categories {cats} (library faces {base:.2f})")
    return d


def transfer_claims(joint, held, feats, args, fit: dict, b: dict, seeds, save) -> None:
    """Claim B, transfer half: only the held-out subject's voxel embeddings learn, from
    ``n_transfer`` of its training images (drawn with each seed of ``seeds``), from a
    random start (the paper) and from the nearest-voxel start."""
    import copy

    from napari_nrf.recipes import transfer_subject

    tr_rows = held.indices("train")
    for sd in seeds:
        few = np.sort(np.random.default_rng(sd).choice(tr_rows, min(args.n_transfer, len(tr_rows)), replace=False))
        rows = np.sort(np.concatenate([few, np.flatnonzero(held.split != 0)]))
        f_few = {k: v[rows] for k, v in feats.items()}
        b["n_transfer_images"] = int(len(few))
        steps = max(1, int(np.ceil(len(few) / 32)))
        tfit = {**fit, "epochs": args.transfer_epochs, "patience": args.patience * 2,
                "steps_per_epoch": max(steps, 8), "seed": sd}
        for init in ("random", "nearest"):
            tmodel, ht = transfer_subject(copy.deepcopy(joint), held.subset(rows=rows), features=[f_few], init=init,
                                          **tfit)
            r = test_median_r(tmodel, held, feats)
            if sd == args.seed:
                b[f"transfer_{init}"] = r
                b[f"transfer_{init}_best_epoch"] = ht.best_epoch
            else:
                b.setdefault(f"transfer_{init}_by_seed", {})[str(sd)] = r
            _log(f"transfer ({init} start, seed {sd}) {r:.3f} ({len(few)} images, best epoch {ht.best_epoch})")
            save()


def run(args) -> dict:
    import torch

    from napari_nrf.features import FeatureCache
    from napari_nrf.models.universal import build_universal
    from napari_nrf.recipes import train_universal, transfer_subject
    from napari_nrf.simulate import simulate
    from napari_nrf.simulate.anatomy import AREA_NAMES
    from napari_nrf.train import set_features

    torch.set_num_threads(args.threads)
    t0 = time.time()
    sets = simulate(n_subjects=5, n_images=args.n_images, seed=args.seed, max_voxels=args.max_voxels,
                    n_shared=args.n_shared, resolution=args.resolution, roi=list(AREA_NAMES))
    _log(f"simulated 5 subjects x {args.n_images} images, voxels {[rs.n_voxels for rs in sets]}")
    cache = FeatureCache(args.cache)
    probe = build_universal("efficientnet-lite0", {}, levels=LEVELS, embed_dim=4, channels=4)
    feats = [set_features(probe, rs, cache=cache) for rs in sets]
    feats = [{k: f[k] for k in LEVELS} for f in feats]
    _log("features done")
    cfg = dict(embed_dim=args.embed_dim, channels=args.channels, dropout=0.1, embed_init_std=args.embed_init_std,
               embedding_lr_scale=args.embedding_lr_scale)
    fit = dict(epochs=args.epochs, batch_images=32, batch_voxels=args.batch_voxels, lr=1e-3, weight_decay=0.0,
               patience=args.patience, seed=args.seed,
               on_epoch=lambda r: _log("  epoch", r["epoch"], f"loss {r['train_loss']:.3f}",
                                       f"val {r.get('val_median_pearson', float('nan')):.3f}", f"{r['seconds']:.1f}s"))
    shapes = {k: v.shape[1:] for k, v in feats[0].items()}
    train, held = sets[:4], sets[4]
    out = {"settings": {**vars(args), "levels": LEVELS}, "subjects": [rs.subject for rs in sets],
           "n_voxels": [int(rs.n_voxels) for rs in sets],
           "median_noise_ceiling": [float(np.median(rs.noise_ceiling)) for rs in sets]}

    def save():  # partial results after every stage (long runs on a shared machine)
        out["seconds"] = time.time() - t0
        if args.out:
            _write(args.out, out)

    a = out.setdefault("A_joint_vs_single", {})
    b = out.setdefault("B_transfer", {})
    seeds = [int(x) for x in args.repeat_seeds.split(",")] if args.repeat_seeds else [args.seed]
    if args.part == "transfer":  # repeats of B's transfer half from a saved joint model
        from napari_nrf.models import load_model

        joint = load_model(Path(args.models_dir) / "universal_joint.safetensors")
        transfer_claims(joint, held, feats[4], args, fit, b, seeds, save)
        return out
    if args.part == "scratch":  # repeats of B's scratch half (other initialisation seeds)
        for sd in seeds:
            m, h = train_universal([held], feature_shapes=shapes, model_config=cfg, features=[feats[4]],
                                   **{**fit, "epochs": args.single_epochs, "seed": sd})
            b.setdefault("scratch_all_by_seed", {})[str(sd)] = r = test_median_r(m, held, feats[4])
            _log(f"{held.subject}: scratch model (seed {sd}) {r:.3f} (best epoch {h.best_epoch})")
            save()
        return out
    if args.part in ("all", "joint"):
        # A (joint half).
        joint, hj = train_universal(train, feature_shapes=shapes, model_config=cfg, features=feats[:4], **fit)
        _log(f"joint: best epoch {hj.best_epoch}, val {hj.best_score:.3f}")
        a["joint"] = {rs.subject: test_median_r(joint, rs, feats[i]) for i, rs in enumerate(train)}
        a["joint_best_epoch"] = hj.best_epoch
        _log(f"joint test r: {a['joint']}")
        if args.models_dir:
            joint.save(Path(args.models_dir) / "universal_joint.safetensors")
        save()
        # C and D.
        out["C_kmeans"] = clustering_claims(joint, train, feats, args.seed)
        save()
        out["D_face_cluster"] = face_cluster(joint, train, feats, out["C_kmeans"]["embeddings"]["all_areas"]["k"],
                                             args.seed)
        save()
        transfer_claims(joint, held, feats[4], args, fit, b, [args.seed], save)
        if args.part == "joint":
            return out

    # A (single-subject half) and B (scratch half): models of one subject each; the
    # held-out subject first (claim B), then the 4 training subjects.
    single = a.setdefault("single", {})
    for i in [4, 0, 1, 2, 3]:
        rs = sets[i]
        m, h = train_universal([rs], feature_shapes=shapes, model_config=cfg, features=[feats[i]],
                               **{**fit, "epochs": args.single_epochs})
        r = test_median_r(m, rs, feats[i])
        if i < 4:
            single[rs.subject] = r
        else:
            b["scratch_all"] = r
            b["n_scratch_images"] = int(len(rs.indices("train")))
        _log(f"{rs.subject}: single-subject model {r:.3f} (best epoch {h.best_epoch})")
        if "joint" in a and single:
            a["joint_wins"] = int(sum(a["joint"][s] > single[s] for s in single))
            a["joint_minus_single"] = {s: a["joint"][s] - single[s] for s in single}
        save()
    return out


def _write(path, obj):
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(path).with_suffix(".tmp")
    tmp.write_text(json.dumps(obj, indent=1))
    os.replace(tmp, path)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", help="JSON results file")
    p.add_argument("--tiny", action="store_true", help="seconds-long run for the tests")
    p.add_argument("--repeat-seeds", help="comma-separated seeds for --part transfer / scratch repeats")
    p.add_argument("--part", default="all", choices=["all", "joint", "single", "transfer", "scratch"],
                   help="run only the jointly trained model's claims (A joint, C, D, B transfer) or only the "
                        "single-subject models (A single, B scratch); transfer / scratch: repeats of B's two halves "
                        "with --repeat-seeds (transfer loads the joint model from --models-dir)")
    p.add_argument("--n-images", type=int, default=600)
    p.add_argument("--n-shared", type=int, default=100, help="shared test images")
    p.add_argument("--max-voxels", type=int, default=None, help="voxels per subject (default: every area voxel)")
    p.add_argument("--resolution", type=float, default=3.0, help="voxel size, mm")
    p.add_argument("--n-transfer", type=int, default=100)
    p.add_argument("--epochs", type=int, default=20)
    p.add_argument("--single-epochs", type=int, default=40,
                   help="epochs of the single-subject models (each epoch is a quarter of the joint one's steps)")
    p.add_argument("--transfer-epochs", type=int, default=40, help="transfer epochs of 8 steps")
    p.add_argument("--patience", type=int, default=6)
    p.add_argument("--embed-dim", type=int, default=64)
    p.add_argument("--channels", type=int, default=32)
    p.add_argument("--embed-init-std", type=float, default=0.01)
    p.add_argument("--embedding-lr-scale", type=float, default=10.0)
    p.add_argument("--models-dir", help="save the joint model here")
    p.add_argument("--batch-voxels", type=int, default=1000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--cache", help="feature cache folder")
    args = p.parse_args(argv)
    if args.tiny or os.environ.get("NRF_EXAMPLE_TINY"):
        args.n_images, args.n_shared, args.max_voxels, args.n_transfer = 16, 4, 80, 6
        args.epochs, args.patience, args.embed_dim, args.channels, args.batch_voxels = 1, 1, 8, 4, 100
        args.transfer_epochs, args.single_epochs, args.resolution = 1, 1, 4.0
        args.threads = 1
    res = run(args)
    if args.out:
        _write(args.out, res)
    print(json.dumps(res, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
