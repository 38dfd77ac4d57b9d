"""Benchmark: how fast a render stops after Cancel (target: within 1 s).

A 0.5 mm render of the demo model through the Response volume widget's worker body
(:func:`napari_nrf.widgets.volume_widget._render_job`, the features of one photograph,
then the query engine), cancelled ``--after`` seconds after it started, in each extent
the widget offers by default or often:

- ``data`` ("where the model has data", the default): the first tens of seconds compute
  the coverage mask (15 M brain points against the training voxels), then the chunks;
- ``brain``: straight to the chunks.

The latency is from the cancel event being set to the worker raising (what the widget then
reports as "render cancelled"). No display needed. Results in docs/benchmarks.md
("Render cancel").

Usage::

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_render_cancel.py --after 3 10
"""

from __future__ import annotations

import argparse
import threading
import time

import numpy as np


def cancel_latency(model, image, mask: str, after: float, resolution: float = 0.5) -> tuple[float, str]:
    """(seconds from cancel to the worker stopping, how it ended)."""
    from napari_nrf import space
    from napari_nrf.widgets.volume_widget import _render_job

    event = threading.Event()
    ended = {}

    def work():
        t = time.perf_counter()
        try:
            _render_job(model, [image], space.Grid.mni(resolution), mask, None, None, cancel=event.is_set)
            ended["how"] = "finished"
        except Exception as exc:  # noqa: BLE001 - the cancelled render raises; anything else is reported
            ended["how"] = type(exc).__name__
        ended["t"] = time.perf_counter() - t

    th = threading.Thread(target=work)
    th.start()
    time.sleep(after)
    t0 = time.perf_counter()
    event.set()
    th.join()
    return time.perf_counter() - t0, ended["how"]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--after", type=float, nargs="+", default=[3.0, 10.0], help="seconds before Cancel")
    ap.add_argument("--masks", nargs="+", default=["data", "brain"])
    args = ap.parse_args(argv)
    from PIL import Image

    from napari_nrf.demo import load_demo_model, sample_image_path
    from napari_nrf.widgets._render import engine_for

    model, _ = load_demo_model()
    image = np.asarray(Image.open(sample_image_path()).convert("RGB"))
    for mask in args.masks:
        for after in args.after:
            engine_for(model).__dict__.pop("_coverage_cache", None)  # every run from a cold start
            lat, how = cancel_latency(model, image, mask, after)
            print(f"0.5 mm, extent {mask!r}, cancel after {after:g} s: stopped {lat:.3f} s later ({how})", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
