"""Virtual experiments: contrasts and localizers between image sets, with statistics (Qt-free).

>>> res = contrast(model, "faces/", "places/", resolution=2.0)      # every image predicted once
>>> res.effect, res.t, res.z          # (X, Y, Z) float32 on res.grid, NaN outside the extent
>>> res.threshold                     # |t| above which a voxel is significant (FWE, alpha 0.05)
>>> rows = res.clusters(atlas=None)   # peaks / clusters (nilearn's get_clusters_table) + region names
>>> write_contrast(res, "out/", model_path="model.safetensors")   # MNI NIfTI + sidecars + clusters.tsv
>>> loc = localizer(model, "categories/")   # one sub-folder per category: each vs the rest + a label map

What the statistics mean. The model predicts one response volume per image; the
**images are the random effect**: the Welch t at a voxel asks whether the mean predicted
response of set A differs from that of set B beyond the spread between images of each
set, so it generalises to *other images like these* seen by *this model*. It says nothing
about trial-to-trial noise, other people or the model's own error (a model that is wrong
about faces is confidently wrong); those need data, not a virtual experiment.

Family-wise error: the sets' labels are permuted (images exchangeable under the null) and
the maximum statistic over the extent is recorded per permutation; the (1 - alpha)
quantile of those maxima is the threshold (Nichols & Holmes 2002). The permutations reuse
the predictions, so 1,000 of them cost matrix products, not queries. When the number of
distinct splits is at most ``n_permutations`` they are all enumerated (an exact test).
FDR (Benjamini-Hochberg over the extent's voxels) uses the Welch t's parametric p-values.
"""

from __future__ import annotations

import csv
import glob
import itertools
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from napari_nrf import space, volume_meta
from napari_nrf.errors import Cancelled, NapariNRFError, write_text_atomic
from napari_nrf.space import Grid

TAILS = ("two-sided", "greater", "less")
CORRECTIONS = ("fwe", "fdr", "none")
EXTENTS = ("data", "brain", "gm", "none")
DEFAULT_ATLAS_NAME = "napari-nrf visual areas (the simulator's published group centroids, simulate/anatomy.py)"


class ExperimentError(NapariNRFError):
    """A virtual experiment cannot run on these inputs (empty set, one image, a model with no volume, ...)."""


class ExperimentCancelled(Cancelled):
    """The user stopped a virtual experiment."""


# ---- inputs -------------------------------------------------------------------------------
def image_set(spec, label: str = "A") -> tuple[list, list[str]]:
    """Images of one set and their names.

    ``spec``: a folder (its image files), a glob pattern (``"faces/*.png"``), a text file
    listing image paths (``.txt``/``.lst``, one per line, relative to the list's folder), a
    list of any of these, a (B, H, W, 3) array or a list of (H, W, 3) arrays.
    Returns ``(images, names)``: paths (str) or arrays, and one display name per image.
    Raises :class:`ExperimentError` naming the set for an empty set or a missing file.
    """
    from napari_nrf.features import image_files
    from napari_nrf.features.images import ImageError

    if spec is None:
        raise ExperimentError(f"set {label}: no images given")
    if isinstance(spec, np.ndarray) and spec.ndim == 4:
        items = list(spec)
    elif isinstance(spec, (str, os.PathLike)):
        items = [spec]
    else:
        items = list(spec)
    if not items:
        raise ExperimentError(f"set {label} is empty: give a folder, a glob pattern or a list of images")
    if all(isinstance(x, np.ndarray) for x in items):
        return items, [f"{label}[{i}]" for i in range(len(items))]
    paths = []
    for x in items:
        if isinstance(x, np.ndarray):
            raise ExperimentError(f"set {label} mixes arrays and file names: give one or the other")
        s = str(x)
        if any(c in s for c in "*?[") and not Path(s).exists():
            hits = sorted(glob.glob(s))
            if not hits:
                raise ExperimentError(f"set {label}: the pattern {s} matches no file")
            paths += hits
        elif not Path(s).exists():
            raise ExperimentError(f"set {label}: {s} does not exist")
        elif Path(s).suffix.lower() in LIST_SUFFIXES:
            paths += _list_file(Path(s), label)
        else:
            paths.append(s)
    try:
        files = image_files(paths)
    except ImageError as exc:
        raise ExperimentError(f"set {label}: {exc}") from None
    if not files:
        raise ExperimentError(f"set {label} is empty: no image files in {', '.join(map(str, items))}")
    return files, [str(f) for f in files]


LIST_SUFFIXES = (".txt", ".lst")


def _list_file(path: Path, label: str) -> list[str]:
    """The image paths listed in a text file, one per line (relative to the file's folder;
    blank lines and ``#`` comments skipped)."""
    try:
        lines = path.read_text().splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise ExperimentError(f"set {label}: cannot read the list {path} ({exc})") from None
    out = []
    for ln in lines:
        ln = ln.strip()
        if ln and not ln.startswith("#"):
            p = Path(ln) if Path(ln).is_absolute() else path.parent / ln
            if not p.exists():
                raise ExperimentError(f"set {label}: {p} (listed in {path.name}) does not exist")
            out.append(str(p))
    return out


