"""Inference precision: bf16 where the hardware makes it fast, fp32 elsewhere.

>>> precision.inference_dtype("cpu")        # torch.float32 on an AVX2 CPU, bfloat16 on AMX
>>> with precision.autocast("cpu"):          # bf16 autocast where chosen, else nothing
...     model.predict(feats, coords=xyz)
>>> precision.accuracy_guard(model, feats, xyz)   # bf16 vs fp32: r per voxel, max |diff|

On CUDA the query engine has always run under bf16 autocast (TF32 matmuls). On a CPU, bf16
pays only with matrix units: Intel AMX (``amx_bf16``) or AVX-512 BF16 (``avx512_bf16``);
on an AVX2 CPU a bf16 matrix product runs at about a fifth of the fp32 rate. ``auto``
therefore picks bf16 on a CPU only when its flags (``/proc/cpuinfo``) show such units *and*
a short probe (a bf16 vs fp32 ``Linear`` under autocast, about a second, once) confirms
that bf16 is at least ``MIN_SPEEDUP`` times faster. The probe's result is cached per CPU
model, torch version and thread count under ``<cache>/precision/`` (see
:mod:`napari_nrf._cachedir`). A CPU without those flags is never probed (no start-up cost).

The setting ``NAPARI_NRF_PRECISION`` (``auto``, ``fp32``, ``bf16``; also the ``--precision``
option of ``napari-nrf query`` and ``evaluate``) forces either, on every device. Training
is not affected: it keeps fp32 weights and arithmetic (``train.fit``).

Qt-free and cheap to import (torch is imported by the functions that need it).
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import time
from contextlib import nullcontext
from pathlib import Path

from napari_nrf.errors import NapariNRFError

ENV_VAR = "NAPARI_NRF_PRECISION"
SETTINGS = ("auto", "fp32", "bf16")
# CPU flags (Linux /proc/cpuinfo names) of matrix units that run bf16 fast.
FAST_BF16_FLAGS = ("amx_bf16", "avx512_bf16")
REPORTED_FLAGS = ("avx2", "fma", "avx512f", "avx512_bf16", "avx512_fp16", "avx512_vnni", "amx_tile", "amx_bf16",
                  "amx_int8", "amx_fp16")
# bf16 must beat fp32 by this factor in the probe to be chosen (conversions and the
# non-matmul parts of a model do not speed up, so a marginal win would be lost there).
MIN_SPEEDUP = 1.5
# The accuracy guard's thresholds: voxelwise Pearson r of bf16 against fp32 predictions,
# and the largest difference in units of the fp32 predictions' standard deviation.
GUARD_MIN_R = 0.999
GUARD_MAX_ABS_DIFF_SD = 0.1

_probe_memo: dict = {}


class PrecisionError(NapariNRFError):
    """Bad precision setting."""


# ---- CPU features -------------------------------------------------------------------------
def cpu_info(cpuinfo_path: str = "/proc/cpuinfo") -> dict:
    """The CPU model, its reported flags (those in :data:`REPORTED_FLAGS` it has), whether
    it has fast bf16 units, torch's CPU capability (``DEFAULT``/``AVX2``/``AVX512``) and
    the torch thread count. Works without /proc/cpuinfo (flags empty)."""
    import torch

    model, flags = platform.processor() or platform.machine(), set()
    try:
        text = Path(cpuinfo_path).read_text(errors="replace")
        for line in text.splitlines():
            key, _, val = line.partition(":")
            key = key.strip()
            if key == "model name" and val.strip():
                model = val.strip()
            elif key in ("flags", "Features") and not flags:
                flags = set(val.split())
    except OSError:
        pass
    try:
        capability = torch.backends.cpu.get_cpu_capability()
    except Exception:  # noqa: BLE001 - older torch
        capability = "unknown"
    return {"model": model, "flags": [f for f in REPORTED_FLAGS if f in flags],
            "fast_bf16_hardware": any(f in flags for f in FAST_BF16_FLAGS), "torch_capability": capability,
            "torch": torch.__version__, "threads": torch.get_num_threads()}


def setting(value: str | None = None) -> str:
    """The precision setting: ``value`` if given, else ``$NAPARI_NRF_PRECISION``, else "auto"."""
    v = (value if value is not None else os.environ.get(ENV_VAR, "")).strip().lower() or "auto"
    aliases = {"float32": "fp32", "fp-32": "fp32", "bfloat16": "bf16", "f32": "fp32"}
    v = aliases.get(v, v)
    if v not in SETTINGS:
        raise PrecisionError(f"precision must be one of {', '.join(SETTINGS)}, got {value or os.environ.get(ENV_VAR)!r}")
    return v


# ---- the probe ----------------------------------------------------------------------------
def _cache_path(info: dict) -> Path:
    from napari_nrf._cachedir import default_cache_dir

    key = f"{info['model']}|{info['torch']}|{info['threads']}|{','.join(info['flags'])}"
    return default_cache_dir() / "precision" / f"probe-{hashlib.blake2b(key.encode(), digest_size=8).hexdigest()}.json"


def probe(n: int = 2048, k: int = 1024, repeats: int = 3, use_cache: bool = True) -> dict:
    """Time an (n x k) @ Linear(k, k) in fp32 and under bf16 autocast on this CPU.

    Returns dict with ``fp32_gflops``, ``bf16_gflops``, ``speedup`` (bf16 over fp32, > 1:
    bf16 is faster), ``cpu`` (:func:`cpu_info`) and ``cached`` (read from the cache file).
    About 0.2-1 s; the result is cached per CPU model, torch version and thread count.
    """
    import torch

    info = cpu_info()
    path = _cache_path(info)
    if use_cache:
        try:
            res = json.loads(path.read_text())
            if res.get("cpu", {}).get("model") == info["model"] and res.get("n") == n:
                return {**res, "cached": True}
        except (OSError, ValueError):
            pass
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, k, generator=g)
    lin = torch.nn.Linear(k, k)

    def best(fn):
        fn()  # warm-up (weight cast, oneDNN kernel selection)
        ts = []
        for _ in range(repeats):
            t = time.perf_counter()
            fn()
            ts.append(time.perf_counter() - t)
        return min(ts)

    with torch.inference_mode():
        t32 = best(lambda: lin(x))
        with torch.autocast("cpu", dtype=torch.bfloat16):
            t16 = best(lambda: lin(x))
    flop = 2.0 * n * k * k
    res = {"n": n, "k": k, "fp32_gflops": flop / t32 / 1e9, "bf16_gflops": flop / t16 / 1e9, "speedup": t32 / t16,
           "cpu": info, "utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    try:
        from napari_nrf.errors import write_text_atomic

        write_text_atomic(path, json.dumps(res))
    except OSError:
        pass
    return {**res, "cached": False}


# ---- the choice ---------------------------------------------------------------------------
def choose(device="cpu", value: str | None = None) -> dict:
    """Why the inference precision of ``device`` is what it is.

    Returns dict with ``dtype`` ("fp32" or "bf16"), ``setting`` and ``reason``; on a CPU in
    auto also ``cpu`` and, where probed, ``probe``.
    """
    import torch

    dev = torch.device(device)
    s = setting(value)
    if s != "auto":
        return {"dtype": s, "setting": s, "reason": f"forced by the setting ({ENV_VAR} or --precision)"}
    if dev.type == "cuda":
        return {"dtype": "bf16", "setting": s, "reason": "CUDA: bf16 autocast with TF32 matmuls"}
    if dev.type != "cpu":
        return {"dtype": "fp32", "setting": s, "reason": f"{dev.type}: fp32"}
    key = ("cpu", torch.get_num_threads())
    if key in _probe_memo:
        return _probe_memo[key]
    info = cpu_info()
    if not info["fast_bf16_hardware"]:
        out = {"dtype": "fp32", "setting": s, "cpu": info,
               "reason": f"no {' / '.join(FAST_BF16_FLAGS)} in the CPU flags: bf16 would be slower"}
    else:
        pr = probe()
        fast = pr["speedup"] >= MIN_SPEEDUP
        out = {"dtype": "bf16" if fast else "fp32", "setting": s, "cpu": info, "probe": pr,
               "reason": f"probe: bf16 {pr['speedup']:.2f}x fp32 ({'>=' if fast else '<'} {MIN_SPEEDUP})"}
    _probe_memo[key] = out
    return out


def inference_dtype(device="cpu", value: str | None = None):
    """``torch.bfloat16`` or ``torch.float32``: the inference precision for ``device``."""
    import torch

    return torch.bfloat16 if choose(device, value)["dtype"] == "bf16" else torch.float32


def use_bf16(device="cpu", value: str | None = None) -> bool:
    return choose(device, value)["dtype"] == "bf16"


def autocast(device="cpu", enabled: bool | None = None):
    """bf16 autocast on ``device`` when bf16 is chosen there (or ``enabled``), else a no-op."""
    import torch

    dev = torch.device(device)
    on = use_bf16(dev) if enabled is None else bool(enabled)
    if not on or dev.type not in ("cpu", "cuda"):
        return nullcontext()
    return torch.autocast(dev.type, dtype=torch.bfloat16)


# ---- the accuracy guard -------------------------------------------------------------------
def guard_inputs(model, n_images: int = 16, n_points: int = 2000, seed: int = 0) -> tuple[dict, "object"]:
    """The guard's fixed inputs for ``model``: ``n_images`` sets of backbone features drawn
    from a seeded normal distribution with the model's feature shapes (dict name -> (B, ...)
    float32 tensors), and ``n_points`` seeded MNI points (N, 3) mm inside the MNI box.

    For a model without subject voxels this is all it needs; voxel-indexed models use
    their own subject's voxels instead of points.
    """
    import numpy as np
    import torch

    shapes = _feature_shapes(model)
    g = torch.Generator().manual_seed(seed)
    feats = {k: torch.randn((n_images,) + tuple(s), generator=g) for k, s in shapes.items()}
    xyz = np.random.default_rng(seed).uniform([-70, -104, -50], [70, 70, 78], (n_points, 3)).astype(np.float32)
    return feats, xyz


def _feature_shapes(model) -> dict:
    shapes = model.feature_shapes
    if not shapes:
        raise PrecisionError(f"no feature shapes known for a {type(model).__name__}; pass features")
    return shapes


def accuracy_guard(model, features=None, coords=None, device="cpu", subject: str | None = None,
                   min_r: float = GUARD_MIN_R, max_abs_diff_sd: float = GUARD_MAX_ABS_DIFF_SD,
                   dtype=None) -> dict:
    """Compare the predictions of ``model`` in bf16 autocast with fp32 on ``device``.

    Parameters
    ----------
    features : dict name -> (B, ...) or None
        Default: :func:`guard_inputs` (16 seeded feature sets).
    coords : (N, 3) MNI mm or None
        Points for a continuous model (default: :func:`guard_inputs`' 2000 points);
        voxel-indexed models predict at every voxel of ``subject`` (at most 2000).
    min_r : float
        Required Pearson r per voxel (across the B images) of bf16 against fp32, at every
        voxel (the minimum over voxels).
    max_abs_diff_sd : float
        Allowed max |bf16 - fp32| over all images and voxels, in units of the standard
        deviation of the fp32 predictions (0.1: a tenth of the predictions' spread).
    dtype : torch dtype or None
        The reduced precision to check (default bfloat16).

    Returns
    -------
    dict with ``passed`` (bool), ``min_r``, ``median_r``, ``max_abs_diff``, ``tolerance``
    (the max-abs-diff limit in prediction units), ``fp32_sd``, ``n_images``, ``n_voxels``,
    ``device``, ``thresholds``.
    """
    import numpy as np
    import torch

    dt = dtype or torch.bfloat16
    dev = torch.device(device)
    continuous = model.continuous
    if features is None or (coords is None and continuous):
        f0, c0 = guard_inputs(model)
        features = f0 if features is None else features
        coords = c0 if coords is None and continuous else coords
    was = model.training
    model.eval()
    try:
        model.to(dev)
        feats = {k: torch.as_tensor(v).to(dev, torch.float32) for k, v in features.items()}
        kw = {}
        if continuous:
            kw["coords"] = torch.as_tensor(np.asarray(coords, np.float32)).to(dev)
        else:
            subs = model.subjects or {}
            subject = subject or (next(iter(subs)) if len(subs) == 1 else None)
            if coords is not None:
                kw["coords"] = np.asarray(coords, np.float32)
            else:
                n = len(subs[subject]) if subject in subs else 0
                kw["voxels"] = np.arange(min(n, 2000))
            kw["subject"] = subject
        old = torch.backends.cuda.matmul.allow_tf32
        torch.backends.cuda.matmul.allow_tf32 = False  # the reference is true fp32
        try:
            with torch.inference_mode():
                ref = model.predict(feats, **kw).float().cpu().numpy().astype(np.float64)
                low_ctx = nullcontext() if dt == torch.float32 else torch.autocast(dev.type, dtype=dt)
                with low_ctx:
                    low = model.predict(feats, **kw).float().cpu().numpy().astype(np.float64)
        finally:
            torch.backends.cuda.matmul.allow_tf32 = old
    finally:
        model.train(was)
    ok = np.isfinite(ref).all(0) & np.isfinite(low).all(0)
    ref, low = ref[:, ok], low[:, ok]
    a, b = ref - ref.mean(0), low - low.mean(0)
    den = np.sqrt((a * a).sum(0) * (b * b).sum(0))
    with np.errstate(invalid="ignore", divide="ignore"):
        r = np.where(den > 0, (a * b).sum(0) / np.where(den > 0, den, 1), np.nan)
    sd = float(ref.std())
    tol = max_abs_diff_sd * sd
    diff = float(np.abs(low - ref).max()) if ref.size else 0.0
    rmin = float(np.nanmin(r)) if np.isfinite(r).any() else float("nan")
    passed = bool(np.isfinite(rmin) and rmin >= min_r and diff <= tol)
    return {"passed": passed, "min_r": rmin, "median_r": float(np.nanmedian(r)) if np.isfinite(r).any() else float("nan"),
            "max_abs_diff": diff, "tolerance": tol, "fp32_sd": sd, "n_images": int(ref.shape[0]),
            "n_voxels": int(ref.shape[1]), "device": str(dev), "dtype": str(dt).replace("torch.", ""),
            "thresholds": {"min_r": min_r, "max_abs_diff_sd": max_abs_diff_sd}}
