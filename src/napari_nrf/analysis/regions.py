"""Region scoring: which library images drive a region of a model's predicted responses.

    scores = region_scores(model, library_features, coords=region_xyz)   # (N,) mean response
    top = top_images(model, library_features, coords=region_xyz, k=20)   # most / least activating

Any model kind: continuous kinds go through the query engine at MNI points; voxel kinds
take voxel indices (or points mapped to their nearest voxels).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from napari_nrf import calibration
from napari_nrf._docs import fill_doc
from napari_nrf.errors import Cancelled

from ._common import AnalysisCancelled, AnalysisError


@dataclass
class TopImages:
    """Result of :func:`top_images`.

    Attributes
    ----------
    top : (k,) int64
        Library indices of the k images with the highest region score, best first.
    top_scores : (k,) float32
        Their scores (mean predicted response over the region, in the model's units,
        z-scored BOLD for models trained on z-scored responses).
    bottom : (k,) int64
        Library indices of the k images with the lowest score, lowest first.
    bottom_scores : (k,) float32
    scores : (N,) float32
        Score of every library image.
    n_points : int
        Number of region points (or voxels) the scores average over.
    """

    top: np.ndarray
    top_scores: np.ndarray
    bottom: np.ndarray
    bottom_scores: np.ndarray
    scores: np.ndarray
    n_points: int


def _region_n_items(features: dict) -> int:
    sizes = {int(v.shape[0]) for v in features.values()}
    if len(sizes) != 1:
        raise AnalysisError(f"library features have different lengths: {sorted(sizes)}")
    return sizes.pop()


@fill_doc
def region_scores(model, features: dict, coords=None, voxels=None, subject: str | None = None,
                  batch_images: int = 64, point_chunk: int = 4096, progress=None, cancel=None) -> np.ndarray:
    """Mean predicted response of every library image over a region.

    Parameters
    ----------
    model : napari_nrf.models.EncodingModel
        Any model kind (continuous kinds take ``coords``; voxel kinds take ``voxels`` of
        ``subject`` or ``coords`` mapped to their nearest voxels).
    features : dict name -> (N, ...) array or tensor
        Backbone features of the N library images (as ``model.encode_images`` returns or
        a :class:`napari_nrf.features.FeatureCache` holds).
    coords : (P, 3) float, MNI mm, optional
        Region points.
    voxels : (P,) int, optional
        Region voxel indices of ``subject`` (instead of ``coords``).
    %(subject)s
    batch_images, point_chunk : int
        Images per forward pass, and points per pass (bounds memory at
        ``batch_images * point_chunk`` responses).
    %(progress)s
        Called after each image batch.
    %(cancel)s
        Checked between passes (:class:`AnalysisCancelled`).

    Returns
    -------
    (N,) float32 scores; points where the model has no prediction (NaN) are ignored.
    """
    import torch

    if (coords is None) == (voxels is None):
        raise AnalysisError("give the region as either coords (MNI mm) or voxels")
    if coords is not None:
        region = np.asarray(coords, dtype=np.float32).reshape(-1, 3)
    else:
        region = np.asarray(voxels, dtype=np.int64).reshape(-1)
    if len(region) == 0:
        raise AnalysisError("the region is empty")
    if subject is None and not model.continuous and model.subjects:
        subject = next(iter(model.subjects))
    n = _region_n_items(features)
    dev = model.device
    out = np.zeros(n, np.float32)
    engine = None
    if coords is not None and model.continuous:
        # continuous fields go through the query engine (the model's fast query: for an
        # NRF the image half of the first layer once per image, the coordinate half once
        # per region)
        from napari_nrf.query import QueryEngine

        engine = QueryEngine(model, device=dev)
    with torch.inference_mode():
        for s in range(0, n, batch_images):
            fb = {k: torch.as_tensor(np.asarray(v[s:s + batch_images]) if not torch.is_tensor(v) else
                                     v[s:s + batch_images]).to(dev, torch.float32) for k, v in features.items()}
            b = s + len(next(iter(fb.values())))
            acc = np.zeros(b - s, np.float64)
            cnt = np.zeros(b - s, np.float64)
            if engine is not None:
                try:
                    r = engine.points(fb, region, cancel=cancel).astype(np.float64)
                except Cancelled as exc:
                    raise AnalysisCancelled("cancelled") from exc
                ok = np.isfinite(r)
                acc += np.where(ok, r, 0.0).sum(1)
                cnt += ok.sum(1)
            for p in range(0, len(region) if engine is None else 0, point_chunk):
                if cancel is not None and cancel():
                    raise AnalysisCancelled("cancelled")
                part = region[p:p + point_chunk]
                if coords is not None:
                    r = model.predict(fb, coords=torch.as_tensor(part, device=dev), subject=subject)
                else:
                    r = model.predict(fb, voxels=torch.as_tensor(part, device=dev), subject=subject)
                r = r.float().cpu().numpy().astype(np.float64)
                r = calibration.apply_model(model, r, coords=part if coords is not None else None,
                                            voxels=None if coords is not None else part, subject=subject)
                ok = np.isfinite(r)
                acc += np.where(ok, r, 0.0).sum(1)
                cnt += ok.sum(1)
            with np.errstate(invalid="ignore", divide="ignore"):
                out[s:b] = np.where(cnt > 0, acc / np.maximum(cnt, 1), np.nan)
            if progress is not None:
                progress(b, n)
    if not np.isfinite(out).any():
        raise AnalysisError("the model predicts nothing inside this region (no voxels of the subject there?)")
    return out


def top_images(model, features: dict, coords=None, voxels=None, subject: str | None = None, k: int = 20,
               batch_images: int = 64, progress=None, cancel=None) -> TopImages:
    """The k most and k least activating library images of a region.

    Same parameters as :func:`region_scores`, plus ``k`` (clipped to the library size).
    Images whose score is NaN are ranked last in both lists.
    """
    scores = region_scores(model, features, coords=coords, voxels=voxels, subject=subject,
                           batch_images=batch_images, progress=progress, cancel=cancel)
    k = int(max(0, min(k, len(scores))))
    finite = np.isfinite(scores)
    hi = np.where(finite, scores, -np.inf)
    lo = np.where(finite, scores, np.inf)
    # stable sorts so ties keep library order (reproducible thumbnails)
    top = np.argsort(-hi, kind="stable")[:k]
    bottom = np.argsort(lo, kind="stable")[:k]
    npts = len(coords) if coords is not None else len(np.atleast_1d(voxels))
    return TopImages(top=top.astype(np.int64), top_scores=scores[top].astype(np.float32),
                     bottom=bottom.astype(np.int64), bottom_scores=scores[bottom].astype(np.float32),
                     scores=scores, n_points=int(npts))
