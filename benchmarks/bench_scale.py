"""Scaling on one machine (issue 18): training steps/s and query images/s for 1 and 2 workers.

In one run:

1. **training** (:func:`napari_nrf.train.fit`, data-parallel through ``torch.distributed``):
   a demo-size NRF (efficientnet-lite0 features, 4 x 128 MLP) on random features of
   ``--images`` training images and ``--voxels`` voxels, the same global batch
   (``--batch-images`` x ``--batch-voxels``) for every configuration:
   1 process x 1 thread, 1 process x 2 threads (the same two cores, one process) and
   2 gloo ranks x 1 thread (``distributed.spawn_local``, what ``torchrun`` / ``--nproc 2``
   start). Steps/s is timed between the 3rd and the last step (no validation in between).
2. **query** (:class:`napari_nrf.query_shard.ShardedQuery`): response volumes of
   ``--query-images`` 224 x 224 images (backbone encoding included, no feature cache) on
   the whole-brain 2 mm grid (brain mask): 1 worker x 1 thread, 1 worker x 2 threads,
   2 CPU workers (``--devices cpu,cpu``) with 1 torch thread each (threads of one process).
   On CUDA, ``--cuda`` adds the single-GPU rows (training on ``cuda:0``, a query worker on
   ``cuda:0``) and, with several GPUs, one query worker per GPU
   (``benchmarks/gpu/run.sh --scale`` runs it on the GPU machine).

Prints a Markdown table and writes JSON (``--json``). Run:
    .venv/bin/python benchmarks/bench_scale.py --json benchmarks/results/bench_scale.json
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch


def _cpu_name() -> str:
    """The CPU model (napari_nrf.precision.cpu_info, the one /proc/cpuinfo reader)."""
    from napari_nrf.precision import cpu_info

    return cpu_info()["model"]


def make_data(n_images: int, n_voxels: int, seed: int = 0):
    """(ResponseSet, features): random efficientnet-lite0-shaped features, responses a
    random linear read-out of the embedding (speed does not depend on the values)."""
    from napari_nrf.data.responseset import ResponseSet
    from napari_nrf.space import Grid, brain_mask

    rng = np.random.default_rng(seed)
    shapes = {"s8": (784, 40), "s16": (196, 112), "s32": (49, 320), "embedding": (1280,)}
    feats = {k: rng.standard_normal((n_images,) + s).astype(np.float32) for k, s in shapes.items()}
    g = Grid.from_extent(4.0)
    xyz = g.coords(brain_mask(g))
    xyz = xyz[np.sort(rng.choice(len(xyz), min(n_voxels, len(xyz)), replace=False))].astype(np.float32)
    w = rng.standard_normal((1280, len(xyz))).astype(np.float32) / 36
    resp = (feats["embedding"] @ w).astype(np.float32)
    split = np.zeros(n_images, np.uint8)
    imgs = np.zeros((n_images, 8, 8, 3), np.uint8)  # features are given: the pixels are never read
    return ResponseSet(responses=resp, coords=xyz, split=split, images=imgs, subject="bench"), feats


def train_rank(out_json: str, n_images: int, n_voxels: int, steps: int, batch_images: int, batch_voxels: int,
               threads: int, device: str = "cpu") -> None:
    """One training configuration on this rank; rank 0 writes its steps/s to ``out_json``."""
    from napari_nrf.distributed import is_main, world_size
    from napari_nrf.models.nrf import build_nrf
    from napari_nrf.train import fit

    torch.set_num_threads(threads)
    rs, feats = make_data(n_images, n_voxels)
    model = build_nrf("efficientnet-lite0", "demo", feature_shapes={k: v.shape[1:] for k, v in feats.items()})
    times = []
    fit(model, [rs], features=[feats], steps=steps, batch_images=batch_images, batch_voxels=batch_voxels,
        epochs=None, device=device, progress=lambda d, t: times.append(time.perf_counter()))  # no val rows
    if is_main():
        rate = (len(times) - 3) / (times[-1] - times[2])
        Path(out_json).write_text(json.dumps({"ranks": world_size(), "threads": threads, "device": device,
                                              "steps_per_s": rate}))


def bench_training(args) -> list[dict]:
    from napari_nrf.distributed import spawn_local

    rows = []
    conf = (args.images, args.voxels, args.steps, args.batch_images, args.batch_voxels)
    with tempfile.TemporaryDirectory() as d:
        confs = [(1, 1, "cpu"), (1, 2, "cpu"), (2, 1, "cpu")]
        if args.cuda and torch.cuda.is_available():
            confs.append((1, 1, "cuda:0"))
        for ranks, threads, device in confs:
            out = str(Path(d) / f"r{ranks}t{threads}{device}.json")
            if ranks == 1:
                old = torch.get_num_threads()
                train_rank(out, *conf, threads, device)
                torch.set_num_threads(old)
            else:
                spawn_local(train_rank, ranks, out, *conf, threads)
            rec = json.loads(Path(out).read_text())
            rec["what"] = "training"
            rows.append(rec)
            print(f"training: {ranks} rank(s) x {threads} thread(s) on {device}: {rec['steps_per_s']:.2f} steps/s",
                  flush=True)
    return rows


def bench_query(args) -> list[dict]:
    from napari_nrf.models.nrf import build_nrf
    from napari_nrf.query_shard import ShardedQuery
    from napari_nrf.space import Grid

    rng = np.random.default_rng(1)
    images = [rng.integers(0, 255, (224, 224, 3), dtype=np.uint8) for _ in range(args.query_images)]
    model = build_nrf("efficientnet-lite0", "demo")
    grid = Grid.mni(args.resolution)
    confs = [("cpu", 1), ("cpu", 2), ("cpu,cpu", 1)]
    if args.cuda and torch.cuda.is_available():
        confs.append(("cuda:0", torch.get_num_threads()))
        if torch.cuda.device_count() > 1:
            confs.append((",".join(f"cuda:{i}" for i in range(torch.cuda.device_count())), torch.get_num_threads()))
    rows = []
    old = torch.get_num_threads()
    for devices, threads in confs:
        torch.set_num_threads(threads)
        sq = ShardedQuery(model, devices, batch_images=args.query_batch)
        sq.volumes(images[:args.query_batch * len(sq.devices)], grid, mask="brain")  # warm-up: backbone, grid cache
        t0 = time.perf_counter()
        sq.volumes(images, grid, mask="brain")
        dt = time.perf_counter() - t0
        rec = {"what": "query", "devices": devices, "threads": threads, "images_per_s": len(images) / dt}
        rows.append(rec)
        print(f"query: --devices {devices}, {threads} torch thread(s): {rec['images_per_s']:.2f} images/s", flush=True)
    torch.set_num_threads(old)
    return rows


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--images", type=int, default=256, help="training images (default: %(default)s)")
    p.add_argument("--voxels", type=int, default=4000, help="voxels (default: %(default)s)")
    p.add_argument("--steps", type=int, default=30, help="optimiser steps timed per configuration")
    p.add_argument("--batch-images", type=int, default=32)
    p.add_argument("--batch-voxels", type=int, default=2000)
    p.add_argument("--query-images", type=int, default=16)
    p.add_argument("--query-batch", type=int, default=4)
    p.add_argument("--resolution", type=float, default=2.0, help="query grid in mm (default: %(default)s)")
    p.add_argument("--cuda", action="store_true", help="add the CUDA rows (query on cuda:0, all GPUs)")
    p.add_argument("--skip-training", action="store_true")
    p.add_argument("--json", help="write the results here")
    args = p.parse_args(argv)
    info = {"cpu": _cpu_name(), "cores": os.cpu_count(), "torch": torch.__version__,
            "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
            "command": " ".join([Path(sys.executable).name, *sys.argv]), "settings": vars(args)}
    rows = [] if args.skip_training else bench_training(args)
    rows += bench_query(args)
    print(f"\n{info['cpu']}, {info['cores']} cores, torch {info['torch']}\n")
    print("| what | workers | torch threads each | rate |\n|---|---|---|---|")
    for r in rows:
        if r["what"] == "training":
            where = "" if r.get("device", "cpu") == "cpu" else f" on {r['device']}"
            print(f"| training (fit) | {r['ranks']} rank(s){where} | {r['threads']} | {r['steps_per_s']:.2f} steps/s |")
        else:
            print(f"| query ({args.resolution:g} mm brain) | {r['devices']} | {r['threads']} | {r['images_per_s']:.2f} images/s |")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps({"info": info, "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
