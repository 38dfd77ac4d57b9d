"""One prepared GPU run: the paper-size CUDA targets of napari-nrf, as JSON under an output folder.

Run by ``benchmarks/gpu/run.sh`` (which installs what the bare GPU machine lacks and puts
``src/`` on the path); ``--dry-run`` runs every stage on the CPU at tiny sizes.

Stages, each with its own time budget (seconds, ``STAGES``) and its own try/except; the
JSON file ``--out`` is rewritten after every stage (headline numbers under "summary", every
detail under "stages"), so one failure or a kill still leaves the others:

``env``
    torch / CUDA versions, the GPU, the CPU, what run.sh installed.
``matmul``
    The plain matrix-product peak in the same run: ``a @ b`` of 8192 x 8192 x 8192 in
    bf16, in fp32 with TF32 and in strict fp32 (TFLOP/s).
``guard``
    The bf16 accuracy guard (:func:`napari_nrf.precision.accuracy_guard`) on the GPU: the
    shipped demo model and the random paper-size model, bf16 autocast against fp32.
``query_2mm`` / ``query_1mm``
    ``QueryEngine`` on ``build_nrf("clip-vit-b16", "paper")`` (random weights and
    features; speed does not depend on their values), whole brain (brain mask) at 2 mm
    (about 235k points) and 1 mm (about 1.9M), per image: the engine as it is (bf16
    autocast on CUDA), the engine in fp32 with TF32 matmuls (``mixed_precision=False``),
    the engine with a coordinate-half cache large enough for the grid (an opt-in setting,
    ``coord_cache_bytes``), and the straightforward implementation
    (``NRF.predict_reference`` in chunks under the same bf16 autocast). Achieved TFLOP/s
    count 0.202 GFLOP per point for the engine and 0.214 for the straightforward version
    (``NRF.flops_per_point``), against the bf16 peak of ``matmul``.
``chunk``
    The largest chunk that fits: ``QueryEngine.points`` with the chunk forced to the whole
    point set, doubling the points until the engine had to halve (a real CUDA
    out-of-memory of the whole device, recovered by the engine).
``oom``
    A real out-of-memory recovery compared with the small-chunk result: the caching
    allocator is capped (``torch.cuda.set_per_process_memory_fraction``) so that the forced
    chunk cannot fit; the engine halves it until it fits; the volume must equal the one of a
    run with small chunks.
``train_nrf``
    A paper-size NRF training step, 32 images x 2000 voxels, with the arithmetic of
    ``napari_nrf.train.fit``'s inner loop (``model_predict``, ``loss_fn``, backward,
    AdamW step): fp32 (what fit does today), fp32 with TF32, bf16 autocast with fp32
    master weights. steps/s and images/s.
``universal``
    The Universal encoder at paper size (E 256, C 128, MLP 128 -> 512 -> 128) on DINOv2
    ViT-L/14 feature shapes: inference at 40k voxels per image (batch 32) in fp32/TF32 and
    bf16, with the model's default voxel chunks and with larger ones; a training step
    (32 images x 5000 voxels, the paper's batch).
``compile`` / ``graphs`` (opt-in: ``--compile``, ``--cuda-graphs``)
    Experiments for making the engine faster, compared in the same run with the engine
    on the 2 mm whole brain: ``torch.compile`` of ``NRF.head`` on fixed-size chunks, and a
    CUDA graph of one fixed-size chunk replayed over the grid. Both check that the volume
    equals the engine's (bf16 tolerance).

``run.sh`` then runs ``pytest -m cuda`` (``tests/test_cuda.py``) and writes its result.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import sys
import time
import traceback
from contextlib import contextmanager, nullcontext
from pathlib import Path

import numpy as np
import torch

# Seconds per stage on the GPU (the whole run must stay under 6 minutes with start-up,
# installation and pytest). A stage stops repeating when its budget is spent; an alarm at
# 2 x budget + 20 s aborts it.
STAGES = {"env": 10, "matmul": 15, "guard": 10, "query_2mm": 40, "query_1mm": 45, "chunk": 25, "oom": 20,
          "train_nrf": 25, "universal": 30, "compile": 60, "graphs": 25}

# Paper-size targets on the H200 (issue 19), per image in bf16.
TARGETS = {"query_2mm_s_per_image": 0.100, "query_1mm_s_per_image": 0.8, "train_nrf_s_per_step": 0.100,
           "universal_40k_ms_per_image": 10.0}

DINO = {**{f"block{i}": (256, 1024) for i in (1, 6, 12, 18, 24)}, "embedding": (1024,)}


class StageTimeout(RuntimeError):
    pass


class Bench:
    def __init__(self, out: Path, dry: bool, device: torch.device):
        self.out, self.dry, self.device = out, dry, device
        self.cuda = device.type == "cuda"
        self.summary: dict = {"dry_run": dry, "device": str(device), "targets": TARGETS, "stages": {}}
        self.full: dict = {}

    # ---- helpers ---------------------------------------------------------------------------
    def sync(self):
        if self.cuda:
            torch.cuda.synchronize()

    def timed(self, fn, budget: float, max_repeats: int = 5, min_repeats: int = 1) -> dict:
        """Median seconds of ``fn()`` after one warm-up, repeating while the budget lasts."""
        if self.dry:
            max_repeats = 1  # the dry run checks the code path, not the speed
        t0 = time.perf_counter()
        fn()
        self.sync()
        warm = time.perf_counter() - t0
        ts = []
        while len(ts) < max_repeats and (len(ts) < min_repeats or time.perf_counter() - t0 + warm < budget):
            t = time.perf_counter()
            fn()
            self.sync()
            ts.append(time.perf_counter() - t)
        return {"median_s": float(np.median(ts)), "all_s": [float(x) for x in ts], "first_call_s": warm}

    def write(self) -> None:
        """All results in one file (the device tool brings back at most 8 files)."""
        self.out.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.out.with_name(self.out.name + ".tmp")
        tmp.write_text(json.dumps({"summary": self.summary, "stages": self.full}, indent=1, default=_jsonable))
        os.replace(tmp, self.out)

    def stage(self, name: str, fn, budget: float) -> dict:
        t0 = time.perf_counter()
        res: dict = {"stage": name, "budget_s": budget}
        print(f"[bench_gpu] {name} (budget {budget:.0f} s) ...", flush=True)

        def on_alarm(signum, frame):
            raise StageTimeout(f"stage {name} ran past {2 * budget + 20:.0f} s")

        old = signal.signal(signal.SIGALRM, on_alarm) if hasattr(signal, "SIGALRM") else None
        if old is not None:
            signal.alarm(int(2 * budget + 20))
        try:
            res.update(fn(budget))
            res["ok"] = True
        except BaseException as e:  # one stage's failure (OOM, timeout, bug) leaves the others
            if isinstance(e, KeyboardInterrupt):
                raise
            res["ok"] = False
            res["error"] = f"{type(e).__name__}: {e}"
            res["traceback"] = traceback.format_exc()[-4000:]
        finally:
            if old is not None:
                signal.alarm(0)
                signal.signal(signal.SIGALRM, old)
            if self.cuda:
                torch.cuda.empty_cache()
        res["seconds"] = time.perf_counter() - t0
        self.summary["stages"][name] = _short(res)
        self.full[name] = res
        self.write()
        print(f"[bench_gpu] {name}: {'ok' if res['ok'] else res['error']} ({res['seconds']:.1f} s)", flush=True)
        return res


def _jsonable(o):
    if isinstance(o, (np.floating, np.integer)):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    return str(o)


def _short(res: dict) -> dict:
    """The summary keeps each stage's headline numbers (no tracebacks, no lists of runs)."""
    out = {}
    for k, v in res.items():
        if k in ("traceback",) or isinstance(v, list):
            continue
        out[k] = _short(v) if isinstance(v, dict) else v
    return out


