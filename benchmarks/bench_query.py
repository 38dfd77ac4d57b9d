"""Benchmark of the NRF query engine (napari_nrf.query) against a straightforward implementation.

Measured in one run, on random backbone features (speed does not depend on their values):

1. points per second, engine vs straightforward (concatenate the image code and the
   Fourier code of every (image, point) pair and run the whole MLP,
   ``NRF.predict_reference``, in chunks), at demo size (efficientnet-lite0, 4 x 128) and at
   paper size (clip-vit-b16 configuration, 8 x 4096);
2. seconds per image for the demo model on the whole-brain 2 mm grid (brain mask, about
   235k points), with the grid's coordinate half cached (a second query of the same grid)
   and cold;
3. (``--half-mm``) a 0.5 mm whole brain (brain mask, about 15M points) in a fresh process:
   peak resident memory above the pre-query baseline, against the output size;
4. on CUDA (when available): paper size, whole-brain 2 mm and 1 mm per image in bf16, and
   the achieved TFLOP/s counting 2 x multiply-adds of the MLP per (image, point).

Every result records the CPU (model, the flags that matter for reduced precision: AVX2,
AVX-512 BF16, AMX) and the precision the engine chose (:mod:`napari_nrf.precision`: bf16
on CPUs with fast bf16 units, fp32 elsewhere; ``--precision`` forces either). The
straightforward version always runs in fp32, so the ratios are against fp32. The script also
measures this CPU's matrix-product rate in fp32 and bf16 (``precision.probe``, uncached).

Timings are medians of ``--repeats`` runs. Run:
    .venv/bin/python benchmarks/bench_query.py --repeats 5 --half-mm
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time

import numpy as np
import torch

from napari_nrf import precision, space
from napari_nrf.models.nrf import build_nrf
from napari_nrf.query import QueryEngine


def random_features(model, b: int = 1, seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    out = {}
    for name, p, c, _ in model.token_maps:
        out[name] = torch.randn(b, p, c, generator=g)
    if model.embedding:
        out[model.embedding[0]] = torch.randn(b, model.embedding[1], generator=g)
    return out


@torch.inference_mode()
def straightforward(model, feats, xyz, chunk: int = 16384) -> np.ndarray:
    out = []
    for s in range(0, len(xyz), chunk):
        out.append(model.predict_reference(feats, xyz[s:s + chunk]))
    return torch.cat(out, 1).numpy()


def median_time(fn, repeats: int) -> float:
    ts = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t)
    return float(np.median(ts))


def engine_vs_straightforward(model, n_points: int, repeats: int, device="cpu") -> dict:
    feats = random_features(model)
    xyz = np.random.default_rng(0).uniform(-70, 70, (n_points, 3)).astype(np.float32)
    eng = QueryEngine(model, device=device)
    a = eng.points(feats, xyz)  # warm-up, and the check below
    b = straightforward(model, feats, xyz)
    t_eng = median_time(lambda: eng.points(feats, xyz), repeats)
    t_ref = median_time(lambda: straightforward(model, feats, xyz), repeats)
    return {"n_points": n_points, "engine_precision": "bf16" if eng.mixed_precision else "fp32",
            "straightforward_precision": "fp32", **_cpu_tag(),
            "engine_points_per_s": n_points / t_eng, "straightforward_points_per_s": n_points / t_ref,
            "speedup": t_ref / t_eng, "max_abs_diff": float(np.abs(a - b).max()),
            "gflop_per_point_engine": model.flops_per_point(True) / 1e9,
            "gflop_per_point_straightforward": model.flops_per_point(False) / 1e9}


def whole_brain(model, resolution: float, repeats: int, device="cpu") -> dict:
    feats = random_features(model)
    grid = space.Grid.mni(resolution)
    n = int(space.brain_mask(grid).sum())
    eng = QueryEngine(model, device=device)
    eng.volume(feats, grid, mask="brain")  # fills the coordinate-half cache
    sync = torch.cuda.synchronize if str(device).startswith("cuda") else (lambda: None)

    def warm():
        eng.volume(feats, grid, mask="brain")
        sync()

    def cold():
        eng.clear_cache()
        eng.volume(feats, grid, mask="brain")
        sync()

    t_warm = median_time(warm, repeats)
    t_cold = median_time(cold, max(1, repeats // 2))
    return {"resolution_mm": resolution, "n_points": n, "engine_precision": "bf16" if eng.mixed_precision else "fp32",
            **(_cpu_tag() if not str(device).startswith("cuda") else {"gpu": torch.cuda.get_device_name(0)}),
            "seconds_per_image_cached_grid": t_warm,
            "seconds_per_image_cold": t_cold,
            "tflops_achieved": model.flops_per_point(True) * n / t_warm / 1e12}


def _cpu_tag() -> dict:
    """The CPU model and its reduced-precision flags, recorded next to each number."""
    info = precision.cpu_info()
    return {"cpu_model": info["model"], "cpu_flags": " ".join(info["flags"]), "threads": info["threads"]}


def half_mm_child() -> None:
    """Runs in a fresh process: prints JSON with the 0.5 mm peak memory."""
    model = build_nrf("efficientnet-lite0", "demo")
    feats = random_features(model)
    eng = QueryEngine(model, device="cpu")
    eng.volume(feats, space.Grid.from_extent(4.0), mask="brain")  # imports, allocator, nilearn warm
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    import psutil

    rss0 = psutil.Process().memory_info().rss
    grid = space.Grid.mni(0.5)
    t = time.perf_counter()
    vol = eng.volume(feats, grid, mask="brain")
    dt = time.perf_counter() - t
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    out_bytes = vol.nbytes
    n = int(np.isfinite(vol).sum())
    print(json.dumps({"grid": list(grid.shape), "n_points": n, "seconds": dt, **_cpu_tag(),
                      "engine_precision": "bf16" if eng.mixed_precision else "fp32", "output_bytes": out_bytes,
                      "peak_rss_bytes": peak, "baseline_rss_bytes": rss0, "peak_above_baseline_bytes": peak - max(base, rss0),
                      "peak_above_output_bytes": peak - max(base, rss0) - out_bytes}))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--paper-points", type=int, default=512)
    ap.add_argument("--demo-points", type=int, default=100_000)
    ap.add_argument("--half-mm", action="store_true", help="also the 0.5 mm whole-brain memory run")
    ap.add_argument("--out", default=None, help="write the results as JSON here")
    ap.add_argument("--precision", choices=precision.SETTINGS, default=None,
                    help="force the engine's CPU precision (default: $NAPARI_NRF_PRECISION or auto)")
    ap.add_argument("--_half_mm_child", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.precision:
        import os

        os.environ[precision.ENV_VAR] = args.precision  # the --half-mm child inherits it
    if args._half_mm_child:
        half_mm_child()
        return 0
    res = {"torch": torch.__version__, "threads": torch.get_num_threads(), "repeats": args.repeats,
           "cpu": precision.cpu_info(), "precision": precision.choose("cpu")}
    pr = precision.probe(use_cache=False)
    res["matmul_probe"] = {k: pr[k] for k in ("n", "k", "fp32_gflops", "bf16_gflops", "speedup")}
    print(f"cpu {res['cpu']['model']!r}, flags {' '.join(res['cpu']['flags']) or '-'}, torch capability "
          f"{res['cpu']['torch_capability']}, {res['threads']} threads; engine precision {res['precision']['dtype']} "
          f"({res['precision']['reason']}); probe fp32 {pr['fp32_gflops']:.1f} / bf16 {pr['bf16_gflops']:.1f} GFLOP/s",
          flush=True)
    demo = build_nrf("efficientnet-lite0", "demo")
    paper = build_nrf("clip-vit-b16", "paper")
    res["demo_model"] = {"params": demo.n_params, "width": demo.width, "depth": demo.depth}
    res["paper_model"] = {"params": paper.n_params, "width": paper.width, "depth": paper.depth}
    res["demo_points"] = engine_vs_straightforward(demo, args.demo_points, args.repeats)
    print("demo", json.dumps(res["demo_points"]), flush=True)
    res["paper_points"] = engine_vs_straightforward(paper, args.paper_points, args.repeats)
    print("paper", json.dumps(res["paper_points"]), flush=True)
    res["demo_2mm"] = whole_brain(demo, 2.0, args.repeats)
    print("demo 2 mm", json.dumps(res["demo_2mm"]), flush=True)
    if args.half_mm:
        p = subprocess.run([sys.executable, __file__, "--_half_mm_child"], capture_output=True, text=True, check=True)
        res["demo_half_mm"] = json.loads(p.stdout.strip().splitlines()[-1])
        print("demo 0.5 mm", json.dumps(res["demo_half_mm"]), flush=True)
    if torch.cuda.is_available():
        res["cuda_device"] = torch.cuda.get_device_name(0)
        paper = paper.to("cuda")
        res["cuda_paper_2mm"] = whole_brain(paper, 2.0, args.repeats, device="cuda")
        res["cuda_paper_1mm"] = whole_brain(paper, 1.0, args.repeats, device="cuda")
        print("cuda", json.dumps({k: res[k] for k in ("cuda_paper_2mm", "cuda_paper_1mm")}), flush=True)
    else:
        res["cuda"] = "not measured (no CUDA device)"
    if args.out:
        from napari_nrf.evaluate import write_json

        write_json(res, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
