"""Evaluation of movie models in the data's units, and the FIR ridge baseline.

* :func:`predict_chunks`: a model's responses to chunks, a batch at a time (memory: one batch);
* :func:`film_volumes`: responses per *volume* of a film (volume j from chunk j - delay);
* :func:`evaluate_movie`: voxelwise Pearson r over TRs (median, mean) per film and pooled,
  R^2, a per-voxel permutation test (circular shifts), spatial r per TR, SSIM of the
  decoder's reconstructions of each TR's middle frame (from predicted and from measured
  voxels), for the held-out film and the held-out final segments separately;
* :func:`fir_ridge`: ridge regression on TR-averaged frame features with FIR delays
  1-4 TR (the voxelwise-modelling convention), evaluated on the same TRs.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from napari_nrf.calibration import apply_model

from .dataset import MovieDataset
from .video import MovieError


def voxel_pearson(pred, true) -> np.ndarray:
    from napari_nrf.train import voxel_pearson as vp

    return vp(pred, true)


@torch.inference_mode()
def predict_chunks(model, chunks, batch: int = 16, progress=None, cancel=None) -> np.ndarray:
    """Responses (T, V) float32 of ``model`` to ``chunks`` (T, F, S, S, 3) (an array, an
    h5py dataset or a lazy view), ``batch`` chunks at a time (never the whole film in
    memory beyond one batch of frames and the (T, V) output). For a model with
    ``context`` the chunks are consecutive TRs of one film: each batch is given the
    ``context`` chunks before it."""
    from napari_nrf.errors import Cancelled

    was = model.training
    model.eval()
    n = len(chunks)
    out = None
    ctx = int(model.context)  # a model with history reads the chunks before each batch too
    try:
        for s in range(0, n, batch):
            if cancel is not None and cancel():
                raise Cancelled("prediction cancelled")
            lo = max(0, s - ctx)
            fr = np.asarray(chunks[lo:s + batch])
            p = model.predict({"frames": torch.as_tensor(fr)}).float().cpu().numpy()[s - lo:]
            if out is None:
                out = np.empty((n, p.shape[1]), np.float32)
            out[s:s + len(p)] = p
            if progress is not None:
                progress(min(s + batch, n), n)
    finally:
        model.train(was)
    if out is None:
        return np.zeros((0, 0), np.float32)
    return apply_model(model, out, voxels=np.arange(out.shape[1]))  # the gain fitted after training


def film_volumes(model, chunks, batch: int = 16, progress=None, cancel=None) -> np.ndarray:
    """Predicted responses per volume (T, V): volume j from the chunk of TR j - delay; the
    first ``delay`` volumes (no chunk that early) are NaN."""
    p = predict_chunks(model, chunks, batch, progress, cancel)
    d = int(model.delay)
    out = np.full_like(p, np.nan)
    if d < len(p):
        out[d:] = p[: len(p) - d]
    return out


def predict_film(model, source, *, tr: float | None = None, onset: float = 0.0, n_trs: int | None = None,
                 fps: float | None = None, batch: int = 16, progress=None, cancel=None,
                 middle_frames: list | None = None) -> np.ndarray:
    """Predicted responses per volume (T, V) of a film (a video file or a folder of frames)
    streamed from disk: frames are decoded ``batch`` TRs at a time, so memory is one batch
    of chunks plus the (T, V) output, whatever the film's length. Volume j is predicted
    from the chunk of TR j - delay (the first ``delay`` volumes are NaN). ``middle_frames``
    (a list) receives each TR's middle frame (S, S, 3) uint8, for display."""
    from .video import film_info, iter_chunks, n_chunks

    tr = float(model.tr if tr is None else tr)
    if not (math.isfinite(tr) and tr > 0):
        raise MovieError(f"--tr {tr:g}: the TR must be a positive number of seconds")
    if int(batch) != batch or batch < 1:
        raise MovieError(f"--batch {batch}: must be at least 1")
    total = n_trs or n_chunks(film_info(source, fps), tr, onset)
    it = iter_chunks(source, tr=tr, frames_per_tr=model.frames_per_tr, size=model.frame_size, onset=onset,
                     n_trs=n_trs, fps=fps)
    parts, buf, done, prev = [], [], 0, []
    ctx = int(model.context)  # chunks of the previous batch a model with history reads

    def run(chunks):
        p = predict_chunks(model, np.stack(prev + chunks), len(prev) + batch, cancel=cancel)[len(prev):]
        return p, chunks[max(0, len(chunks) - ctx):] if ctx else []

    for chunk in it:
        buf.append(chunk)
        if middle_frames is not None:
            middle_frames.append(chunk[len(chunk) // 2].copy())
        if len(buf) == batch:
            p, prev = run(buf)
            parts.append(p)
            done += len(buf)
            buf = []
            if progress is not None:
                progress(done, total)
    if buf:
        parts.append(run(buf)[0])
        if progress is not None:
            progress(total, total)
    p = np.concatenate(parts)
    d = int(model.delay)
    out = np.full_like(p, np.nan)
    if d < len(p):
        out[d:] = p[: len(p) - d]
    return out


@torch.no_grad()
def reconstruct(model, voxels: np.ndarray, batch: int = 64) -> np.ndarray:
    """Decoder reconstructions (T, S, S, 3) uint8 of responses (T, V)."""
    was = model.training
    model.eval()
    out = []
    try:
        for s in range(0, len(voxels), batch):
            v = torch.as_tensor(np.asarray(voxels[s:s + batch], np.float32), device=model.device)
            out.append((model.decode(v).permute(0, 2, 3, 1).cpu().numpy() * 255 + 0.5).clip(0, 255).astype(np.uint8))
    finally:
        model.train(was)
    return np.concatenate(out) if out else np.zeros((0,), np.uint8)


def ssim_frames(a: np.ndarray, b: np.ndarray) -> float:
    """Mean SSIM (data range 1) of two stacks of frames (T, S, S, 3) uint8."""
    from napari_nrf.models.movie import ssim

    x = torch.as_tensor(a, dtype=torch.float32).permute(0, 3, 1, 2) / 255.0
    y = torch.as_tensor(b, dtype=torch.float32).permute(0, 3, 1, 2) / 255.0
    return float(ssim(x, y))


def permutation_p(pred: np.ndarray, true: np.ndarray, n_perm: int = 200, seed: int = 0, min_shift: int = 5):
    """Per-voxel p-values of r(pred, true) over TRs against circularly shifted predictions
    (shifts of at least ``min_shift`` TRs keep the autocorrelation): (p (V,), r (V,))."""
    r = voxel_pearson(pred, true)
    n = len(pred)
    if n < 2 * min_shift + 2:
        return np.full_like(r, np.nan), r
    rng = np.random.default_rng(seed)
    exceed = np.zeros(len(r))
    for _ in range(n_perm):
        k = int(rng.integers(min_shift, n - min_shift))
        exceed += voxel_pearson(np.roll(pred, k, axis=0), true) >= r
    return ((1 + exceed) / (1 + n_perm)).astype(np.float32), r


def _summary(pred, true, n_perm, seed):
    from napari_nrf.train import voxel_r2

    p, r = permutation_p(pred, true, n_perm, seed) if n_perm else (None, voxel_pearson(pred, true))
    from napari_nrf.evaluate import calibration_slope

    out = {"n_trs": int(len(pred)), "median_r": float(np.nanmedian(r)), "mean_r": float(np.nanmean(r)),
           "median_r2": float(np.nanmedian(voxel_r2(pred, true))),
           "calibration_slope": calibration_slope(pred, true)}
    pc = pred - pred.mean(1, keepdims=True)
    tc = true - true.mean(1, keepdims=True)
    sr = (pc * tc).sum(1) / np.sqrt((pc * pc).sum(1) * (tc * tc).sum(1) + 1e-12)
    out["spatial_r_mean"] = float(np.mean(sr))
    if p is not None:
        out["fraction_p05"] = float(np.mean(p < 0.05))
    return out, r


def evaluate_movie(model, ds: MovieDataset, split: str = "test", n_perm: int = 100, seed: int = 0,
                   batch: int = 16, voxels=None, still: bool = False, return_r: bool = False) -> dict:
    """Scores of ``model`` on the ``split`` TRs of every film of ``ds`` (see module doc).

    Returns {"films": {name: summary}, "held_out_film": summary or None, "segments":
    summary of the other films' test TRs pooled, "pooled": all films' test TRs,
    "ssim_predicted" / "ssim_measured" (decoder models), "delay": the model's delay};
    a summary has median/mean r, median R^2, mean spatial r and the fraction of voxels
    with permutation p < 0.05. ``return_r`` adds the per-voxel r of the pooled TRs."""
    from napari_nrf.data.responseset import SPLITS

    if model.inputs != "frames":
        raise MovieError(f"evaluate_movie needs a model that reads frames, got kind {model.kind!r}")
    d = int(model.delay)
    want = SPLITS[split]
    pairs, mids = {}, []
    for name in ds.film_names:
        rs = ds.training_set(d, films=[name], voxels=voxels, still=still)
        rows = np.flatnonzero(rs.split == want)
        if len(rows) < 3:
            continue
        # a model with history reads the film's earlier chunks: predict every TR, keep the rows
        pred = predict_chunks(model, rs.images, batch)[rows] if model.context else \
            predict_chunks(model, rs.images[rows], batch)
        true = rs.get_responses(rows)
        if pred.shape[1] != true.shape[1]:
            raise MovieError(f"the model predicts {pred.shape[1]} voxels, the data set has {true.shape[1]}")
        pairs[name] = (pred, true)
        if model.has_decoder:
            mids.append(np.asarray(rs.images[rows])[:, ds.frames_per_tr // 2])
    if not pairs:
        raise MovieError(f"no film of the data set has {split} TRs after the {d}-TR delay")
    out = score_films(ds, pairs, n_perm, seed, return_r=return_r, voxels=voxels)
    out.update({"delay": d, "split": split})
    P = np.concatenate([p for p, _ in pairs.values()])
    Y = np.concatenate([y for _, y in pairs.values()])
    if mids:
        M = np.concatenate(mids)
        out["ssim_predicted"] = ssim_frames(reconstruct(model, P), M)
        out["ssim_measured"] = ssim_frames(reconstruct(model, Y), M)
    return out


def score_films(ds: MovieDataset, pairs: dict, n_perm: int = 0, seed: int = 0, return_r: bool = False,
                voxels=None) -> dict:
    """The movie report from per-film (predicted, measured) (T_f, V) pairs of ``ds``'s
    films: {"films": {name: summary}, "pooled": all films' rows, "held_out_film": the
    held-out film's rows (or None), "segments": the other films' rows (or None)}; a summary
    has n_trs, median/mean r over voxels (Pearson over TRs), median R^2, the calibration
    slope (pooled over voxels, 1 = the data's units), mean spatial r per TR and, with
    ``n_perm``, the fraction of voxels with permutation p < 0.05. ``return_r`` adds the
    per-voxel r of the pooled rows. "by_roi": per labelled region of ``ds`` (``voxels``:
    the data set's voxel indices of the pairs' columns, default all), median r, median
    R^2 and slope over the pooled rows. The one scoring of movie models and their baselines."""
    per = {name: _summary(p, y, n_perm, seed)[0] for name, (p, y) in pairs.items()}
    P = np.concatenate([p for p, _ in pairs.values()])
    Y = np.concatenate([y for _, y in pairs.values()])
    H = np.concatenate([np.full(len(p), name == ds.held_out) for name, (p, _) in pairs.items()])
    out = {"films": per}
    out["pooled"], r = _summary(P, Y, n_perm, seed)
    out["by_roi"] = roi_summaries(ds, P, Y, voxels)
    out["held_out_film"] = _summary(P[H], Y[H], n_perm, seed)[0] if H.sum() >= 3 else None
    out["segments"] = _summary(P[~H], Y[~H], n_perm, seed)[0] if (~H).sum() >= 3 else None
    if return_r:
        out["r"] = r
    return out


def roi_summaries(ds: MovieDataset, P: np.ndarray, Y: np.ndarray, voxels=None) -> dict:
    """{region name: {"n_voxels", "median_r", "median_r2", "calibration_slope"}} over the
    rows of (predicted, measured) (T, V) for each labelled region of ``ds`` among the
    voxels ``voxels`` (the data set's indices of the columns; default all)."""
    from napari_nrf.evaluate import calibration_slope
    from napari_nrf.train import voxel_r2

    roi = ds.roi if voxels is None else ds.roi[np.asarray(voxels)]
    if len(roi) != P.shape[1]:
        return {}
    r, r2 = voxel_pearson(P, Y), voxel_r2(P, Y)
    out = {}
    for lab in np.unique(roi):
        if lab == 0:
            continue
        m = roi == lab
        out[str(ds.roi_names.get(int(lab), int(lab)))] = {
            "n_voxels": int(m.sum()), "median_r": float(np.nanmedian(r[m])), "median_r2": float(np.nanmedian(r2[m])),
            "calibration_slope": calibration_slope(P[:, m], Y[:, m])}
    return out


# ---- the FIR ridge baseline --------------------------------------------------------------------
def chunk_features(chunks, kind: str = "efficientnet-lite0", frames_used: int = 4, batch: int = 32,
                   backbone=None) -> np.ndarray:
    """TR-averaged frame features (T, D) float32 of chunks (T, F, S, S, 3): the mean over
    ``frames_used`` evenly spaced frames of the backbone's pooled embedding (``kind``
    "efficientnet-lite0") or of 8 x 8 down-sampled pixels ("pixels"), plus motion energy
    (mean absolute frame difference) in a 4 x 4 grid: what the voxelwise-modelling
    tutorials feed a ridge (a static and a motion-energy feature space)."""
    n = len(chunks)
    feats = []
    bb = None
    if kind == "efficientnet-lite0":
        from napari_nrf.features import get_backbone

        bb = backbone or get_backbone("efficientnet-lite0")
        bb.eval()
    elif kind != "pixels":
        raise MovieError(f"unknown feature kind {kind!r}: 'efficientnet-lite0' or 'pixels'")
    for s in range(0, n, batch):
        c = np.asarray(chunks[s:s + batch])
        B, F_, S = c.shape[0], c.shape[1], c.shape[2]
        idx = np.unique(np.linspace(0, F_ - 1, min(frames_used, F_)).round().astype(int))
        fr = c[:, idx].reshape((-1, S, S, 3))
        if bb is not None:
            with torch.no_grad():
                x = bb.preprocess(list(fr))
                e = bb(x)["embedding"].numpy().reshape(B, len(idx), -1).mean(1)
        else:
            g = S // 8
            e = fr.reshape(-1, 8, g, 8, g, 3).astype(np.float32).mean((2, 4)).reshape(B, len(idx), -1).mean(1) / 255
        cf = c.astype(np.float32) / 255
        dif = np.abs(np.diff(cf, axis=1)).mean(-1)  # (B, F-1, S, S)
        g = S // 4
        mot = dif.reshape(B, F_ - 1, 4, g, 4, g).mean((1, 3, 5)).reshape(B, 16)
        feats.append(np.concatenate([e, 10 * mot], 1).astype(np.float32))
    return np.concatenate(feats)


def delayed(X: np.ndarray, delays=(1, 2, 3, 4)) -> np.ndarray:
    """FIR design: [X shifted by d TRs for d in delays] (T, D x len(delays)), zeros before the start."""
    out = []
    for d in delays:
        s = np.zeros_like(X)
        if d < len(X):
            s[d:] = X[: len(X) - d]
        out.append(s)
    return np.concatenate(out, 1)


def fir_ridge(ds: MovieDataset, delays=(1, 2, 3, 4), features: str = "efficientnet-lite0", voxels=None,
              split: str = "test", n_perm: int = 0, seed: int = 0, feature_cache: dict | None = None) -> dict:
    """Ridge on FIR-delayed TR-averaged frame features, fitted on the train + val TRs of
    every film (alpha per voxel by efficient leave-one-out, sklearn RidgeCV), scored on
    the ``split`` TRs from TR ``max(delays)`` on, as :func:`evaluate_movie` reports."""
    from sklearn.linear_model import RidgeCV

    from napari_nrf.data.responseset import SPLITS

    vox = slice(None) if voxels is None else np.asarray(voxels)
    Xs, Ys, Ss, names, fid = [], [], [], [], []
    for name in ds.film_names:
        key = (name, features)
        if feature_cache is not None and key in feature_cache:
            X = feature_cache[key]
        else:
            X = chunk_features(ds.films[name]["frames"], features)
            if feature_cache is not None:
                feature_cache[key] = X
        Xs.append(delayed(X, delays))
        Ys.append(np.asarray(ds.films[name]["responses"], np.float32)[:, vox])
        sp = np.asarray(ds.films[name]["split"]).copy()
        sp[: max(delays)] = 255  # no full history before the longest delay
        Ss.append(sp)
        names.append(np.full(len(X), name == ds.held_out))
        fid.append(np.full(len(X), len(fid)))
    X, Y, S, H = np.concatenate(Xs), np.concatenate(Ys), np.concatenate(Ss), np.concatenate(names)
    fid = np.concatenate(fid)
    tr = (S == 0) | (S == 1)
    te = S == SPLITS[split]
    mu, sd = X[tr].mean(0), X[tr].std(0) + 1e-6
    Xz = (X - mu) / sd
    model = RidgeCV(alphas=np.logspace(0, 6, 13), alpha_per_target=True).fit(Xz[tr], Y[tr])
    P = model.predict(Xz[te]).astype(np.float32)
    Yt, Ft = Y[te], fid[te]
    pairs = {name: (P[Ft == i], Yt[Ft == i]) for i, name in enumerate(ds.film_names) if (Ft == i).sum() >= 3}
    out = score_films(ds, pairs, n_perm, seed, voxels=voxels)
    out.update({"delays": list(delays), "features": features, "split": split})
    return out


def decoder_saliency(model, ds: MovieDataset, split: str = "test", voxels=None, top: float = 0.2,
                     batch: int = 32) -> dict:
    """The decoder's saliency by region (the paper's Table II): the absolute gradient of the
    reconstruction's SSIM (from the measured voxels, against each TR's middle frame) with
    respect to each voxel's input, averaged over the ``split`` TRs; returns {"per_voxel": (V,),
    "by_roi": {region: share of the top ``top`` fraction of voxels}} (regions from the data
    set's ROI labels; 0 = "none")."""
    from napari_nrf.data.responseset import SPLITS
    from napari_nrf.models.movie import ssim

    if not model.has_decoder:
        raise MovieError("saliency needs a decoder (an encoder-decoder model, w < 1)")
    d = int(model.delay)
    rs = ds.training_set(d, voxels=voxels)
    rows = np.flatnonzero(rs.split == SPLITS[split])
    if len(rows) == 0:
        raise MovieError(f"no {split} TRs")
    was = model.training
    model.eval()
    sal = np.zeros(rs.n_voxels, np.float64)
    try:
        for s in range(0, len(rows), batch):
            r = rows[s:s + batch]
            y = torch.as_tensor(rs.get_responses(r), device=model.device).requires_grad_(True)
            mid = model.middle_frames(np.asarray(rs.images[r]))
            for i in range(len(r)):  # one SSIM per TR, its gradient on that TR's voxels
                val = ssim(model.decode(y[i:i + 1]), mid[i:i + 1])
                (g,) = torch.autograd.grad(val, y)
                sal += np.abs(g[i].cpu().numpy())
    finally:
        model.train(was)
    sal /= len(rows)
    k = max(1, int(round(top * len(sal))))
    best = np.argsort(-sal, kind="stable")[:k]
    names = {0: "none", **{int(a): str(b) for a, b in rs.roi_names.items()}}
    lab = np.asarray(rs.roi)[best]
    by = {}
    for v in lab:
        n = names.get(int(v), str(int(v)))
        by[n] = by.get(n, 0) + 1
    return {"per_voxel": sal.astype(np.float32), "by_roi": {n: c / k for n, c in sorted(by.items(), key=lambda x: -x[1])}}
