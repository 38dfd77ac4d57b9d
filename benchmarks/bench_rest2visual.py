"""Rest2Visual speed and memory (issue 16; docs/benchmarks.md).

    PYTHONPATH=src python benchmarks/bench_rest2visual.py [--volumes 1000] [--keep]

1. ``napari-nrf rest-map`` (the CLI, its defaults) on a 2 mm whole-brain run (91 x 109 x 91)
   of ``--volumes`` volumes, int16 on disk (as scanners and fMRIPrep write BOLD), once as
   ``.nii`` and once as ``.nii.gz``: wall time and the child process's peak resident memory
   (targets: 60 s, 2 GB for 1,000 volumes).
2. A demo-size Rest2Visual model (4 mm whole-brain model grid): a 2 mm whole-brain
   prediction of one (rest map, image) through the query engine, backbone features given
   (median of 5; target 1 s), and the same with the image's backbone pass.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def make_run(path: Path, n_volumes: int, seed: int = 0) -> Path:
    """A 2 mm MNI run (int16) with a PCC-correlated network and noise, written chunk by chunk."""
    import nibabel as nib

    from napari_nrf import space

    g = space.Grid.mni(2.0)
    rng = np.random.default_rng(seed)
    brain = space.brain_mask(g)
    net = space.sphere_mask(g, (0, -52, 18), 12) | space.sphere_mask(g, (0, 52, -6), 12)
    sig = np.convolve(rng.standard_normal(n_volumes + 20), np.ones(5) / 5, "same")[:n_volumes]
    data = np.zeros(g.shape + (n_volumes,), np.int16)
    for s in range(0, n_volumes, 50):
        e = min(n_volumes, s + 50)
        block = 1000 + 20 * rng.standard_normal((int(brain.sum()), e - s), dtype=np.float32)
        block += 20 * net[brain][:, None] * sig[None, s:e].astype(np.float32)
        data[brain, s:e] = block.astype(np.int16)
    img = space.to_nifti(data, g)
    img.header.set_zooms((2.0, 2.0, 2.0, 2.0))
    img.header.set_xyzt_units("mm", "sec")
    nib.save(img, str(path))
    return path


def time_cli(args: list[str]) -> tuple[float, float, float]:
    """Wall seconds, peak RSS (GB) and CPU seconds of ``napari-nrf ARGS`` in a fresh process
    (the clock starts before the imports: what a user waits for)."""
    code = ("import resource, sys, time; t = time.perf_counter(); from napari_nrf.cli import main; "
            f"rc = main({args!r}); print('WALL', time.perf_counter() - t); "
            "u = resource.getrusage(resource.RUSAGE_SELF); print('RSS', u.ru_maxrss); "
            "print('CPU', u.ru_utime + u.ru_stime); sys.exit(rc)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=os.environ)
    if out.returncode:
        raise RuntimeError(out.stderr[-2000:])
    vals = dict(line.split() for line in out.stdout.splitlines() if line.startswith(("WALL", "RSS", "CPU")))
    return float(vals["WALL"]), float(vals["RSS"]) / 1024 ** 2, float(vals["CPU"])


def bench_predict(repeats: int = 5) -> dict:
    import torch

    from napari_nrf import space
    from napari_nrf.models.rest2visual import build_rest2visual
    from napari_nrf.query import QueryEngine

    model = build_rest2visual("efficientnet-lite0", "demo").eval()
    g4 = space.Grid.mni(4.0)
    model.add_subject("s", np.random.default_rng(0).standard_normal(g4.shape).astype(np.float32), g4)
    grid = space.Grid.mni(2.0)
    eng = QueryEngine(model, device="cpu")
    img = np.random.default_rng(1).integers(0, 255, (224, 224, 3), dtype=np.uint8)
    feats = {k: v.clone() for k, v in eng.image_features([img]).items()}
    eng.volume(feats, grid, mask="brain", subject="s")  # warm-up (masks, first-call allocations)
    ts, cs = [], []
    for _ in range(repeats):
        model._enc_cache.clear()  # the rest encoder runs too: a new (rest map, image) pair each time
        t, c = time.perf_counter(), time.process_time()
        vol = eng.volume(feats, grid, mask="brain", subject="s")
        ts.append(time.perf_counter() - t)
        cs.append(time.process_time() - c)
    # one torch thread: CPU seconds without OpenMP's spin-waiting (which inflates them on a
    # loaded machine), an estimate of the idle machine's single-core wall time
    n_threads = torch.get_num_threads()
    torch.set_num_threads(1)
    c1 = []
    for _ in range(repeats):
        model._enc_cache.clear()
        c = time.process_time()
        eng.volume(feats, grid, mask="brain", subject="s")
        c1.append(time.process_time() - c)
    torch.set_num_threads(n_threads)
    tb = []
    for k in range(3):
        eng.clear_cache()
        model._enc_cache.clear()
        im = np.random.default_rng(10 + k).integers(0, 255, (224, 224, 3), dtype=np.uint8)
        t = time.perf_counter()
        eng.volume([im], grid, mask="brain", subject="s")
        tb.append(time.perf_counter() - t)
    return {"predict_2mm_s_median": float(np.median(ts)), "predict_2mm_cpu_s_median": float(np.median(cs)),
            "predict_2mm_s_all": [round(x, 3) for x in ts],
            "predict_2mm_cpu_s_median_1thread": float(np.median(c1)),
            "with_backbone_s_median": float(np.median(tb)), "n_points": int(np.isfinite(vol).sum()),
            "parameters": int(sum(p.numel() for p in model.parameters())), "model_grid": str(model.grid),
            "threads": torch.get_num_threads()}


def bench_rest_map(rep: dict, volumes: int, folder=None, skip_gz: bool = False) -> None:
    """``napari-nrf rest-map`` on a 2 mm run of ``volumes`` volumes, as .nii and .nii.gz."""
    import nibabel as nib

    with tempfile.TemporaryDirectory(dir=folder) as d:
        d = Path(d)
        t = time.perf_counter()
        run = make_run(d / "bold.nii", volumes)
        rep["make_run_s"] = time.perf_counter() - t
        wall, rss, cpu = time_cli(["rest-map", str(run), "--out", str(d / "map.nii.gz")])
        rep["rest_map_nii"] = {"wall_s": wall, "cpu_s": cpu, "peak_rss_gb": rss, "file_gb": run.stat().st_size / 1e9}
        print("rest-map .nii:", rep["rest_map_nii"], flush=True)
        if skip_gz:
            return
        gz = d / "bold.nii.gz"
        nib.save(nib.load(str(run)), str(gz))
        run.unlink()
        wall, rss, cpu = time_cli(["rest-map", str(gz), "--out", str(d / "map2.nii.gz")])
        rep["rest_map_nii_gz"] = {"wall_s": wall, "cpu_s": cpu, "peak_rss_gb": rss, "file_gb": gz.stat().st_size / 1e9}
        print("rest-map .nii.gz:", rep["rest_map_nii_gz"], flush=True)


def demo_bundle(path) -> Path:
    """A demo-size Rest2Visual bundle with one subject (random weights: timing only), for
    ``benchmarks/bench_gui.py --only drop --model PATH``."""
    from napari_nrf import space
    from napari_nrf.models.rest2visual import build_rest2visual

    model = build_rest2visual("efficientnet-lite0", "demo")
    g4 = space.Grid.mni(4.0)
    model.add_subject("sub-01", np.random.default_rng(0).standard_normal(g4.shape).astype(np.float32), g4)
    return model.save(path)


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--demo-bundle", metavar="PATH", help="only write a demo-size bundle for bench_gui.py and exit")
    ap.add_argument("--skip-rest-map", action="store_true")
    ap.add_argument("--skip-predict", action="store_true")
    ap.add_argument("--volumes", type=int, default=1000)
    ap.add_argument("--dir", default=None, help="where the test runs are written (default: a temporary folder)")
    ap.add_argument("--skip-gz", action="store_true")
    ap.add_argument("--json", default=None)
    a = ap.parse_args(argv)
    if a.demo_bundle:
        print(demo_bundle(a.demo_bundle))
        return {}
    rep = {"cpu": _cpu(), "volumes": a.volumes}
    if not a.skip_rest_map:
        bench_rest_map(rep, a.volumes, a.dir, a.skip_gz)
    if not a.skip_predict:
        rep["predict"] = bench_predict()
        print("predict:", rep["predict"], flush=True)
    if a.json:
        Path(a.json).write_text(json.dumps(rep, indent=1))
    return rep


def _cpu() -> str:
    """The CPU model (napari_nrf.precision.cpu_info, the one /proc/cpuinfo reader)."""
    from napari_nrf.precision import cpu_info

    return cpu_info()["model"] + f", {os.cpu_count()} cores"


if __name__ == "__main__":
    main()
