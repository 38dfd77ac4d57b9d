"""Whole-map metrics of predicted evoked volumes, as Rest2Visual reports them (Qt-free).

Rest2Visual (the Rest2Visual paper, section 4.3) scores each predicted map against the measured one,
both z-scored within the region: spatial Pearson r, MAE and SSIM; RSA (Pearson of the
upper triangles of correlation-distance RDMs over samples); inter-subject correlation
matrices on shared images. The paper gives neither SSIM's window nor its data range:
here they are explicit arguments (defaults: a 7-voxel cube, the true map's range in
the region).

Maps are (n, P) arrays of P points (a subject's voxels or grid cells); SSIM needs their
positions on a grid (:func:`voxel_grid`).
"""

from __future__ import annotations

import numpy as np

from napari_nrf import space

#: V1-V5 as the simulator names its areas (V5 = hMT); Julich-Brain labels map onto these.
V1_V5 = ("V1", "V2", "V3", "hV4", "hMT")


def zscore_rows(x: np.ndarray) -> np.ndarray:
    """Each row (map) z-scored over its points (float64)."""
    x = np.asarray(x, np.float64)
    return (x - x.mean(1, keepdims=True)) / (x.std(1, keepdims=True) + 1e-12)


def spatial_pearson(pred: np.ndarray, true: np.ndarray) -> np.ndarray:
    """Pearson r (n,) between row ``i`` of ``pred`` and of ``true`` across points."""
    return (zscore_rows(pred) * zscore_rows(true)).mean(1)


def mae(pred: np.ndarray, true: np.ndarray) -> np.ndarray:
    """Mean absolute error (n,) of the maps z-scored within the region (the paper's MAE)."""
    return np.abs(zscore_rows(pred) - zscore_rows(true)).mean(1)


def voxel_grid(coords: np.ndarray) -> tuple[space.Grid, np.ndarray]:
    """A grid through points ``coords`` (V, 3) mm on a regular lattice, and their (V, 3) indices."""
    c = np.asarray(coords, np.float64)
    zooms = []
    for a in range(3):
        u = np.unique(np.round(c[:, a], 3))
        d = np.diff(u)
        zooms.append(float(d[d > 1e-3].min()) if (d > 1e-3).any() else 1.0)
    zooms = np.array(zooms)
    lo = c.min(0)
    ijk = np.rint((c - lo) / zooms).astype(np.int64)
    return space.Grid(tuple(ijk.max(0) + 1), lo, zooms), ijk


def ssim_maps(pred: np.ndarray, true: np.ndarray, ijk: np.ndarray, shape, window: int = 7,
              data_range: float | None = None) -> np.ndarray:
    """3D SSIM (n,) of maps at lattice points ``ijk`` (P, 3) of a grid of ``shape``.

    Maps are z-scored over their points first. Local means, variances and covariance are
    taken over a ``window``-voxel cube among the points present (normalised convolution),
    with the constants of Wang et al. (2004), ``C1 = (0.01 L)^2``, ``C2 = (0.03 L)^2`` and
    ``L = data_range`` (default: each true map's range over its points); the SSIM map is
    averaged over the points.
    """
    from scipy.ndimage import uniform_filter

    pred, true = zscore_rows(pred), zscore_rows(true)
    ijk = np.asarray(ijk)
    m = np.zeros(tuple(shape), np.float64)
    m[tuple(ijk.T)] = 1.0
    w = uniform_filter(m, window, mode="constant")
    w_at = w[tuple(ijk.T)]
    out = np.empty(len(pred))

    def local(v):
        vol = np.zeros(tuple(shape), np.float64)
        vol[tuple(ijk.T)] = v
        return uniform_filter(vol, window, mode="constant")[tuple(ijk.T)] / w_at

    for i, (p, t) in enumerate(zip(pred, true)):
        L = float(t.max() - t.min()) if data_range is None else float(data_range)
        c1, c2 = (0.01 * L) ** 2, (0.03 * L) ** 2
        mp, mt = local(p), local(t)
        vp = local(p * p) - mp * mp
        vt = local(t * t) - mt * mt
        cov = local(p * t) - mp * mt
        s = ((2 * mp * mt + c1) * (2 * cov + c2)) / ((mp * mp + mt * mt + c1) * (vp + vt + c2))
        out[i] = float(s.mean())
    return out