def category_sets(folder) -> dict[str, list[str]]:
    """``{category: image files}`` of a localizer folder: one sub-folder per category
    (sorted by name; hidden folders skipped). Raises :class:`ExperimentError` for fewer than
    two categories or a category with fewer than two images."""
    from napari_nrf.features.images import IMAGE_SUFFIXES

    root = Path(folder)
    if not root.is_dir():
        raise ExperimentError(f"localizer: {root} is not a folder (one sub-folder of images per category)")
    out = {}
    for sub in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        files = sorted(str(f) for f in sub.iterdir() if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES)
        if files:
            out[sub.name] = files
    if len(out) < 2:
        raise ExperimentError(f"localizer: {root} has {len(out)} sub-folder(s) with images; a localizer needs "
                              "at least two categories, one sub-folder each")
    small = [k for k, v in out.items() if len(v) < 2]
    if small:
        raise ExperimentError(f"localizer: category {small[0]} in {root} has {len(out[small[0]])} image; each "
                              "category needs at least 2 (the statistic is across images)")
    return out


def check_model(model) -> None:
    """Raise :class:`ExperimentError` unless ``model`` predicts a response volume from an image."""
    kind = model.kind
    if model.inputs != "images":
        raise ExperimentError(f"a {kind} model predicts from {model.inputs}, not from one image: a contrast between "
                              "image sets needs a model that predicts a volume per image (NRF, Universal, "
                              "ensemble, Rest2Visual)")
    if not model.continuous and not model.subjects:
        raise ExperimentError(f"this {kind} model has no subject voxels and is not a continuous field: it predicts "
                              "no volume")


def resolve_extent(model, grid: Grid, extent) -> tuple[np.ndarray, str]:
    """The voxels tested (bool ``grid.shape``) and the extent's name.

    ``extent``: "data" (brain voxels near the model's training voxels, the default;
    "brain" for a model that records none), "brain", "gm", "none" (every grid point), a
    bool array of ``grid.shape`` or a mask / label NIfTI path.
    """
    from napari_nrf.query import coverage_mask

    if isinstance(extent, np.ndarray):
        m = np.asarray(extent, bool)
        if m.shape != grid.shape:
            raise ExperimentError(f"extent mask has shape {m.shape}, the {grid.resolution:g} mm grid {grid.shape}")
        name = "ROI"
    elif extent in (None, "data", "coverage"):
        if model.subjects:
            m, name = coverage_mask(model, grid), "data"
        else:
            m, name = space.brain_mask(grid), "brain"
    elif extent in ("none", "all"):
        m, name = np.ones(grid.shape, bool), "none"
    else:
        m, name = space.resolve_mask(extent, grid), volume_meta.mask_name(extent)
    if m is None or not m.any():
        raise ExperimentError(f"extent {name}: no voxel of the {grid.resolution:g} mm grid to test")
    return m, name


