"""Anatomy of the virtual subjects: visual areas in MNI space and smooth random fields.

Area centroids (right hemisphere; the left one mirrors x) are rounded from published
MNI coordinates: V1, V2, V3, hV4 and hMT from the Wang et al. (2015) probabilistic
atlas of visual topography; FFA (Kanwisher et al., 1997), PPA (Epstein & Kanwisher,
1998), EBA (Downing et al., 2001) and LO from the group-constrained parcels of Julian
et al. (2012); the left-lateralised VWFA from Cohen et al. (2000). V2 and V3 have a
dorsal and a ventral part around V1 (the lower and the upper visual field).

Each area contributes a soft Gaussian membership ``m_a(x) = exp(-|x - c_a|^2 / 2 r_a^2)``;
responses mix the areas' tuning with these weights, so the truth is a smooth function
of position while ROI labels (argmax membership) stay discrete.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .descriptors import SCORES


@dataclass(frozen=True)
class Area:
    """One blob of a visual area (right-hemisphere centroid, mm; radius, mm)."""

    name: str
    centroid: tuple
    radius: float
    early: float  # weight of the pRF contrast-energy path
    size: float  # pRF size multiplier (grows along the hierarchy)
    exponent: float  # compressive spatial summation exponent
    tuning: dict  # weights over descriptor SCORES
    left_only: bool = False


AREAS = (
    Area("V1", (9, -90, 0), 8.0, 1.0, 1.0, 0.9, {"contrast": 0.1}),
    Area("V2", (12, -93, 13), 6.5, 1.0, 1.5, 0.75, {"contrast": 0.1}),  # dorsal
    Area("V2", (12, -85, -9), 6.5, 1.0, 1.5, 0.75, {"contrast": 0.1}),  # ventral
    Area("V3", (20, -91, 18), 6.5, 0.9, 2.2, 0.6, {"contrast": 0.15}),
    Area("V3", (22, -80, -13), 6.5, 0.9, 2.2, 0.6, {"contrast": 0.15}),
    Area("hV4", (28, -81, -12), 7.0, 0.7, 3.2, 0.5, {"colour": 0.5, "centre": 0.15, "object": 0.2}),
    Area("LO", (40, -84, -6), 7.0, 0.3, 4.0, 0.45, {"object": 1.8, "centre": 0.3, "face": 0.5, "body": 0.4}),
    Area("hMT", (46, -77, 4), 6.5, 0.5, 5.0, 0.4, {"coarse": 0.4, "contrast": 0.4, "body": 0.25}),
    Area("EBA", (48, -72, 4), 6.5, 0.15, 5.0, 0.4, {"body": 2.0, "face": 0.5}),
    Area("FFA", (40, -55, -20), 6.0, 0.1, 5.0, 0.4, {"face": 2.0, "body": 0.5, "object": 0.2}),
    Area("PPA", (28, -45, -10), 6.5, 0.1, 6.0, 0.4,
         {"scene": 2.0, "layout": 0.3, "rectilinear": 0.3, "spread": 0.3, "face": -0.3}),
    Area("VWFA", (44, -58, -14), 6.0, 0.15, 5.0, 0.4, {"text": 2.0, "fine": 0.25, "face": -0.2}, left_only=True),
)
AREA_NAMES = tuple(dict.fromkeys(a.name for a in AREAS))
EARLY_AREAS = ("V1", "V2", "V3", "hV4")


def roi_names() -> dict:
    """ROI label -> name, e.g. {1: "V1-L", 2: "V1-R", ...}; 0 means none."""
    out, k = {}, 1
    for name in AREA_NAMES:
        for hemi in ("L", "R"):
            if hemi == "R" and all(a.left_only for a in AREAS if a.name == name):
                continue
            out[k] = f"{name}-{hemi}"
            k += 1
    return out


def blobs():
    """(name, hemisphere 'L'/'R', centroid (3,), Area) for every blob of both hemispheres."""
    out = []
    for a in AREAS:
        for hemi, sx in (("L", -1), ("R", 1)):
            if a.left_only and hemi == "R":
                continue
            c = np.array(a.centroid, np.float64) * np.array([sx, 1, 1])
            if a.left_only:
                c[0] = -abs(c[0])
            out.append((a.name, hemi, c, a))
    return out


def tuning_vector(area: Area) -> np.ndarray:
    v = np.zeros(len(SCORES), np.float32)
    for k, w in area.tuning.items():
        v[SCORES.index(k)] = w
    return v


class SmoothField:
    """``n`` independent smooth random fields over MNI space (Gaussian-kernel GP samples).

    ``f(x) = sqrt(2 / K) * sum_k cos(w_k . x + phi_k)`` with ``w_k ~ N(0, 1 / length^2)``:
    unit variance, correlation ``exp(-d^2 / 2 length^2)`` at distance ``d`` mm, and
    defined (continuous, infinitely smooth) at every point.
    """

    def __init__(self, n: int, length_mm: float, seed, n_features: int = 32):
        rng = np.random.default_rng(seed)
        self.n, self.k = int(n), int(n_features)
        self.w = (rng.normal(size=(n * n_features, 3)) / length_mm).astype(np.float64)
        self.phi = rng.uniform(0, 2 * np.pi, size=n * n_features).astype(np.float64)
        self.scale = np.sqrt(2.0 / n_features)

    def __call__(self, xyz) -> np.ndarray:
        """(N, 3) MNI mm -> (N, n) float32."""
        x = np.asarray(xyz, np.float64).reshape(-1, 3)
        arg = x @ self.w.T + self.phi  # float64: phases of far points stay exact
        return (np.cos(arg).reshape(len(x), self.n, self.k).sum(-1) * self.scale).astype(np.float32)