def rsa(pred: np.ndarray, true: np.ndarray) -> float:
    """Pearson r of the upper triangles of the correlation-distance RDMs (n x n) of the
    predicted and the true maps (n, P) (the paper's RSA over all test samples)."""
    iu = np.triu_indices(len(pred), 1)
    if (np.std(pred, 1) == 0).any() or (np.std(true, 1) == 0).any():
        return float("nan")  # a constant map (the "Resting" ablation repeats one map) has no RDM row
    rp = 1 - np.corrcoef(pred)[iu]
    rt = 1 - np.corrcoef(true)[iu]
    if rp.std() == 0 or rt.std() == 0:
        return float("nan")  # identical maps: every distance is 0
    return float(np.corrcoef(rp, rt)[0, 1])


def identification(pred: np.ndarray, true: np.ndarray) -> dict:
    """Who is who, from predicted maps.

    ``pred``, ``true``: (S, n, P) maps of S subjects for the same n images on common points.
    For each image and subject s, the correlation of s's predicted map with every
    subject's true map; s is identified when its own is the highest. Returns
    ``accuracy`` (chance 1/S), ``within`` / ``between`` (mean r to one's own / to
    others' true maps) and ``matrix`` (S x S mean r, predicted rows vs true columns).
    """
    s, n, _ = pred.shape
    zp = np.stack([zscore_rows(p) for p in pred])
    zt = np.stack([zscore_rows(t) for t in true])
    r = np.einsum("anp,bnp->nab", zp, zt) / zp.shape[2]  # (n, S, S)
    hits = (r.argmax(2) == np.arange(s)[None]).mean()
    eye = np.eye(s, dtype=bool)
    return {"accuracy": float(hits), "chance": 1.0 / s, "within": float(r[:, eye].mean()),
            "between": float(r[:, ~eye].mean()), "matrix": r.mean(0).round(4).tolist()}


def inter_subject_matrix(maps: np.ndarray) -> np.ndarray:
    """(S, S) mean over images of the correlation between subjects' maps (S, n, P)."""
    z = np.stack([zscore_rows(m) for m in maps])
    return np.einsum("anp,bnp->ab", z, z) / (z.shape[1] * z.shape[2])


def roi_points(rs, names=V1_V5) -> np.ndarray:
    """Bool (V,) of a response set's voxels whose ROI name (``V1-L`` -> ``V1``) is in ``names``."""
    if rs.roi is None or not rs.roi_names:
        return np.zeros(rs.n_voxels, bool)
    keep = [k for k, v in rs.roi_names.items() if str(v).split("-")[0] in names]
    return np.isin(rs.roi, keep)


def score_maps(pred: np.ndarray, true: np.ndarray, coords: np.ndarray, window: int = 7,
               data_range: float | None = None) -> dict:
    """Mean and sd over maps of spatial Pearson, MAE and SSIM, plus RSA, for (n, P) maps at
    points ``coords`` (P, 3) mm."""
    g, ijk = voxel_grid(coords)
    r, e = spatial_pearson(pred, true), mae(pred, true)
    ss = ssim_maps(pred, true, ijk, g.shape, window=window, data_range=data_range)
    return {"pearson": float(r.mean()), "pearson_sd": float(r.std()), "mae": float(e.mean()),
            "ssim": float(ss.mean()), "rsa": rsa(pred, true) if len(pred) > 2 else float("nan"),
            "n_maps": int(len(pred)), "n_points": int(pred.shape[1]),
            "ssim_window": int(window), "ssim_data_range": "true map range" if data_range is None else data_range}
