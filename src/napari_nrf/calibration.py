"""Per-voxel gains that put a trained model's predictions in the data's units.

An early-stopped model is shrunken by an amount that depends on the data set (noise,
voxel count, training size): its r is good but its maps are too small (a calibration
slope of 1.4 on a world the project did not make). After training,
:func:`napari_nrf.train.fit` fits a :class:`Calibration` on the validation split, the
bundle stores it and every consumer applies it through :func:`apply` (the query engine
for grids and points, :func:`napari_nrf.train.predict_set` for a response set's voxels,
hence evaluate and the widgets). A model without one (an old bundle) predicts exactly as
before.

The estimator (empirical Bayes, a random-effects model of the per-voxel gains)
--------------------------------------------------------------------------------
For each voxel ``v`` of a validation set with ``n`` images, predictions ``p`` and measured
responses ``y`` are centred over the images and

* ``g_v = sum(p y) / sum(p^2)`` is the voxel's least-squares gain (the slope of ``y`` on
  ``p``; noise in ``y`` independent of the prediction leaves it unbiased for the slope
  against the noiseless truth), ``s_v^2 = rss_v / (n - 2) / sum(p^2)`` its sampling
  variance;
* ``G = sum_v sum(p y) / sum_v sum(p^2)`` is the global gain (the pooled calibration
  slope of :func:`napari_nrf.evaluate.calibration_slope`, over every validation set);
* the spread ``tau^2`` of the true gains around ``G`` is the DerSimonian-Laird moment
  estimate over the voxels (weights ``1 / s_v^2``);
* each voxel's gain is the posterior mean ``G + lambda_v (g_v - G)`` with reliability
  ``lambda_v = tau^2 / (tau^2 + s_v^2)``: a noisy voxel keeps about ``G``, a reliable one
  its own gain (a posterior mean is calibrated on average: E[true gain x estimate] =
  E[estimate^2], so the pooled slope stays 1). Gains are kept within
  ``[0.1 G, 10 G]`` (a voxel's sign is the model's, never flipped by validation noise).

A set with fewer than :data:`MIN_VOXEL_IMAGES` (10) validation images gives its voxels
``G`` only (``info["fallback"]`` says which); with fewer than 2 validation images in all,
or ``G <= 0`` (the model does not predict the validation responses), no calibration is
fitted (gain 1) and ``info["reason"]`` says why.

The gain is applied to the image-driven part of a prediction: ``c + g (p - c)``, ``c`` the
voxel's mean prediction over the validation images (the model's own offset is kept).

Gains at any MNI point (continuous kinds)
-----------------------------------------
A field answers between and beyond its training voxels, so the gain and offset at a point
``x`` are a Gaussian-weighted mean of those of the (up to 8) nearest calibrated voxels,
with the global values as one more pseudo-voxel at distance ``h`` (``h`` = the voxels'
median nearest-neighbour spacing, sigma = ``h / 4``): at a calibrated voxel its own gain
(a neighbour one spacing away weighs 3e-4), smooth in between (two voxels' mean half-way),
and the global gain farther than about one spacing from any calibrated voxel. Points of a subject the calibration does not
know take the pooled voxels of every calibrated subject.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

MIN_VOXEL_IMAGES = 10  # validation images below which a set's voxels take the global gain
MIN_GLOBAL_IMAGES = 2  # validation images below which no calibration is fitted
GAIN_RANGE = (0.1, 10.0)  # per-voxel gains are kept within this multiple of the global gain
_K = 8  # calibrated voxels averaged at a point
TENSOR_PREFIX = "calibration."


class CalibrationError(ValueError):
    """A bundle's calibration tensors or metadata are malformed."""