def random_features(shapes: dict, b: int, device, seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    return {k: torch.randn((b,) + tuple(s), generator=g).to(device) for k, s in shapes.items()}


def nrf_feature_shapes(model) -> dict:
    shapes = {name: (p, c) for name, p, c, _ in model.token_maps}
    if model.embedding:
        shapes[model.embedding[0]] = (model.embedding[1],)
    return shapes


def whole_brain_mask(grid):
    """nilearn's MNI152 brain mask on ``grid``; an ellipsoid of about the same size if
    nilearn cannot be imported (recorded in the JSON)."""
    from napari_nrf import space

    try:
        return space.brain_mask(grid), "nilearn MNI152 brain mask"
    except Exception as e:  # noqa: BLE001 - the bare machine may lack nilearn
        xyz = grid.coords().reshape(grid.shape + (3,))
        c, ax = np.array([0.0, -18.0, 8.0]), np.array([70.0, 102.0, 62.0])
        m = (((xyz - c) / ax) ** 2).sum(-1) <= 1.0
        return m, f"ellipsoid fallback ({type(e).__name__}: {e})"


@contextmanager
def tf32(on: bool):
    old = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = on
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = old


def autocast(device, on: bool, **kw):
    return torch.autocast(device.type, dtype=torch.bfloat16, **kw) if on else nullcontext()


# ---- stages -------------------------------------------------------------------------------
def stage_env(b: Bench, installed: str):
    def run(budget):
        info = {"torch": torch.__version__, "cuda": torch.version.cuda, "python": sys.version.split()[0],
                "platform": platform.platform(), "cpu": platform.processor(), "installed_from_wheels": installed,
                "utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
        try:
            from napari_nrf import precision

            info["cpu_info"] = precision.cpu_info()
        except Exception as e:  # noqa: BLE001
            info["cpu_info"] = f"unavailable: {e}"
        if b.cuda:
            p = torch.cuda.get_device_properties(0)
            info.update(gpu=p.name, gpu_memory_gib=p.total_memory / 2 ** 30, capability=f"{p.major}.{p.minor}",
                        multiprocessors=p.multi_processor_count, cudnn=torch.backends.cudnn.version())
        for mod in ("nibabel", "nilearn", "open_clip", "pytest", "timm", "safetensors", "h5py"):
            try:
                m = __import__(mod)
                info[f"version_{mod}"] = getattr(m, "__version__", "?")
            except Exception as e:  # noqa: BLE001
                info[f"version_{mod}"] = f"missing ({type(e).__name__})"
        return info
    return run


def stage_matmul(b: Bench):
    def run(budget):
        n = 256 if b.dry else 8192
        out = {"n": n}
        for name, dt, t32 in (("bf16", torch.bfloat16, False), ("fp32_tf32", torch.float32, True),
                              ("fp32", torch.float32, False)):
            if b.dry and name == "bf16" and not b.cuda:
                n_ = 128  # bf16 is slow on AVX2 CPUs; only the code path matters here
            else:
                n_ = n
            x = torch.randn(n_, n_, device=b.device, dtype=dt)
            y = torch.randn(n_, n_, device=b.device, dtype=dt)
            with tf32(t32):
                t = b.timed(lambda: x @ y, budget / 3, max_repeats=10)
            out[name] = {"n": n_, **t, "tflops": 2 * n_ ** 3 / t["median_s"] / 1e12}
            del x, y
        b.summary["matmul_bf16_tflops"] = out["bf16"]["tflops"]
        return out
    return run


def paper_model(b: Bench):
    """The paper-size NRF (random weights), built once per run (133M parameters: seconds)."""
    from napari_nrf.models.nrf import build_nrf

    if getattr(b, "_paper", None) is None:
        b._paper = build_nrf("clip-vit-b16", "tiny" if b.dry else "paper")
    return b._paper.to(b.device).eval()


def stage_query(b: Bench, resolution: float):
    def run(budget):
        from napari_nrf.query import QueryEngine
        from napari_nrf.space import Grid

        model = paper_model(b)
        grid = Grid.mni(8.0) if b.dry else Grid.mni(resolution)
        mask, mask_kind = whole_brain_mask(grid)
        n = int(mask.sum())
        fpp, fpp_ref = model.flops_per_point(True), model.flops_per_point(False)
        peak = b.summary.get("matmul_bf16_tflops")
        res = {"resolution_mm": resolution if not b.dry else 8.0, "n_points": n, "mask": mask_kind,
               "gflop_per_point_engine": fpp / 1e9, "gflop_per_point_straightforward": fpp_ref / 1e9,
               "params": model.n_params}
        shapes = nrf_feature_shapes(model)
        n_img = [1, 4] if resolution == 2.0 and not b.dry else [1]
        per = budget / (5 + 2 * (len(n_img) - 1))
        ref_vol = None
        for bsz in n_img:
            feats = random_features(shapes, bsz, b.device)
            variants = [("bf16", {}), ("fp32_tf32", {"mixed_precision": False})]
            if bsz == 1:
                variants.append(("bf16_coord_cache_fits", {"coord_cache_bytes": 64 << 30}))
            for name, kw in variants:
                eng = QueryEngine(model, device=b.device, **kw)
                vol_holder = {}

                def cached():
                    vol_holder["v"] = eng.volume(feats, grid, mask=mask)

                def cold():
                    eng.clear_cache()
                    eng.volume(feats, grid, mask=mask)

                t = b.timed(cached, per, max_repeats=5)
                tc = b.timed(cold, per / 2, max_repeats=2) if bsz == 1 and name == "bf16" else None
                r = {"images": bsz, "bf16_autocast": eng.mixed_precision, **t, "s_per_image": t["median_s"] / bsz,
                     "chunk_points": eng.last_chunk,
                     "tflops": fpp * n * bsz / t["median_s"] / 1e12, "coord_cache_bytes": eng.coord_cache_bytes}
                if peak:
                    r["fraction_of_bf16_matmul_peak"] = r["tflops"] / peak
                if tc is not None:
                    r["cold"] = {**tc, "s_per_image": tc["median_s"] / bsz}
                v = vol_holder["v"][:, mask]
                if name == "bf16" and bsz == 1:
                    ref_vol = v
                elif bsz == 1 and ref_vol is not None:
                    r["vs_engine_bf16"] = _compare(v, ref_vol)
                res[f"engine_{name}_b{bsz}"] = r
                del eng
                b.sync()
        # The straightforward implementation, same autocast, in chunks of the engine's size.
        feats = random_features(shapes, 1, b.device)
        xyz = torch.from_numpy(grid.coords(mask).astype(np.float32)).to(b.device)
        chunk = 16384 if not b.cuda else 65536
        holder = {}

        def straight():
            with torch.inference_mode(), tf32(True), autocast(b.device, b.cuda):
                parts = [model.predict_reference(feats, xyz[s:s + chunk]).float() for s in range(0, n, chunk)]
                holder["v"] = torch.cat(parts, 1).cpu().numpy()

        t = b.timed(straight, per, max_repeats=3)
        r = {**t, "s_per_image": t["median_s"], "chunk_points": chunk, "tflops": fpp_ref * n / t["median_s"] / 1e12}
        if ref_vol is not None:
            r["vs_engine_bf16"] = _compare(holder["v"], ref_vol)
            r["engine_speedup"] = t["median_s"] / res["engine_bf16_b1"]["median_s"]
        res["straightforward_bf16"] = r
        key = "query_2mm_s_per_image" if resolution == 2.0 else "query_1mm_s_per_image"
        best = min(v["s_per_image"] for k, v in res.items() if k.startswith("engine_bf16"))
        res["target"] = {"s_per_image_target": TARGETS[key], "engine_bf16_best_s_per_image": best,
                         "met": bool(best <= TARGETS[key]) if b.cuda else None}
        return res
    return run


def _compare(a, ref) -> dict:
    a, ref = np.asarray(a, np.float64).ravel(), np.asarray(ref, np.float64).ravel()
    r = float(np.corrcoef(a, ref)[0, 1]) if a.size > 1 and a.std() > 0 and ref.std() > 0 else float("nan")
    return {"pearson_r": r, "max_abs_diff": float(np.abs(a - ref).max()), "ref_std": float(ref.std()),
            "equal": bool(np.array_equal(a, ref))}


def stage_guard(b: Bench):
    def run(budget):
        from napari_nrf import precision
        from napari_nrf.models import load_model

        demo = load_model(Path(precision.__file__).parent / "assets" / "demo_nrf.safetensors")
        out = {"shipped_demo_model": precision.accuracy_guard(demo, device=b.device)}
        model = paper_model(b)
        f, xyz = precision.guard_inputs(model, n_images=8 if b.dry else 16, n_points=500 if b.dry else 2000)
        g = precision.accuracy_guard(model, f, xyz, device=b.device)
        g["note"] = "random weights: a deep random MLP's output barely depends on the image, so r is not meaningful"
        out["paper_model_random_weights"] = g
        return out
    return run


def stage_chunk(b: Bench):
    def run(budget):
        from napari_nrf.query import QueryEngine

        model = paper_model(b)
        feats = random_features(nrf_feature_shapes(model), 1, b.device)
        width = model.width
        t0 = time.perf_counter()
        steps = []
        n = 1 << (10 if b.dry else 17)
        top = 1 << (13 if b.dry else 25)
        largest = None
        rng = np.random.default_rng(0)
        while n <= top and time.perf_counter() - t0 < budget:
            xyz = rng.uniform(-70, 70, (n, 3)).astype(np.float32)
            eng = QueryEngine(model, device=b.device, chunk_bytes=4 * width * n)  # one chunk = all points
            if b.cuda:
                torch.cuda.reset_peak_memory_stats()
            t = time.perf_counter()
            eng.points(feats, xyz)
            b.sync()
            dt = time.perf_counter() - t
            st = {"points": n, "requested_chunk": eng._chunk_points(1), "chunk_used": eng.last_chunk, "seconds": dt,
                  "points_per_s": n / dt}
            if b.cuda:
                st["peak_memory_gib"] = torch.cuda.max_memory_allocated() / 2 ** 30
            steps.append(st)
            print(f"  chunk {st}", flush=True)
            del eng
            if st["chunk_used"] < st["requested_chunk"]:
                break  # the device ran out of memory and the engine halved: the limit is found
            largest = n
            n *= 2
        return {"steps": steps, "largest_chunk_that_fits": largest,
                "first_halved": next((s for s in steps if s["chunk_used"] < s["requested_chunk"]), None)}
    return run


def stage_oom(b: Bench):
    def run(budget):
        from napari_nrf.query import QueryEngine
        from napari_nrf.space import Grid

        if not b.cuda:
            return {"skipped": "no CUDA: the out-of-memory recovery needs the CUDA caching allocator"}
        model = paper_model(b)
        grid = Grid.mni(2.0)
        mask, mask_kind = whole_brain_mask(grid)
        feats = random_features(nrf_feature_shapes(model), 1, b.device)
        small = QueryEngine(model, device=b.device, chunk_bytes=4 * model.width * 16384)
        ref = small.volume(feats, grid, mask=mask)
        total = torch.cuda.get_device_properties(0).total_memory
        used = torch.cuda.memory_allocated()
        # The model and a 58k-point chunk fit under the cap; the forced whole-brain chunk
        # (235k x 4096 bf16 activations, about 1.9 GB each, 3-4 alive) does not.
        cap = used + (3 << 30)
        torch.cuda.empty_cache()
        torch.cuda.set_per_process_memory_fraction(min(1.0, cap / total))
        try:
            big = QueryEngine(model, device=b.device, chunk_bytes=4 * model.width * (1 << 20))
            requested = big._chunk_points(1)
            t = time.perf_counter()
            vol = big.volume(feats, grid, mask=mask)
            b.sync()
            dt = time.perf_counter() - t
        finally:
            torch.cuda.set_per_process_memory_fraction(1.0)
        cmp = _compare(vol[:, mask], ref[:, mask])
        n = int(mask.sum())
        scale = float(np.abs(ref[:, mask]).max())
        # Each point's arithmetic does not depend on the chunk; cuBLAS may pick another kernel
        # for another row count, so allow a bf16-sized difference (1 % of the largest value).
        return {"mask": mask_kind, "n_points": n, "memory_cap_gib": cap / 2 ** 30,
                "requested_chunk": requested, "chunk_after_recovery": big.last_chunk, "seconds": dt,
                "halved": bool(big.last_chunk < requested), "chunk_below_n_points": bool(big.last_chunk < n),
                "small_chunk": small.last_chunk, "vs_small_chunk": cmp,
                "result_matches_small_chunk": bool(cmp["equal"] or cmp["max_abs_diff"] <= 0.01 * scale)}
    return run


def _step_fn(model, feats, y, vox, coords, opt, amp, device):
    from napari_nrf.train import loss_fn, model_predict

    def step():
        with autocast(device, amp):
            pred = model_predict(model, feats, "sub", vox, coords)
            loss = loss_fn(pred.float(), y, 0.1)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return loss
    return step


def stage_train_nrf(b: Bench):
    def run(budget):
        model = paper_model(b).train()
        n_img, n_vox = (2, 64) if b.dry else (32, 2000)
        feats = random_features(nrf_feature_shapes(model), n_img, b.device)
        g = torch.Generator().manual_seed(1)
        coords = (torch.rand(n_vox, 3, generator=g) * 140 - 70).to(b.device)
        y = torch.randn(n_img, n_vox, generator=g).to(b.device)
        vox = torch.arange(n_vox, device=b.device)
        opt = torch.optim.AdamW(model.parameters(), lr=3e-4, weight_decay=0.015)
        res = {"images": n_img, "voxels": n_vox, "params": model.n_params,
               "gflop_per_step_approx": 3 * model.flops_per_point(True) * n_img * n_vox / 1e9}
        for name, t32, amp in (("fp32", False, False), ("fp32_tf32", True, False), ("bf16_autocast", True, True)):
            if b.cuda:
                torch.cuda.reset_peak_memory_stats()
            with tf32(t32):
                t = b.timed(_step_fn(model, feats, y, vox, coords, opt, amp, b.device), budget / 3, max_repeats=10)
            r = {**t, "steps_per_s": 1 / t["median_s"], "images_per_s": n_img / t["median_s"]}
            if b.cuda:
                r["peak_memory_gib"] = torch.cuda.max_memory_allocated() / 2 ** 30
            res[name] = r
        best = min(res[k]["median_s"] for k in ("fp32", "fp32_tf32", "bf16_autocast"))
        res["target"] = {"s_per_step_target": TARGETS["train_nrf_s_per_step"], "best_s_per_step": best,
                         "met": bool(best <= TARGETS["train_nrf_s_per_step"]) if b.cuda else None}
        return res
    return run


def stage_universal(b: Bench):
    def run(budget):
        from napari_nrf.models.universal import UniversalEncoder

        shapes = {"block1": (16, 32), "embedding": (32,)} if b.dry else DINO
        n_vox, batch = (200, 2) if b.dry else (40_000, 32)
        rng = np.random.default_rng(0)
        m = UniversalEncoder.for_features(shapes, {"sub": rng.uniform(-60, 60, (n_vox, 3))}, embed_dim=256,
                                          channels=128).to(b.device).eval()
        feats = random_features(shapes, batch, b.device)
        emb = m.voxel_embeddings["sub"]
        res = {"voxels": n_vox, "batch": batch, "params": int(sum(p.numel() for p in m.parameters())),
               "feature_shapes": {k: list(v) for k, v in shapes.items()}}
        outs = {}
        per = budget / 6
        for name, amp, t32, maxel in (("fp32_tf32", False, True, 1 << 25), ("bf16", True, True, 1 << 25),
                                      ("bf16_large_chunks", True, True, 1 << 31)):
            def inf():
                with torch.inference_mode(), tf32(t32), autocast(b.device, amp):
                    outs[name] = m.forward_embeddings(feats, emb, max_elements=maxel).float()
            t = b.timed(inf, per, max_repeats=5)
            res[f"inference_{name}"] = {**t, "ms_per_image": 1000 * t["median_s"] / batch,
                                        "images_per_s": batch / t["median_s"], "max_elements": maxel}
        for name in ("bf16", "bf16_large_chunks"):
            res[f"inference_{name}"]["vs_fp32_tf32"] = _compare(outs[name].cpu().numpy(),
                                                                outs["fp32_tf32"].cpu().numpy())
        # training step at the paper's batch (UNIVERSAL_FIT_DEFAULTS: 32 images x 5000 voxels)
        m.train()
        tv = 5000 if not b.dry else 100
        g = torch.Generator().manual_seed(2)
        vox = torch.from_numpy(np.sort(rng.choice(n_vox, tv, replace=False))).to(b.device)
        y = torch.randn(batch, tv, generator=g).to(b.device)
        opt = torch.optim.AdamW(m.parameters(), lr=1e-3, weight_decay=0.0)
        coords = torch.zeros(tv, 3, device=b.device)
        for name, t32, amp in (("fp32_tf32", True, False), ("bf16_autocast", True, True)):
            with tf32(t32):
                t = b.timed(_step_fn(m, feats, y, vox, coords, opt, amp, b.device), per, max_repeats=10)
            res[f"train_step_{name}"] = {**t, "voxels": tv, "steps_per_s": 1 / t["median_s"],
                                         "images_per_s": batch / t["median_s"]}
        best = min(res[k]["ms_per_image"] for k in res if k.startswith("inference_"))
        res["target"] = {"ms_per_image_target": TARGETS["universal_40k_ms_per_image"], "best_ms_per_image": best,
                         "met": bool(best <= TARGETS["universal_40k_ms_per_image"]) if b.cuda else None}
        return res
    return run


def _chunked_volume(model, feats, xyz, chunk, head):
    """The engine's inner loop with a fixed chunk (the last one padded): (B, n) float32."""
    n = xyz.shape[0]
    h_img = model.image_half(model.image_code(feats))
    out = torch.empty(h_img.shape[0], n, device=xyz.device)
    buf = torch.zeros(chunk, 3, device=xyz.device)
    for s in range(0, n, chunk):
        e = min(s + chunk, n)
        buf[: e - s] = xyz[s:e]
        out[:, s:e] = head(h_img, buf)[:, : e - s]
    return out


def _engine_reference(b: Bench, model, feats, grid, mask, budget):
    from napari_nrf.query import QueryEngine

    eng = QueryEngine(model, device=b.device)
    holder = {}

    def run():
        holder["v"] = eng.volume(feats, grid, mask=mask)[:, mask]
    t = b.timed(run, budget, max_repeats=3)
    return t, holder["v"], eng.last_chunk


def stage_compile(b: Bench):
    def run(budget):
        from napari_nrf.space import Grid

        model = paper_model(b)
        grid = Grid.mni(8.0) if b.dry else Grid.mni(2.0)
        mask, _ = whole_brain_mask(grid)
        feats = random_features(nrf_feature_shapes(model), 1, b.device)
        t_eng, ref, chunk = _engine_reference(b, model, feats, grid, mask, budget / 4)
        xyz = torch.from_numpy(grid.coords(mask).astype(np.float32)).to(b.device)
        compiled = torch.compile(lambda h, x: model.head(h, model.coord_half(x)).float(), dynamic=False)
        holder = {}

        def run_c():
            with torch.inference_mode(), tf32(True), autocast(b.device, b.cuda):
                holder["v"] = _chunked_volume(model, feats, xyz, chunk, compiled).cpu().numpy()
        t = b.timed(run_c, budget / 2, max_repeats=3)
        return {"chunk": chunk, "engine": {**t_eng}, "compiled": t, "speedup_vs_engine": t_eng["median_s"] / t["median_s"],
                "compile_and_first_call_s": t["first_call_s"], "vs_engine": _compare(holder["v"], ref)}
    return run


def stage_graphs(b: Bench):
    def run(budget):
        from napari_nrf.space import Grid

        if not b.cuda:
            return {"skipped": "no CUDA: CUDA graphs need a GPU"}
        model = paper_model(b)
        grid = Grid.mni(2.0)
        mask, _ = whole_brain_mask(grid)
        feats = random_features(nrf_feature_shapes(model), 1, b.device)
        t_eng, ref, chunk = _engine_reference(b, model, feats, grid, mask, budget / 3)
        xyz = torch.from_numpy(grid.coords(mask).astype(np.float32)).to(b.device)
        n = xyz.shape[0]
        with torch.inference_mode(), tf32(True), torch.autocast("cuda", dtype=torch.bfloat16, cache_enabled=False):
            h_img = model.image_half(model.image_code(feats))
            static_x = torch.zeros(chunk, 3, device=b.device)
            s = torch.cuda.Stream()
            s.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(s):
                for _ in range(2):
                    model.head(h_img, model.coord_half(static_x))
            torch.cuda.current_stream().wait_stream(s)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                static_out = model.head(h_img, model.coord_half(static_x)).float()
        with torch.inference_mode():
            out = torch.empty(1, n, device=b.device)

        def replay():
            with torch.inference_mode():  # static_x is an inference tensor
                for st in range(0, n, chunk):
                    e = min(st + chunk, n)
                    static_x[: e - st].copy_(xyz[st:e])
                    graph.replay()
                    out[:, st:e] = static_out[:, : e - st]
        t = b.timed(replay, budget / 3, max_repeats=5)
        return {"chunk": chunk, "engine": t_eng, "graph_replay": t, "speedup_vs_engine": t_eng["median_s"] / t["median_s"],
                "note": "image half computed once outside the timing; the engine's timing includes it and the copy to host",
                "vs_engine": _compare(out.cpu().numpy(), ref)}
    return run


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True, help="the JSON file (rewritten after every stage)")
    ap.add_argument("--dry-run", action="store_true", help="tiny sizes on the CPU (checks the script end to end)")
    ap.add_argument("--compile", action="store_true", help="also the torch.compile experiment")
    ap.add_argument("--cuda-graphs", action="store_true", help="also the CUDA-graph experiment")
    ap.add_argument("--only", default=None, help="comma-separated stages")
    ap.add_argument("--budget-scale", type=float, default=1.0, help="multiply every stage's time budget")
    ap.add_argument("--installed", default=os.environ.get("NRF_GPU_INSTALLED", ""))
    ap.add_argument("--deadline-s", type=float, default=None, help="skip the stages that would start after this")
    args = ap.parse_args(argv)
    cuda = torch.cuda.is_available() and not args.dry_run
    dev = torch.device("cuda" if cuda else "cpu")
    if not cuda and not args.dry_run:
        print("[bench_gpu] no CUDA device: running the dry run instead", flush=True)
        args.dry_run = True
    if args.dry_run:
        torch.set_num_threads(min(2, torch.get_num_threads()))
    b = Bench(Path(args.out), args.dry_run, dev)
    stages = {"env": stage_env(b, args.installed), "matmul": stage_matmul(b), "guard": stage_guard(b),
              "query_2mm": stage_query(b, 2.0), "query_1mm": stage_query(b, 1.0), "chunk": stage_chunk(b),
              "oom": stage_oom(b), "train_nrf": stage_train_nrf(b), "universal": stage_universal(b)}
    if args.compile:
        stages["compile"] = stage_compile(b)
    if args.cuda_graphs:
        stages["graphs"] = stage_graphs(b)
    only = set(args.only.split(",")) if args.only else None
    scale = (0.05 if args.dry_run else 1.0) * args.budget_scale
    t0 = time.perf_counter()
    for name, fn in stages.items():
        if only and name not in only and name != "env":
            continue
        if args.deadline_s is not None and time.perf_counter() - t0 + STAGES[name] * scale > args.deadline_s:
            b.summary["stages"][name] = {"ok": False, "error": "skipped: the run's deadline would be passed"}
            continue
        b.stage(name, fn, STAGES[name] * scale)
    b.summary["total_s"] = time.perf_counter() - t0
    b.summary["all_ok"] = all(s.get("ok") for s in b.summary["stages"].values())
    b.write()
    print(json.dumps(b.summary, indent=1, default=_jsonable)[:6000], flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