# ---- predictions ----------------------------------------------------------------------------
def predict_sets(model, sets, grid: Grid, mask: np.ndarray, subject=None, device=None, feature_cache=None,
                 batch: int | None = None, progress=None, cancel=None) -> list[np.ndarray]:
    """Predicted responses of every image of every set at the extent's voxels.

    ``sets``: list of image lists (paths or (H, W, 3) arrays). Returns one float32 array
    (n_images, n_voxels) per set, voxels in C order of ``np.flatnonzero(mask)``. Images are
    encoded and queried in batches (features cached in memory and in ``feature_cache``);
    a voxel-indexed model's voxels are placed on ``grid`` as the query engine does.
    ``progress(done, total, message)`` counts images; ``cancel()`` is polled per batch.
    """
    from napari_nrf.features import load_image_file
    from napari_nrf.query import QueryCancelled, QueryEngine

    check_model(model)
    eng = QueryEngine(model, device=device, feature_cache=feature_cache)
    continuous = bool(model.continuous)
    if batch is None:  # a voxel model's batch makes full-grid volumes: about 256 MB of them at most
        batch = 50 if continuous else int(max(1, min(32, (256 << 20) // max(1, grid.n_points * 4))))
    total = sum(len(s) for s in sets)
    done, out = 0, []
    flat = np.flatnonzero(mask)
    xyz = grid.coords(mask) if continuous else None  # a field is asked at the extent's points only
    for imgs in sets:
        vals = np.empty((len(imgs), flat.size), np.float32)
        for s in range(0, len(imgs), batch):
            if cancel is not None and cancel():
                raise ExperimentCancelled("virtual experiment cancelled")
            chunk = [load_image_file(x) if isinstance(x, (str, os.PathLike)) else x for x in imgs[s:s + batch]]
            try:
                if continuous:
                    vals[s:s + len(chunk)] = eng.points(chunk, xyz, subject=subject, cancel=cancel)
                else:
                    vol = eng.volume(chunk, grid, mask=mask, subject=subject, cancel=cancel)
                    vals[s:s + len(chunk)] = vol.reshape(len(chunk), -1)[:, flat]
            except QueryCancelled:
                raise ExperimentCancelled("virtual experiment cancelled") from None
            done += len(chunk)
            if progress is not None:
                progress(done, total, "predicting")
        out.append(vals)
    return out


# ---- statistics -------------------------------------------------------------------------------
def welch(ya: np.ndarray, yb: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Welch's two-sample t across images, per voxel.

    ``ya`` (n_a, V), ``yb`` (n_b, V) float. Returns ``(effect, t, df)`` (V,) float32:
    mean(A) - mean(B) in the data's units, Welch t (0 where both sets are constant) and
    the Welch-Satterthwaite degrees of freedom.
    """
    ya, yb = np.asarray(ya, np.float64), np.asarray(yb, np.float64)
    na, nb = len(ya), len(yb)
    eff = ya.mean(0) - yb.mean(0)
    va, vb = ya.var(0, ddof=1) / na, yb.var(0, ddof=1) / nb
    se2 = va + vb
    ok = se2 > 0
    t = np.where(ok, eff / np.sqrt(np.where(ok, se2, 1.0)), 0.0)
    df = np.where(ok, se2 ** 2 / np.where(ok, va ** 2 / (na - 1) + vb ** 2 / (nb - 1), 1.0), na + nb - 2.0)
    df = np.where(np.isfinite(df), df, na + nb - 2.0)
    return eff.astype(np.float32), t.astype(np.float32), df.astype(np.float32)


def t_to_z(t: np.ndarray, df: np.ndarray) -> np.ndarray:
    """z with the same one-sided tail probability as Welch t with ``df`` (sign kept; exact
    far in the tails through log-probabilities)."""
    from scipy import special, stats

    t = np.asarray(t, np.float64)
    logp = stats.t.logsf(np.abs(t), np.asarray(df, np.float64))
    return (np.sign(t) * -special.ndtri_exp(logp)).astype(np.float32)


def _tail_stat(t: np.ndarray, tail: str) -> np.ndarray:
    return np.abs(t) if tail == "two-sided" else (t if tail == "greater" else -t)


def permutation_max(y: np.ndarray, n_a: int, n_permutations: int = 1000, tail: str = "two-sided", seed: int = 0,
                    cancel=None, progress=None, chunk: int | None = None) -> tuple[np.ndarray, bool]:
    """The null distribution of the maximum Welch statistic over voxels.

    ``y`` (n, V): the predictions of A (first ``n_a`` rows) then B. The labels are
    re-drawn ``n_permutations`` times (or every distinct split when there are at most that
    many: then the test is exact); the observed labelling is the first entry. Returns
    ``(maxima (P,) float32, exact)``. Sums and sums of squares of A come from one matrix
    product per block of permutations, so the predictions are never recomputed.
    """
    y = np.asarray(y, np.float64)
    n, v = y.shape
    y = (y - y.mean(0)).astype(np.float32)  # centred: float32 sums of squares keep their precision
    y2 = y * y
    s_all, q_all = y.sum(0, dtype=np.float64), y2.sum(0, dtype=np.float64)
    n_b = n - n_a
    n_splits = math.comb(n, n_a)
    exact = n_splits <= n_permutations + 1
    if exact:
        splits = np.zeros((n_splits, n), np.float32)
        first = tuple(range(n_a))
        combos = [first] + [c for c in itertools.combinations(range(n), n_a) if c != first]
        for i, c in enumerate(combos):
            splits[i, list(c)] = 1
    else:
        rng = np.random.default_rng(seed)
        splits = np.zeros((n_permutations + 1, n), np.float32)
        splits[0, :n_a] = 1
        for i in range(1, n_permutations + 1):
            splits[i, rng.permutation(n)[:n_a]] = 1
    chunk = chunk or int(max(8, min(256, (64 << 20) // max(1, v * 4 * 6))))
    out = np.empty(len(splits), np.float32)
    for s in range(0, len(splits), chunk):
        if cancel is not None and cancel():
            raise ExperimentCancelled("virtual experiment cancelled")
        ind = splits[s:s + chunk]
        sa = ind @ y
        qa = ind @ y2
        sb = s_all.astype(np.float32) - sa
        qb = q_all.astype(np.float32) - qa
        ma, mb = sa / n_a, sb / n_b
        va = np.maximum(qa - sa * ma, 0) / (n_a - 1) / n_a
        vb = np.maximum(qb - sb * mb, 0) / (n_b - 1) / n_b
        se = np.sqrt(va + vb)
        t = np.divide(ma - mb, se, out=np.zeros_like(se), where=se > 0)
        out[s:s + len(ind)] = _tail_stat(t, tail).max(1)
        if progress is not None:
            progress(min(s + chunk, len(splits)), len(splits), "permutations")
    return out, exact


def fwe_threshold(null_max: np.ndarray, alpha: float) -> float:
    """The statistic above which a voxel is significant at family-wise ``alpha``: with the
    maxima sorted in decreasing order ``s``, a voxel ``x`` has corrected p
    ``#{s >= x} / len(s)`` <= alpha exactly when ``x > s[k]``, ``k = floor(alpha len(s))``.
    Infinity when no voxel can reach ``alpha`` (too few distinct splits)."""
    s = np.sort(np.asarray(null_max, np.float64))[::-1]
    k = int(math.floor(alpha * len(s) + 1e-9))
    if k < 1:
        return math.inf
    return float(s[k]) if k < len(s) else -math.inf


def fdr_threshold(stat: np.ndarray, df: np.ndarray, alpha: float, tail: str) -> float:
    """Benjamini-Hochberg over the voxels' parametric Welch p-values; returns the smallest
    significant statistic minus a hair (infinity when nothing survives)."""
    from scipy import stats

    p = stats.t.sf(stat, df) * (2.0 if tail == "two-sided" else 1.0)
    p = np.minimum(p, 1.0)
    order = np.argsort(p)
    m = len(p)
    ok = p[order] <= alpha * np.arange(1, m + 1) / m
    if not ok.any():
        return math.inf
    last = int(np.flatnonzero(ok)[-1])
    return float(np.nextafter(np.float32(stat[order[: last + 1]].min()), np.float32(-np.inf)))


# ---- results ----------------------------------------------------------------------------------
@dataclass
class ContrastResult:
    """A contrast A - B on ``grid`` (every volume (X, Y, Z) float32, NaN outside ``mask``).

    effect: mean(A) - mean(B) in ``units``; t: Welch t across images; z: the z of t's tail
    probability; df: Welch-Satterthwaite degrees of freedom; threshold: the statistic (t,
    in the ``tail``'s direction) above which a voxel is significant under ``correction`` at
    ``alpha``; p_fwe: the voxels' family-wise corrected p (FWE only, else None).
    """

    grid: Grid
    mask: np.ndarray
    effect: np.ndarray
    t: np.ndarray
    z: np.ndarray
    df: np.ndarray
    threshold: float
    correction: str
    alpha: float
    tail: str
    n_permutations: int
    exact: bool
    names_a: list = field(default_factory=list)
    names_b: list = field(default_factory=list)
    units: str = volume_meta.DEFAULT_UNITS
    extent: str = "data"
    label_a: str = "A"
    label_b: str = "B"
    null_max: np.ndarray | None = None
    p_fwe: np.ndarray | None = None
    info: dict = field(default_factory=dict)

    @property
    def stat(self) -> np.ndarray:
        """The tested statistic in the tail's direction (|t|, t or -t), NaN outside."""
        return _tail_stat(self.t, self.tail)

    @property
    def significant(self) -> np.ndarray:
        """Bool ``grid.shape``: voxels whose statistic exceeds the threshold."""
        with np.errstate(invalid="ignore"):
            return np.nan_to_num(self.stat, nan=-np.inf) > self.threshold

    @property
    def thresholded(self) -> np.ndarray:
        """t where significant, 0 elsewhere in the extent, NaN outside (float32)."""
        out = np.where(self.significant, self.t, 0.0).astype(np.float32)
        out[~self.mask] = np.nan
        return out

    @property
    def name(self) -> str:
        return f"{self.label_a} - {self.label_b}"

    def test_description(self) -> dict:
        """The test, as written in the sidecars."""
        return {"statistic": "Welch t across images (images are the random effect)", "tail": self.tail,
                "correction": self.correction, "alpha": self.alpha,
                "permutations": self.n_permutations if self.correction == "fwe" else None,
                "exact_enumeration": bool(self.exact) if self.correction == "fwe" else None,
                "threshold": self.threshold if math.isfinite(self.threshold) else None,
                "threshold_units": "t" + (" (|t|, two-sided)" if self.tail == "two-sided" else f" ({self.tail})"),
                "n_significant_voxels": int(self.significant.sum())}

    def clusters(self, atlas=None, min_cluster_mm3: float = 0.0, min_distance: float = 8.0) -> list[dict]:
        """Peak / cluster table of the thresholded t map (see :func:`clusters_table`)."""
        return clusters_table(self.thresholded, self.grid, 0.0, atlas=atlas, min_cluster_mm3=min_cluster_mm3,
                              min_distance=min_distance)


def contrast_values(ya, yb, grid: Grid, mask: np.ndarray, correction: str = "fwe", n_permutations: int = 1000,
                    alpha: float = 0.05, tail: str = "two-sided", seed: int = 0, cancel=None, progress=None,
                    **meta) -> ContrastResult:
    """The statistics of a contrast from predictions already made.

    ``ya`` (n_a, V), ``yb`` (n_b, V): responses at the ``mask`` voxels (``np.flatnonzero``
    order). ``meta`` fills the other :class:`ContrastResult` fields (names_a, names_b,
    units, extent, label_a, label_b).
    """
    if tail not in TAILS:
        raise ExperimentError(f"test tail must be one of {', '.join(TAILS)}, got {tail!r}")
    if correction not in CORRECTIONS:
        raise ExperimentError(f"correction must be one of {', '.join(CORRECTIONS)}, got {correction!r}")
    if not 0 < alpha < 1:
        raise ExperimentError(f"alpha must be between 0 and 1, got {alpha}")
    if correction == "fwe" and n_permutations < 1:
        raise ExperimentError(f"permutations must be >= 1 for FWE, got {n_permutations}")
    for lab, y in ((meta.get("label_a", "A"), ya), (meta.get("label_b", "B"), yb)):
        if len(y) < 2:
            raise ExperimentError(f"set {lab} has {len(y)} image(s); a contrast needs at least 2 images per set "
                                  "(the statistic is the spread across images)")
    meta.setdefault("names_a", [f"A[{i}]" for i in range(len(ya))])
    meta.setdefault("names_b", [f"B[{i}]" for i in range(len(yb))])
    # Voxels without a prediction for some image (a voxel model's empty grid cells) are
    # left out of the test: NaN in every map, never in the permutation maxima.
    ok = np.isfinite(ya).all(0) & np.isfinite(yb).all(0)
    if not ok.all():
        if not ok.any():
            raise ExperimentError("no voxel of the extent has a prediction for every image")
        sub = mask.copy()
        sub[mask] = ok
        return contrast_values(ya[:, ok], yb[:, ok], grid, sub, correction=correction, n_permutations=n_permutations,
                               alpha=alpha, tail=tail, seed=seed, cancel=cancel, progress=progress, **meta)
    eff, t, df = welch(ya, yb)
    stat = _tail_stat(t, tail)
    null, exact, p_fwe = None, False, None
    if correction == "fwe":
        null, exact = permutation_max(np.concatenate([ya, yb]), len(ya), n_permutations, tail, seed,
                                      cancel=cancel, progress=progress)
        thr = fwe_threshold(null, alpha)
        srt = np.sort(null)
        p_fwe = (len(srt) - np.searchsorted(srt, stat, side="left")) / len(srt)
    elif correction == "fdr":
        thr = fdr_threshold(stat, df, alpha, tail)
    else:
        from scipy import stats

        thr = float(stats.t.isf(alpha / (2 if tail == "two-sided" else 1), np.median(df)))

    def vol(v, fill=np.nan):
        out = np.full(grid.shape, fill, np.float32)
        out[mask] = v
        return out

    return ContrastResult(grid=grid, mask=mask, effect=vol(eff), t=vol(t), z=vol(t_to_z(t, df)), df=vol(df),
                          threshold=float(thr), correction=correction, alpha=float(alpha), tail=tail,
                          n_permutations=int(len(null) - 1 if null is not None else 0), exact=bool(exact),
                          null_max=null, p_fwe=None if p_fwe is None else vol(p_fwe), **meta)


def contrast(model, a_images, b_images, subject=None, resolution: float = 2.0, extent="data",
             correction: str = "fwe", n_permutations: int = 1000, alpha: float = 0.05, tail: str = "two-sided",
             seed: int = 0, device=None, feature_cache=None, label_a: str = "A", label_b: str = "B",
             progress=None, cancel=None) -> ContrastResult:
    """Contrast two image sets through an encoding model: where does A's predicted response
    differ from B's, and how reliably across images?

    Parameters
    ----------
    model : EncodingModel that predicts a volume per image (NRF, Universal, ensemble,
        Rest2Visual with ``subject`` a person with a rest map)
    a_images, b_images : folders, glob patterns, lists of files, or arrays (see :func:`image_set`)
    subject : str or None; whose voxels (voxel-indexed models) or whose rest map (Rest2Visual)
    resolution : float, the MNI grid's spacing in mm
    extent : where voxels are tested (:func:`resolve_extent`; default "data")
    correction : "fwe" (max-statistic permutations), "fdr" (Benjamini-Hochberg), "none"
    n_permutations, alpha, tail ("two-sided", "greater": A > B, "less"), seed
    progress : callable(done, total, message) or None; cancel : callable() -> bool or None

    Returns a :class:`ContrastResult` (volumes on ``Grid.mni(resolution)``).
    """
    a, names_a = image_set(a_images, label_a)
    b, names_b = image_set(b_images, label_b)
    for lab, s in ((label_a, a), (label_b, b)):
        if len(s) < 2:
            raise ExperimentError(f"set {lab} has {len(s)} image; a contrast needs at least 2 images per set "
                                  "(the statistic is the spread across images)")
    check_model(model)
    grid = Grid.mni(float(resolution))
    mask, ext_name = resolve_extent(model, grid, extent)
    ya, yb = predict_sets(model, [a, b], grid, mask, subject=subject, device=device, feature_cache=feature_cache,
                          progress=progress, cancel=cancel)
    return contrast_values(ya, yb, grid, mask, correction=correction, n_permutations=n_permutations, alpha=alpha,
                           tail=tail, seed=seed, cancel=cancel, progress=progress, names_a=names_a,
                           names_b=names_b, units=volume_meta.response_units(model), extent=ext_name,
                           label_a=label_a, label_b=label_b)


@dataclass
class LocalizerResult:
    """Each category against the rest (one-sided, ``greater``) and the preferred category.

    contrasts: {category: ContrastResult}; labels: int32 ``grid.shape``, 1 + the index in
    ``categories`` of the voxel's preferred category (largest effect against the rest)
    where that effect is at least ``min_effect`` (data units) and significant, else 0.
    """

    grid: Grid
    mask: np.ndarray
    categories: list
    contrasts: dict
    labels: np.ndarray
    min_effect: float

    @property
    def label_names(self) -> dict[int, str]:
        return {i + 1: c for i, c in enumerate(self.categories)}

    def layer_data(self, name: str = "localizer") -> tuple:
        """napari Labels LayerData ``(data, kwargs, "labels")`` with the categories' names in
        ``features`` (shown by napari's status bar), placed at MNI mm by :mod:`space`."""
        from napari_nrf.nifti_layers import labels_features

        data, kw = space.layer_data(self.labels, self.grid)
        table = {k: {"name": v} for k, v in self.label_names.items()}
        kw.update(name=name, features=labels_features(table, np.arange(len(self.categories) + 1)), opacity=0.6,
                  metadata={"napari_nrf": {"kind": "clusters", "grid": self.grid, "volume": self.labels,
                                           "label_names": self.label_names}})
        return data, kw, "labels"


def localizer(model, folder, subject=None, resolution: float = 2.0, extent="data", min_effect: float = 0.2,
              correction: str = "fwe", n_permutations: int = 1000, alpha: float = 0.05, seed: int = 0,
              device=None, feature_cache=None, progress=None, cancel=None) -> LocalizerResult:
    """A category localizer: ``folder`` holds one sub-folder of images per category (or pass
    a dict ``{category: images}``). Every image is predicted once; each category is tested
    against all the others (Welch t, ``greater``, corrected as in :func:`contrast`)."""
    sets = category_sets(folder) if not isinstance(folder, dict) else {k: image_set(v, k)[0]
                                                                      for k, v in folder.items()}
    if len(sets) < 2:
        raise ExperimentError("localizer: needs at least two categories")
    check_model(model)
    grid = Grid.mni(float(resolution))
    mask, ext_name = resolve_extent(model, grid, extent)
    cats = list(sets)
    preds = predict_sets(model, [sets[c] for c in cats], grid, mask, subject=subject, device=device,
                         feature_cache=feature_cache, progress=progress, cancel=cancel)
    return localizer_values(dict(zip(cats, preds)), grid, mask, min_effect=min_effect, correction=correction,
                            n_permutations=n_permutations, alpha=alpha, seed=seed, cancel=cancel, progress=progress,
                            names={c: [str(n) for n in sets[c]] for c in cats},
                            units=volume_meta.response_units(model), extent=ext_name)


def localizer_values(preds: dict, grid: Grid, mask: np.ndarray, min_effect: float = 0.2, correction: str = "fwe",
                     n_permutations: int = 1000, alpha: float = 0.05, seed: int = 0, cancel=None, progress=None,
                     names: dict | None = None, units: str = volume_meta.DEFAULT_UNITS,
                     extent: str = "data") -> LocalizerResult:
    """The localizer's statistics from predictions already made: ``preds`` {category:
    (n_c, V) responses at the ``mask`` voxels}."""
    cats = list(preds)
    names = names or {c: [f"{c}[{i}]" for i in range(len(preds[c]))] for c in cats}
    res = {}
    for i, c in enumerate(cats):
        rest = np.concatenate([preds[cc] for cc in cats if cc != c])
        res[c] = contrast_values(preds[c], rest, grid, mask, correction=correction, n_permutations=n_permutations,
                                 alpha=alpha, tail="greater", seed=seed + i, cancel=cancel, progress=progress,
                                 names_a=names[c], names_b=[n for cc in cats if cc != c for n in names[cc]],
                                 units=units, extent=extent, label_a=c, label_b="rest")
    eff = np.stack([np.nan_to_num(res[c].effect, nan=-np.inf) for c in cats])
    best = eff.argmax(0)
    ok = (np.take_along_axis(eff, best[None], 0)[0] >= min_effect)
    sig = np.stack([res[c].significant for c in cats])
    ok &= np.take_along_axis(sig, best[None], 0)[0] & mask
    labels = np.where(ok, best + 1, 0).astype(np.int32)
    return LocalizerResult(grid, mask, cats, res, labels, float(min_effect))


# ---- atlases and the cluster table ------------------------------------------------------------
@dataclass
class Atlas:
    """A label atlas: ``labels`` int ``grid.shape``, ``names`` {label: name}, ``name`` of the atlas."""

    labels: np.ndarray
    grid: Grid
    names: dict
    name: str = "atlas"

    def lookup(self, xyz) -> list[str]:
        """Region name at each MNI point (N, 3) mm; the nearest labelled voxel within 6 mm
        as ``"near <name> (d mm)"``; ``""`` where none."""
        from scipy.spatial import cKDTree

        xyz = np.asarray(xyz, np.float64).reshape(-1, 3)
        ijk, inside = self.grid.nearest_index(xyz)
        out = []
        lab_xyz = lab_val = tree = None
        for p, (i, j, k), ok in zip(xyz, ijk, inside):
            v = int(self.labels[i, j, k]) if ok else 0
            if v:
                out.append(self.names.get(v, f"label {v}"))
                continue
            if tree is None:
                idx = np.argwhere(self.labels != 0)
                lab_xyz = self.grid.index_to_world(idx)
                lab_val = self.labels[tuple(idx.T)]
                tree = cKDTree(lab_xyz) if len(lab_xyz) else False
            if tree is False:
                out.append("")
                continue
            d, n = tree.query(p, k=1, distance_upper_bound=6.0)
            out.append(f"near {self.names.get(int(lab_val[n]), 'label')} ({d:.0f} mm)" if np.isfinite(d) else "")
        return out


def default_atlas(grid: Grid | None = None) -> Atlas:
    """The atlas used when none is given: the visual areas of the project's simulator at
    their published group centroids (``simulate/anatomy.py``: V1-V3, hV4, LO, hMT, EBA,
    FFA, PPA, VWFA, both hemispheres), each voxel labelled with the area of highest
    membership where it is >= 0.3 (the simulator's own ROI rule). nilearn's anatomical
    atlases are downloads, and the machine may be offline; give ``--atlas`` for another."""
    from napari_nrf.simulate import anatomy

    grid = grid or Grid.mni(2.0)
    names = anatomy.roi_names()
    by_name = {v: k for k, v in names.items()}
    xyz = grid.coords().astype(np.float32)
    best = np.zeros(len(xyz), np.float32)
    lab = np.zeros(len(xyz), np.int32)
    for name, hemi, c, area in anatomy.blobs():
        m = np.exp(-((xyz - c.astype(np.float32)) ** 2).sum(1) / (2 * area.radius ** 2))
        upd = m > best
        best[upd] = m[upd]
        lab[upd] = by_name[f"{name}-{hemi}"]
    lab[best < 0.3] = 0
    return Atlas(lab.reshape(grid.shape), grid, names, DEFAULT_ATLAS_NAME)


def load_atlas(path) -> Atlas:
    """A label atlas NIfTI (with its names from a table beside it or in its header, as
    File > Open reads them, :mod:`napari_nrf.nifti_layers`)."""
    from napari_nrf.nifti_layers import read_nifti

    try:
        layers = read_nifti(path)
    except (OSError, space.SpaceError) as exc:
        raise ExperimentError(f"--atlas {path}: {exc}") from None
    data, kw, kind = layers[0]
    md = kw.get("metadata", {}).get("napari_nrf", {})
    if kind != "labels":
        raise ExperimentError(f"--atlas {path}: not a label atlas (integer labels, or a label table beside it)")
    return Atlas(np.asarray(md["volume"], np.int32), md["grid"], md.get("label_names") or {}, Path(path).name)


def atlas_from_layer(layer) -> Atlas | None:
    """An :class:`Atlas` from a napari Labels layer read by the plugin (its metadata's volume
    and grid, names from ``features``); None when the layer is not placed in MNI space."""
    md = (getattr(layer, "metadata", None) or {}).get("napari_nrf", {})
    if "volume" not in md or "grid" not in md:
        return None
    names = dict(md.get("label_names") or {})
    feats = getattr(layer, "features", None)
    if feats is not None and "index" in feats and "name" in feats:
        names.update({int(i): str(n) for i, n in zip(feats["index"], feats["name"])})
    return Atlas(np.asarray(md["volume"]).astype(np.int32), md["grid"], names, layer.name)


CLUSTER_COLUMNS = ("cluster", "x_mm", "y_mm", "z_mm", "peak_stat", "size_mm3", "region")


def clusters_table(stat: np.ndarray, grid: Grid, threshold: float, atlas: Atlas | None = None,
                   min_cluster_mm3: float = 0.0, min_distance: float = 8.0, two_sided: bool = True) -> list[dict]:
    """Peaks and clusters of a statistic map above ``threshold`` (nilearn's
    ``get_clusters_table``: clusters of face-, edge- and corner-connected voxels, each with
    its peak and sub-peaks at least ``min_distance`` mm apart), with region names.

    ``stat`` (X, Y, Z) on ``grid`` (NaN read as 0). Returns rows with :data:`CLUSTER_COLUMNS`:
    cluster id ("1", "1a" for a sub-peak), the peak's MNI mm, its statistic, the cluster's
    size in mm^3 (sub-peaks: blank) and the ``atlas`` region at the peak (default
    :func:`default_atlas`).
    """
    import warnings

    from nilearn.reporting import get_clusters_table

    vol = np.nan_to_num(np.asarray(stat, np.float32), nan=0.0)
    if not np.any(np.abs(vol) > threshold):
        return []
    img = space.to_nifti(vol, grid)
    vox_mm3 = float(np.prod(grid.zooms))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        df = get_clusters_table(img, stat_threshold=float(threshold),
                                cluster_threshold=int(math.ceil(min_cluster_mm3 / vox_mm3)),
                                two_sided=two_sided, min_distance=float(min_distance))
    if df is None or len(df) == 0:
        return []
    atlas = atlas if atlas is not None else default_atlas(grid)
    xyz = df[["X", "Y", "Z"]].to_numpy(np.float64)
    regions = atlas.lookup(xyz)
    rows = []
    for (_, r), reg in zip(df.iterrows(), regions):
        size = r.get("Cluster Size (mm3)")
        cid = r["Cluster ID"]
        cid = str(int(cid)) if isinstance(cid, (float, np.floating)) and float(cid).is_integer() else str(cid)
        rows.append({"cluster": cid, "x_mm": float(r["X"]), "y_mm": float(r["Y"]),
                     "z_mm": float(r["Z"]), "peak_stat": float(r["Peak Stat"]),
                     "size_mm3": float(size) if size not in ("", None) and not _isnan(size) else None,
                     "region": reg})
    return rows


def _isnan(v) -> bool:
    try:
        return bool(np.isnan(float(v)))
    except (TypeError, ValueError):
        return True


def clusters_tsv(rows: list[dict], stat_name: str = "peak_stat") -> str:
    """The table as tab-separated text (a header row; sizes blank for sub-peaks)."""
    import io

    buf = io.StringIO()
    w = csv.writer(buf, delimiter="\t", lineterminator="\n")
    w.writerow([c if c != "peak_stat" else stat_name for c in CLUSTER_COLUMNS])
    for r in rows:
        w.writerow([r["cluster"], f"{r['x_mm']:g}", f"{r['y_mm']:g}", f"{r['z_mm']:g}", f"{r['peak_stat']:.3f}",
                    "" if r["size_mm3"] is None else f"{r['size_mm3']:g}", r["region"]])
    return buf.getvalue()


def write_map_table(volume: np.ndarray, grid: Grid, nifti_path, threshold: float | None = None,
                    atlas: Atlas | None = None) -> Path:
    """Write ``<stem>_clusters.tsv`` beside the map ``nifti_path``: the peaks / clusters of
    ``volume`` (X, Y, Z) where |value| > ``threshold`` (the map's own units; default half
    its robust colour limit, the 99.5th percentile of |value|), with region names
    (``atlas`` or :func:`default_atlas`). Returns the table's path."""
    from napari_nrf.nifti_layers import robust_limit

    thr = 0.5 * robust_limit(volume) if threshold is None else float(threshold)
    rows = clusters_table(volume, grid, thr, atlas=atlas)
    path = Path(nifti_path)
    return write_text_atomic(path.with_name(space.nifti_stem(path) + "_clusters.tsv"), clusters_tsv(rows, "peak_value"))


# ---- writing ------------------------------------------------------------------------------------
def _sidecar(res: ContrastResult, what: str, units: str, model=None, model_path=None, atlas=None) -> dict:
    extra = {"map": what, "contrast": res.name, "images_a": [str(n) for n in res.names_a],
             "images_b": [str(n) for n in res.names_b], "test": res.test_description()}
    if atlas is not None:
        extra["atlas"] = atlas.name
    return volume_meta.volume_sidecar("contrast", res.grid, model=model, model_path=model_path, units=units,
                                      mask=res.extent, extra=extra)


def write_contrast(res: ContrastResult, out, model=None, model_path=None, atlas: Atlas | None = None,
                   prefix: str = "") -> dict[str, Path]:
    """Write a contrast to the folder ``out``: ``effect`` (data units), ``stat`` (Welch t),
    ``z`` and ``thresholded`` (t where significant, 0 elsewhere) MNI NIfTI files, each with
    a JSON sidecar (images, model, test, threshold), and ``clusters.tsv`` (peaks, sizes,
    regions of ``atlas`` or :func:`default_atlas`). Files are written atomically; returns
    {what: path}."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    atlas = atlas or default_atlas(res.grid)
    paths = {}
    for what, vol, units in (("effect", res.effect, res.units), ("stat", res.t, "Welch t"), ("z", res.z, "z"),
                             ("thresholded", res.thresholded, "Welch t (significant voxels; 0 elsewhere)")):
        side = _sidecar(res, what, units, model, model_path, atlas)
        paths[what] = volume_meta.write_volume(out / f"{prefix}{what}.nii.gz", vol, res.grid, side)
    rows = res.clusters(atlas=atlas)
    paths["clusters"] = write_text_atomic(out / f"{prefix}clusters.tsv", clusters_tsv(rows, "peak_t"))
    return paths


def write_localizer(res: LocalizerResult, out, model=None, model_path=None, atlas: Atlas | None = None) -> dict:
    """Write a localizer to ``out``: one sub-folder per category (as :func:`write_contrast`)
    and ``labels.nii.gz``, the preferred-category label map with its table ``labels.tsv``
    (read back by File > Open as a Labels layer with the category names)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    atlas = atlas or default_atlas(res.grid)
    paths = {}
    for c, r in res.contrasts.items():
        paths[c] = write_contrast(r, out / _safe(c), model=model, model_path=model_path, atlas=atlas)
    side = volume_meta.volume_sidecar("clusters", res.grid, model=model, model_path=model_path,
                                      mask=next(iter(res.contrasts.values())).extent,
                                      extra={"map": "preferred category", "categories": res.categories,
                                             "min_effect": res.min_effect,
                                             "test": next(iter(res.contrasts.values())).test_description()})
    paths["labels"] = volume_meta.write_volume(out / "labels.nii.gz", res.labels, res.grid, side)
    table = "index\tname\n" + "".join(f"{k}\t{v}\n" for k, v in res.label_names.items())
    paths["label_table"] = write_text_atomic(out / "labels.tsv", table)
    summary = {c: {"n_significant_voxels": int(r.significant.sum()), "threshold_t": r.test_description()["threshold"],
                   "voxels_preferring": int((res.labels == i + 1).sum())}
               for i, (c, r) in enumerate(res.contrasts.items())}
    paths["summary"] = write_text_atomic(out / "summary.json", json.dumps(summary, indent=2) + "\n")
    return paths


def _safe(name: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in str(name)) or "category"
