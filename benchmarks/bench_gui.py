"""Benchmarks of the napari plugin (results in docs/benchmarks.md, "## napari plugin").

1. drop -> visible: from a dropped image file (``ResponseVolumeWidget.add_images``) to the
   first prediction layer drawn on the canvas (layer added and the canvas repainted; for a
   Rest2Visual model the person's prediction, before its stimulus-only step), demo model,
   whole brain (brain mask) at 2 mm. A different image each run, so every run extracts
   backbone features (no cache hit). Needs a display: run under Xvfb.
2. top-k: top-20 (and bottom-20) images of a 2,000-voxel region over a 1,000-image
   library whose features are already computed (``napari_nrf.analysis.top_images``).

Usage::

    xvfb-run -a .venv/bin/python benchmarks/bench_gui.py --runs 5
    xvfb-run -a .venv/bin/python benchmarks/bench_gui.py --only drop --ndisplay 3 --runs 5
    .venv/bin/python benchmarks/bench_gui.py --only topk --runs 3

Prints one line per run and the medians.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def bench_drop(model, path, runs: int, resolution: float = 2.0, ndisplay: int = 2) -> list[float]:
    import napari
    from PIL import Image
    from qtpy.QtCore import QEventLoop, QTimer
    from qtpy.QtWidgets import QApplication

    from napari_nrf.simulate.fallback import photo_crops
    from napari_nrf.widgets import dock_all
    from napari_nrf.widgets._render import ensure_template

    viewer = napari.Viewer(show=True)
    w = dock_all(viewer)
    w["Encoding model"].set_model(model, path)
    ensure_template(viewer)
    viewer.dims.ndisplay = ndisplay  # 2: napari's default view; 3: the demo's volume view
    vw = w["Response volume"]
    vw.resolution.setValue(resolution)
    tmp = Path(tempfile.mkdtemp())
    imgs = photo_crops(runs + 1, seed=123, size=160)
    times = []
    # Rest2Visual with "add the stimulus-only prediction" (its default): the widget shows the
    # person's prediction first and adds the stimulus-only one and the difference after it
    # (a second listener call); we time the first visible prediction layer, and report the
    # second step too.
    two_steps = bool(getattr(model, "conditioned", False)) and vw.vs_stimulus.isChecked()
    for i in range(runs + 1):  # run 0 warms up (backbone build, first torch calls)
        p = tmp / f"img{i}.png"
        Image.fromarray(imgs[i]).save(p)
        loop = QEventLoop()
        done = {}

        def rendered(layers, done=done, loop=loop):
            viewer.window._qt_viewer.canvas.native.repaint()  # draw the new layer now
            QApplication.processEvents()
            key = "t" if "t" not in done else "t_all"
            done[key] = time.perf_counter()
            if key == "t":
                done["cpu"] = time.process_time()
            if not two_steps or key == "t_all":
                loop.quit()

        vw._listeners = [rendered]
        c0 = time.process_time()
        t0 = time.perf_counter()
        vw.add_images([str(p)])
        QTimer.singleShot(300_000, loop.quit)
        loop.exec()
        if "t" not in done or (two_steps and "t_all" not in done):
            raise RuntimeError(f"render {i} did not finish: {vw.status.text()}")
        while vw._second_step or (vw.worker is not None and vw.worker.is_running):
            QApplication.processEvents()  # the worker's finished signal: the next drop is accepted
        dt = done["t"] - t0
        cpu = done["cpu"] - c0  # CPU seconds of all threads: what a busy machine cannot hide
        if i:
            times.append(dt)
        extra = (f"; all layers (+ stimulus-only, difference) {done['t_all'] - t0:.3f} s wall, "
                 f"{time.process_time() - c0:.2f} CPU s" if two_steps else "")
        print(f"drop->first visible prediction run {i}{' (warm-up)' if i == 0 else ''}: {dt:.3f} s wall, "
              f"{cpu:.2f} CPU s{extra}", flush=True)
        for ly in vw.response_layers():
            viewer.layers.remove(ly)
    viewer.close()
    return times


def bench_topk(model, runs: int, n_images: int = 1000, n_voxels: int = 2000, k: int = 20) -> list[float]:
    from napari_nrf import space
    from napari_nrf.analysis import top_images
    from napari_nrf.features import FeatureCache
    from napari_nrf.simulate.fallback import photo_crops

    imgs = photo_crops(n_images, seed=0)
    t = time.perf_counter()
    feats = model.encode_images(imgs, cache=FeatureCache(), batch_size=32)
    feats = {k_: v.cpu().numpy() for k_, v in feats.items()}
    print(f"library features ({n_images} images, from the cache when present): {time.perf_counter() - t:.1f} s")
    # a 2,000-voxel region: the grey-matter voxels of a 2 mm grid closest to the right FFA-like point
    g = space.Grid.mni(2.0)
    xyz = g.coords(space.brain_mask(g))
    d = np.linalg.norm(xyz - np.array([40.0, -55.0, -20.0]), axis=1)
    region = xyz[np.argsort(d)[:n_voxels]]
    times = []
    for i in range(runs):
        c0 = time.process_time()
        t0 = time.perf_counter()
        res = top_images(model, feats, coords=region, k=k)
        dt = time.perf_counter() - t0
        print(f"  CPU seconds (all threads): {time.process_time() - c0:.2f}")
        times.append(dt)
        print(f"top-{k} run {i}: {dt:.3f} s (best image {res.top[0]}, score {res.top_scores[0]:+.3f})", flush=True)
    return times


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--only", choices=["drop", "topk"])
    ap.add_argument("--model", help="model bundle (default: the demo model)")
    ap.add_argument("--threads", type=int, help="torch threads (default: torch's own choice)")
    ap.add_argument("--ndisplay", type=int, choices=[2, 3], default=2, help="view during the drop benchmark (default 2D)")
    args = ap.parse_args(argv)

    import torch

    from napari_nrf.demo import load_demo_model
    from napari_nrf.models import load_model

    if args.threads:
        torch.set_num_threads(args.threads)
    if args.model:
        model, path = load_model(args.model), Path(args.model)
    else:
        model, path = load_demo_model()
    print(f"model {path.name}, torch threads {torch.get_num_threads()}")
    if args.only in (None, "drop"):
        t = bench_drop(model, path, args.runs, ndisplay=args.ndisplay)
        print(f"MEDIAN drop->first visible prediction layer (2 mm, whole brain, {args.ndisplay}D view): {statistics.median(t):.3f} s "
              f"over {len(t)} runs")
    if args.only in (None, "topk"):
        t = bench_topk(model, args.runs)
        print(f"MEDIAN top-20 of 1000 images, 2000-voxel region: {statistics.median(t):.3f} s over {len(t)} runs")
    return 0


if __name__ == "__main__":
    sys.exit(main())
