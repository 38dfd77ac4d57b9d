"""Science experiment: the Universal encoder on virtual subjects (seed 002, sections 4 and 5).

Claims checked, on subjects of :func:`napari_nrf.simulate.simulate` (different images per
subject except the shared test images; planted functional areas V1 ... VWFA):

A. joint training on 4 subjects beats each single-subject model on that subject's test
   images (median voxel Pearson against the measured test responses);
B. transfer to a held-out 5th subject with 100 training images (only its voxel
   embeddings learn) beats a single-subject model trained from scratch on all of its
   training images (seed 002 section 4.4);
C. k-means of the jointly learned voxel embeddings recovers the planted areas: adjusted
   Rand index against the area labels (hemispheres merged, k = number of areas, and
   hemispheres apart, k = number of labels), over the voxels inside an area;
D. the top-activating images of the most face-area-like cluster are faces (categories of
   the 8 best of the shared test images and the subjects' validation images).

CPU settings (2 shared cores; the paper's are in brackets): efficientnet-lite0 levels
s16, s32 and the pooled embedding [DINOv2 ViT-L/14 layers 1, 6, 12, 18, 24 with LoRA],
E = 64 [256], C = 32 [128], 1000 voxels per batch [5000], frozen backbone.

Run (full, about 20-30 min on 2 CPU cores):
    .venv/bin/python benchmarks/universal_science.py --out docs/universal_science.json
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


def test_median_r(model, rs, feats) -> float:
    from napari_nrf.train import predict_set, voxel_pearson

    rows = rs.indices("test")
    pred = predict_set(model, {k: v[rows] for k, v in feats.items()}, rs)
    return float(np.nanmedian(voxel_pearson(pred, rs.get_responses(rows))))


def run(args) -> dict:
    import torch
    from sklearn.metrics import adjusted_rand_score

    from napari_nrf.analysis import cluster_embeddings, cluster_mean_responses
    from napari_nrf.features import FeatureCache
    from napari_nrf.models.universal import train_universal, transfer_subject
    from napari_nrf.simulate import simulate
    from napari_nrf.train import set_features

    torch.set_num_threads(args.threads)
    t0 = time.time()
    sets = simulate(n_subjects=5, n_images=args.n_images, seed=args.seed, max_voxels=args.max_voxels,
                    n_shared=args.n_shared)
    _log(f"simulated 5 subjects x {args.n_images} images, voxels {[rs.n_voxels for rs in sets]}")
    cache = FeatureCache(args.cache)
    from napari_nrf.models.universal import build_universal

    probe = build_universal("efficientnet-lite0", {}, levels=LEVELS, embed_dim=4, channels=4)
    feats = [set_features(probe, rs, cache=cache) for rs in sets]
    feats = [{k: f[k] for k in LEVELS} for f in feats]
    _log("features done")
    cfg = dict(embed_dim=args.embed_dim, channels=args.channels, dropout=0.1)
    fit = dict(epochs=args.epochs, batch_images=32, batch_voxels=args.batch_voxels, lr=1e-3, weight_decay=0.0,
               patience=args.patience, seed=args.seed,
               on_epoch=lambda r: _log("  epoch", r["epoch"], f"loss {r['train_loss']:.3f}",
                                       f"val {r.get('val_median_pearson', float('nan')):.3f}", f"{r['seconds']:.1f}s"))
    shapes = {k: v.shape[1:] for k, v in feats[0].items()}
    train, held = sets[:4], sets[4]
    out = {"settings": {**vars(args), "levels": LEVELS}, "subjects": [rs.subject for rs in sets]}

    def save():  # partial results after every stage (long runs on a shared machine)
        if args.out:
            _write(args.out, out)

    # A (single-subject half) and B (scratch half): models of one subject each.
    if args.part in ("all", "single"):
        a = out.setdefault("A_joint_vs_single", {}).setdefault("single", {})
        for i, rs in enumerate(sets):
            m, _ = train_universal([rs], feature_shapes=shapes, model_config=cfg, features=[feats[i]], **fit)
            r = test_median_r(m, rs, feats[i])
            if i < 4:
                a[rs.subject] = r
            else:
                out.setdefault("B_transfer", {})["scratch_all"] = r
                out["B_transfer"]["n_scratch_images"] = int(len(rs.indices("train")))
            _log(f"{rs.subject}: single-subject model {r:.3f}")
            save()
        if args.part == "single":
            return out

    # A (joint half).
    joint, hj = train_universal(train, feature_shapes=shapes, model_config=cfg, features=feats[:4], **fit)
    _log(f"joint: best epoch {hj.best_epoch}, val {hj.best_score:.3f}")
    a = out.setdefault("A_joint_vs_single", {})
    a["joint"] = {rs.subject: test_median_r(joint, rs, feats[i]) for i, rs in enumerate(train)}
    _log(f"joint test r: {a['joint']}")
    if "single" in a:
        a["joint_wins"] = int(sum(a["joint"][s] > a["single"][s] for s in a["joint"]))
    save()

    # C. k-means of the joint embeddings vs the planted areas.
    names = train[0].roi_names
    c = {}
    emb = {rs.subject: joint.embeddings(rs.subject) for rs in train}
    inside = {rs.subject: rs.roi > 0 for rs in train}
    lab_full = np.concatenate([rs.roi[inside[rs.subject]] for rs in train])
    lab_area = np.array([names[int(v)].rsplit("-", 1)[0] for v in lab_full])
    for key, truth in (("areas", lab_area), ("areas_and_hemispheres", lab_full)):
        k = len(np.unique(truth))
        res = cluster_embeddings({s: e[inside[s]] for s, e in emb.items()}, k, seed=args.seed)
        pred = np.concatenate([res.labels[s] for s in emb])
        c[key] = {"k": int(k), "ari": float(adjusted_rand_score(truth, pred))}
        _log(f"k-means {key}: k={k} ARI={c[key]['ari']:.3f}")
    out["C_kmeans"] = c

    # D. the face-like cluster's top images (k = number of areas, over every voxel).
    k = c["areas"]["k"]
    res = cluster_embeddings(emb, k, seed=args.seed)
    ffa = {rs.subject: np.isin(rs.roi, [v for v, n in names.items() if n.startswith("FFA")]) for rs in train}
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
    d = {"cluster": face_c, "ffa_voxel_fraction": float(share[face_c] / max(sizes[face_c], 1)),
         "cluster_size": int(sizes[face_c]), "top8_categories": cats,
         "top8_face_fraction": float(np.mean([x == "face" for x in cats])), "library_size": int(len(lib_cats)),
         "library_face_fraction": base}
    _log(f"face-like cluster {face_c}: top-8 categories {cats} (library faces {base:.2f})")
    out["D_face_cluster"] = d
    save()

    # B (transfer half): only the held-out subject's voxel embeddings learn, from few images.
    tr_rows = held.indices("train")
    few = np.sort(np.random.default_rng(args.seed).choice(tr_rows, min(args.n_transfer, len(tr_rows)), replace=False))
    rows = np.sort(np.concatenate([few, np.flatnonzero(held.split != 0)]))
    f_few = {k: v[rows] for k, v in feats[4].items()}
    tmodel, ht = transfer_subject(joint, held.subset(rows=rows), features=[f_few],
                                  **{**fit, "epochs": args.epochs * 2, "patience": args.patience * 2})
    b = out.setdefault("B_transfer", {})
    b.update({"n_transfer_images": int(len(few)), "transfer": test_median_r(tmodel, held, feats[4])})
    _log(f"transfer {b['transfer']:.3f} ({len(few)} images)")
    out["seconds"] = time.time() - t0
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
    p.add_argument("--part", default="all", choices=["all", "joint", "single"],
                   help="run only the jointly trained model's claims (A joint, C, D, B transfer) or only the "
                        "single-subject models (A single, B scratch), e.g. in two processes")
    p.add_argument("--n-images", type=int, default=600)
    p.add_argument("--n-shared", type=int, default=100, help="shared test images")
    p.add_argument("--max-voxels", type=int, default=2500)
    p.add_argument("--n-transfer", type=int, default=100)
    p.add_argument("--epochs", type=int, default=30)
    p.add_argument("--patience", type=int, default=6)
    p.add_argument("--embed-dim", type=int, default=64)
    p.add_argument("--channels", type=int, default=32)
    p.add_argument("--batch-voxels", type=int, default=1000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--cache", help="feature cache folder")
    args = p.parse_args(argv)
    if args.tiny or os.environ.get("NRF_EXAMPLE_TINY"):
        args.n_images, args.n_shared, args.max_voxels, args.n_transfer = 16, 4, 80, 6
        args.epochs, args.patience, args.embed_dim, args.channels, args.batch_voxels = 1, 1, 8, 4, 100
        args.threads = 1
    res = run(args)
    if args.out:
        _write(args.out, res)
    print(json.dumps(res, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