@dataclass
class Calibration:
    """Gains of a model's predictions: one global, and per calibrated voxel of each subject.

    Attributes
    ----------
    global_gain, global_center : float
        Gain and offset for points and subjects without their own.
    voxels : dict subject -> (V, 5) float32
        Per voxel: MNI x, y, z (mm), gain, offset (the mean validation prediction), in the
        order of the subject's voxels (voxel-indexed kinds index it by voxel).
    info : dict
        JSON-able: the estimator, validation images per subject, tau^2, fallbacks.
    """

    global_gain: float = 1.0
    global_center: float = 0.0
    voxels: dict = field(default_factory=dict)
    info: dict = field(default_factory=dict)

    def __post_init__(self):
        self._trees: dict = {}

    # ---- gains at voxels and points -------------------------------------------------------
    def at_voxels(self, subject, idx) -> tuple[np.ndarray, np.ndarray]:
        """(gain, offset) (n,) float32 of voxel indices ``idx`` (n,) of ``subject`` (the
        global ones for a subject without gains of its own)."""
        idx = np.asarray(idx, np.int64)
        v = self.voxels.get(subject)
        if v is None or (len(idx) and int(idx.max()) >= len(v)):
            return (np.full(len(idx), self.global_gain, np.float32),
                    np.full(len(idx), self.global_center, np.float32))
        return v[idx, 3].copy(), v[idx, 4].copy()

    def at_points(self, xyz, subject=None) -> tuple[np.ndarray, np.ndarray]:
        """(gain, offset) (N,) float32 at MNI points ``xyz`` (N, 3) mm: the Gaussian-weighted
        mean over nearby calibrated voxels of ``subject`` (all subjects' when it has none),
        blended into the global values beyond about one voxel spacing (module doc)."""
        xyz = np.asarray(xyz, np.float64).reshape(-1, 3)
        n = len(xyz)
        g = np.full(n, self.global_gain, np.float64)
        c = np.full(n, self.global_center, np.float64)
        tree = self._tree(subject if subject in self.voxels else None)
        if tree is None or n == 0:
            return g.astype(np.float32), c.astype(np.float32)
        kd, table, h = tree
        k = min(_K, len(table))
        d, j = kd.query(xyz, k=k, distance_upper_bound=2.0 * h)
        d, j = d.reshape(n, k), j.reshape(n, k)
        ok = np.isfinite(d)
        sig2 = 2.0 * (h / 4.0) ** 2
        w = np.where(ok, np.exp(-np.where(ok, d, 0.0) ** 2 / sig2), 0.0)
        w0 = np.exp(-h * h / sig2)  # the global pseudo-voxel at distance h
        jj = np.where(ok, j, 0)
        den = w.sum(1) + w0
        g = ((w * table[jj, 3]).sum(1) + w0 * self.global_gain) / den
        c = ((w * table[jj, 4]).sum(1) + w0 * self.global_center) / den
        return g.astype(np.float32), c.astype(np.float32)

    def _tree(self, subject):
        """(cKDTree, (V, 5) table, spacing h mm) of ``subject``'s voxels (None: pooled)."""
        if subject not in self._trees:
            from scipy.spatial import cKDTree

            tabs = [self.voxels[subject]] if subject is not None else list(self.voxels.values())
            tabs = [t for t in tabs if len(t)]
            if not tabs:
                self._trees[subject] = None
                return None
            table = np.concatenate(tabs).astype(np.float64)
            kd = cKDTree(table[:, :3])
            h = 2.0
            if len(table) > 1:
                d, _ = kd.query(table[:: max(1, len(table) // 2000), :3], k=2)
                pos = d[:, 1][d[:, 1] > 0]
                h = float(np.median(pos)) if len(pos) else 2.0
            self._trees[subject] = (kd, table, max(h, 1e-3))
        return self._trees[subject]

    # ---- summary and bundles --------------------------------------------------------------
    def summary(self) -> dict:
        """JSON-able: global gain and offset, the per-subject gains' quartiles and ``info``."""
        subs = {s: {"n_voxels": int(len(v)),
                    "gain_quartiles": [round(float(q), 4) for q in np.percentile(v[:, 3], [25, 50, 75])]
                    if len(v) else []} for s, v in self.voxels.items()}
        return {"global_gain": float(self.global_gain), "global_center": float(self.global_center),
                "subjects": subs, **self.info}

    def bundle_parts(self) -> tuple[dict, dict]:
        """(tensors, metadata) to add to a bundle: ``calibration.<subject>`` (V, 5) float32
        tensors and the metadata key ``calibration``."""
        import torch

        tensors = {f"{TENSOR_PREFIX}{s}": torch.from_numpy(np.ascontiguousarray(v, np.float32))
                   for s, v in self.voxels.items()}
        meta = {"global_gain": float(self.global_gain), "global_center": float(self.global_center),
                "subjects": {s: f"{TENSOR_PREFIX}{s}" for s in self.voxels}, "info": self.info}
        return tensors, meta

    @classmethod
    def from_bundle(cls, tensors: dict, meta) -> "Calibration | None":
        """The calibration of a bundle (None when it has none: gain 1). Raises
        :class:`CalibrationError` naming the field at fault."""
        if meta is None:
            return None
        if not isinstance(meta, dict):
            raise CalibrationError("metadata field 'calibration' is not an object")
        try:
            gg, gc = float(meta["global_gain"]), float(meta["global_center"])
        except (KeyError, TypeError, ValueError):
            raise CalibrationError("metadata field 'calibration.global_gain' or 'global_center' is missing "
                                   "or not a number") from None
        if not (np.isfinite(gg) and np.isfinite(gc)):
            raise CalibrationError("metadata field 'calibration.global_gain' is not finite")
        subs = meta.get("subjects") or {}
        if not isinstance(subs, dict):
            raise CalibrationError("metadata field 'calibration.subjects' is not an object")
        vox = {}
        for s, key in subs.items():
            if key not in tensors:
                raise CalibrationError(f"metadata field 'calibration.subjects.{s}' names {key!r}, "
                                       "which is not in the file")
            t = np.asarray(tensors[key].float().cpu().numpy(), np.float32)
            if t.ndim != 2 or t.shape[1] != 5 or not np.isfinite(t).all():
                raise CalibrationError(f"tensor {key}: calibration must be finite (V, 5), got {t.shape}")
            vox[s] = t
        info = meta.get("info") if isinstance(meta.get("info"), dict) else {}
        return cls(gg, gc, vox, info)


def apply(pred, gain, center):
    """``center + gain * (pred - center)``: ``pred`` (..., N) numpy array or torch tensor,
    ``gain``/``center`` (N,) numpy arrays (moved to the tensor's device and dtype)."""
    if isinstance(pred, np.ndarray):
        return (center + gain * (pred - center)).astype(pred.dtype, copy=False)
    import torch

    g = torch.as_tensor(np.asarray(gain), device=pred.device, dtype=pred.dtype)
    c = torch.as_tensor(np.asarray(center), device=pred.device, dtype=pred.dtype)
    return c + g * (pred - c)


def apply_model(model, pred, coords=None, voxels=None, subject=None):
    """``model``'s predictions ``pred`` (B, N) (numpy or torch, uncalibrated) with its
    calibration applied: at MNI points ``coords`` (N, 3) mm for a continuous kind or when no
    ``voxels`` are given, else at voxel indices ``voxels`` (N,) of ``subject`` (None: the
    model's only subject). Unchanged for a model without a calibration."""
    cal = model.calibration
    if cal is None:
        return pred
    if voxels is None or (model.continuous and coords is not None):
        return apply(pred, *cal.at_points(coords, subject))
    if subject is None and len(model.subjects) == 1:
        subject = next(iter(model.subjects))
    return apply(pred, *cal.at_voxels(subject, voxels))


def estimate(sets, min_voxel_images: int = MIN_VOXEL_IMAGES) -> tuple[Calibration | None, dict]:
    """Fit a :class:`Calibration` (module doc) on validation predictions.

    Parameters
    ----------
    sets : list of (subject, coords (V, 3) mm, pred (n, V), true (n, V))
        Each subject's validation predictions of the trained model and its measured responses.

    Returns
    -------
    (Calibration or None, info dict): None when none can be fitted (``info["reason"]``).
    """
    stats = []
    n_val = {}
    for subject, xyz, pred, true in sets:
        p = np.asarray(pred, np.float64)
        y = np.asarray(true, np.float64)
        n_val[subject] = int(len(p))
        if len(p) < MIN_GLOBAL_IMAGES:
            continue
        mu = p.mean(0)
        pc, yc = p - mu, y - y.mean(0)
        a, b, syy = (pc * yc).sum(0), (pc * pc).sum(0), (yc * yc).sum(0)
        stats.append((subject, np.asarray(xyz, np.float32), len(p), a, b, syy, mu))
    info = {"estimator": "empirical Bayes (DerSimonian-Laird tau^2), shrunk to the global gain",
            "n_val_images": n_val, "min_voxel_images": int(min_voxel_images)}
    if not stats:
        info["reason"] = (f"fewer than {MIN_GLOBAL_IMAGES} validation images: no calibration "
                          "(gain 1, the predictions as trained)")
        return None, info
    sa = sum(float(s[3].sum()) for s in stats)
    sb = sum(float(s[4].sum()) for s in stats)
    G = sa / sb if sb > 0 else float("nan")
    if not np.isfinite(G) or G <= 0:
        info["reason"] = f"the global gain is {G:.3g} (the predictions do not follow the validation responses): " \
                         "no calibration (gain 1)"
        return None, info
    centers = [float(np.mean(s[6])) for s in stats]
    gc = float(np.mean(centers))
    # Per-voxel gains and their sampling variances, voxels of sets with enough images.
    own = {s[0]: _voxel_gains(*s[2:6], G) for s in stats if s[2] >= min_voxel_images}
    gs = [g[np.isfinite(v)] for g, v in own.values()]
    vs = [v[np.isfinite(v)] for g, v in own.values()]
    tau2 = 0.0
    if gs and sum(len(g) for g in gs) > 1:
        g, v = np.concatenate(gs), np.concatenate(vs)
        w = 1.0 / v
        gbar = float((w * g).sum() / w.sum())
        q = float((w * (g - gbar) ** 2).sum())
        den = float(w.sum() - (w * w).sum() / w.sum())
        tau2 = max(0.0, (q - (len(g) - 1)) / den) if den > 0 else 0.0
    info["tau2"] = tau2
    lo, hi = GAIN_RANGE[0] * G, GAIN_RANGE[1] * G
    fallback = []
    vox = {}
    for subject, xyz, n, a, b, syy, mu in stats:
        if n < min_voxel_images:
            fallback.append(subject)
            gain = np.full(len(a), G)
        else:
            g, var = own[subject]
            fin = np.isfinite(var)
            lam = np.where(fin, tau2 / np.where(fin, tau2 + var, 1.0), 0.0) if tau2 > 0 else np.zeros(len(g))
            gain = np.clip(G + lam * (g - G), lo, hi)
        if len(xyz) != len(a):
            raise ValueError(f"calibration of {subject}: {len(xyz)} coordinates for {len(a)} voxels")
        vox[subject] = np.column_stack([xyz, gain, mu]).astype(np.float32)
    if fallback:
        info["fallback"] = {s: f"{n_val[s]} validation images (< {min_voxel_images}): the global gain only"
                            for s in fallback}
    return Calibration(float(G), gc, vox, info), info


def _voxel_gains(n: int, a, b, syy, G: float) -> tuple[np.ndarray, np.ndarray]:
    """Least-squares gain ``a / b`` (V,) of each voxel from the centred sums ``a = sum(p y)``,
    ``b = sum(p^2)``, ``syy = sum(y^2)`` over ``n`` images, and its sampling variance
    ``rss / (n - 2) / b`` (inf where the prediction or the residual does not vary: such a
    voxel keeps the global gain ``G``)."""
    ok = b > 1e-12 * max(1.0, float(b.max()))
    g = np.where(ok, a / np.where(ok, b, 1.0), G)
    rss = np.maximum(syy - g * a, 0.0)
    var = np.where(ok & (rss > 0), rss / max(n - 2, 1) / np.where(ok, b, 1.0), np.inf)
    return g, var


def describe(info: dict, cal: Calibration | None) -> str:
    """One line for logs and progress: what the calibration did."""
    if cal is None:
        return f"calibration: {info.get('reason', 'none')}"
    line = f"calibration: global gain {cal.global_gain:.3f}"
    if info.get("fallback"):
        line += "; " + "; ".join(f"{s}: {m}" for s, m in info["fallback"].items())
    else:
        line += f", per voxel shrunk by reliability (tau^2 {info.get('tau2', 0.0):.3g})"
    return line
