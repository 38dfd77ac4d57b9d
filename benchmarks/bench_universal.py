"""Benchmarks of the Universal encoder: inference time per image at 40,000 voxels, and
k-means of 300,000 x 256 voxel embeddings with k = 20.

Inference times the model head on precomputed backbone features (the backbone runs once
per image whatever the number of voxels; its time is the backbone's own benchmark), at the
paper's size (E = 256, C = 128, MLP 128 -> 512 -> 128) on the feature shapes of
DINOv2 ViT-L/14 at 224 px (5 levels of 256 x 1024 plus the 1024-d class token) and of
efficientnet-lite0 (s8 784 x 40, s16 196 x 112, s32 49 x 320, embedding 1280).

k-means: :func:`napari_nrf.analysis.cluster_embeddings` (method "auto": the torch Lloyd
loop for this size) on (a) embeddings around 20 planted directions (L2-normalised, noise
0.5 per dimension relative to unit directions) and (b) isotropic Gaussian noise (the worst
case: no structure, Lloyd runs to max_iter = 100).

Run:
    .venv/bin/python benchmarks/bench_universal.py --repeats 3 [--device cuda]
Tiny (tests): --tiny.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np

DINO = {**{f"block{i}": (256, 1024) for i in (1, 6, 12, 18, 24)}, "embedding": (1024,)}
EFFNET = {"s8": (784, 40), "s16": (196, 112), "s32": (49, 320), "embedding": (1280,)}


def bench_inference(shapes, n_voxels, batch, repeats, device, embed_dim=256, channels=128) -> dict:
    import torch

    from napari_nrf.models.universal import UniversalEncoder

    g = np.random.default_rng(0)
    m = UniversalEncoder.for_features(shapes, {"sub": g.uniform(-60, 60, (n_voxels, 3))}, embed_dim=embed_dim,
                                      channels=channels).to(device).eval()
    feats = {k: torch.randn((batch,) + tuple(v), device=device) for k, v in shapes.items()}
    sync = torch.cuda.synchronize if torch.device(device).type == "cuda" else (lambda: None)
    times = []
    with torch.inference_mode():
        m.predict(feats, subject="sub")  # warm-up
        sync()
        for _ in range(repeats):
            t = time.perf_counter()
            m.predict(feats, subject="sub")
            sync()
            times.append((time.perf_counter() - t) / batch * 1000)
    return {"ms_per_image_median": float(np.median(times)), "ms_per_image_all": times, "batch": batch,
            "n_voxels": n_voxels, "parameters": int(sum(p.numel() for p in m.parameters()))}


def bench_kmeans(n, e, k, repeats, kind, device=None) -> dict:
    from napari_nrf.analysis import cluster_embeddings

    g = np.random.default_rng(1)
    if kind == "planted":
        dirs = g.normal(size=(k, e))
        dirs /= np.linalg.norm(dirs, axis=1, keepdims=True)
        x = (dirs[g.integers(0, k, n)] + 0.5 / np.sqrt(e) * g.normal(size=(n, e))).astype(np.float32)
    else:
        x = g.normal(size=(n, e)).astype(np.float32)
    times, method = [], None
    for r in range(repeats):
        t = time.perf_counter()
        res = cluster_embeddings(x, k, seed=r, device=device)
        times.append(time.perf_counter() - t)
        method = res.method
    return {"seconds_median": float(np.median(times)), "seconds_all": times, "n": n, "dim": e, "k": k,
            "data": kind, "method": method}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--device", default="cpu")
    p.add_argument("--voxels", type=int, default=40000)
    p.add_argument("--batch", type=int, default=8, help="images per predict call")
    p.add_argument("--only", choices=["inference", "kmeans"], help="run one of the two benchmarks")
    p.add_argument("--tiny", action="store_true")
    p.add_argument("--out", help="JSON file")
    args = p.parse_args(argv)
    import torch

    n_kmeans, dim = 300_000, 256
    if args.tiny or os.environ.get("NRF_EXAMPLE_TINY"):
        args.voxels, args.batch, args.repeats, n_kmeans, dim = 500, 2, 1, 3000, 16
    out = {"device": args.device, "torch_threads": torch.get_num_threads(),
           "cpu_count": os.cpu_count(), "command": " ".join(sys.argv)}
    if torch.device(args.device).type == "cuda":
        out["gpu"] = torch.cuda.get_device_name(0)
    for name, shapes in (("dinov2-vitl14-shapes", DINO), ("efficientnet-lite0-shapes", EFFNET)) * (args.only != "kmeans"):
        r = bench_inference(shapes, args.voxels, args.batch, args.repeats, args.device)
        out[f"inference_{name}"] = r
        print(f"inference {name}: {r['ms_per_image_median']:.1f} ms/image at {args.voxels} voxels", flush=True)
    for kind in ("planted", "random") * (args.only != "inference"):
        r = bench_kmeans(n_kmeans, dim, 20, args.repeats, kind, device=args.device)
        out[f"kmeans_{kind}"] = r
        print(f"k-means {kind} {n_kmeans}x{dim} k=20: {r['seconds_median']:.2f} s ({r['method']})", flush=True)
    if args.out:
        with open(args.out, "w") as f:
            json.dump(out, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
