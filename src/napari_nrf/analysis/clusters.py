"""Cluster maps: k-means of a Universal encoder's voxel embeddings.

Cluster maps (the Universal Brain Encoder paper, section 5)::

    res = cluster_embeddings({"sub-01": model.embeddings("sub-01"), ...}, k=20)
    vol = cluster_labels_volume({"sub-01": model.subjects["sub-01"]}, res.labels, Grid.mni(2))
    table = cluster_table(res, model.subjects)                       # size, subjects, MNI centroid
    top = cluster_top_images(model, library_features, res, top=8)    # per cluster, the best images

Labels are 0-based cluster ids in :class:`ClusterResult`; in label *volumes* 0 is the
background and cluster ``c`` is written as ``c + 1`` (napari's Labels convention).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from napari_nrf import calibration
from napari_nrf._docs import fill_doc

from ._common import AnalysisCancelled, AnalysisError


# ---- k-means over voxel embeddings -----------------------------------------------------
@dataclass
class ClusterResult:
    """k-means of L2-normalised voxel embeddings of one or several subjects.

    Attributes
    ----------
    labels : dict subject -> (V_s,) int32, cluster id in [0, k)
    centers : (k, E) float32, unit-norm cluster centres
    inertia : float, sum of squared distances of the normalised embeddings to their centre
    method : "sklearn" or "torch"
    """

    labels: dict
    centers: np.ndarray
    inertia: float
    method: str
    meta: dict = field(default_factory=dict)

    @property
    def k(self) -> int:
        return int(self.centers.shape[0])


def _l2_normalise(x: np.ndarray) -> np.ndarray:
    import torch

    # torch: multi-threaded and without numpy's temporaries (300k x 256 in ~0.1 s).
    t = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))
    return torch.nn.functional.normalize(t, dim=1, eps=1e-12).numpy()


def cluster_embeddings(embeddings, k: int, method: str = "auto", seed: int = 0, device=None,
                       max_iter: int = 100, tol: float = 1e-4, progress=None) -> ClusterResult:
    """k-means over the L2-normalised voxel embeddings of one or several subjects.

    Parameters
    ----------
    embeddings : dict subject -> (V_s, E) array, or one (V, E) array (subject "all")
        Voxel embeddings (``UniversalEncoder.embeddings(subject)``); clustered together so
        that clusters are shared across subjects.
    k : int
        Number of clusters, 2 <= k <= number of voxels.
    method : "auto", "sklearn" or "torch"
        ``sklearn``: scikit-learn ``KMeans`` (k-means++, one init, Lloyd). ``torch``: our
        Lloyd iterations in torch (k-means++ init), for millions of voxels on a GPU.
        ``auto``: torch when ``device`` is a CUDA device or there are more than 50,000
        voxels (scikit-learn's Lloyd takes about 50 s for 300,000 x 256 with k = 20 on two
        CPU cores, the torch loop about 4 s), else sklearn.
    seed : int
        Random seed (initialisation).
    device : torch device or None
        For ``method="torch"`` (default: CUDA if available, else CPU).
    progress : callable(done, total) or None
        Called after each torch iteration (sklearn: once at the end).

    Returns
    -------
    ClusterResult
    """
    if isinstance(embeddings, dict):
        subjects = list(embeddings)
        arrays = [np.asarray(embeddings[s], np.float32) for s in subjects]
    else:
        subjects, arrays = ["all"], [np.asarray(embeddings, np.float32)]
    if not arrays or any(a.ndim != 2 for a in arrays):
        raise AnalysisError("embeddings must be (V, E) arrays")
    if len({a.shape[1] for a in arrays}) != 1:
        raise AnalysisError(f"subjects have embeddings of different sizes: {[a.shape[1] for a in arrays]}")
    x = _l2_normalise(np.concatenate(arrays))
    k = int(k)
    if not 2 <= k <= len(x):
        raise AnalysisError(f"k must be between 2 and the number of voxels ({len(x)}), got {k}")
    if method == "auto":
        import torch

        cuda = device is not None and torch.device(device).type == "cuda"
        method = "torch" if cuda or len(x) > 50_000 else "sklearn"
    if method == "sklearn":
        from sklearn.cluster import KMeans

        km = KMeans(n_clusters=k, n_init=1, max_iter=max_iter, tol=tol, random_state=seed, algorithm="lloyd")
        lab = km.fit_predict(x)
        centers, inertia = km.cluster_centers_.astype(np.float32), float(km.inertia_)
        if progress is not None:
            progress(1, 1)
    elif method == "torch":
        lab, centers, inertia = _kmeans_torch(x, k, seed, device, max_iter, tol, progress)
    else:
        raise AnalysisError(f"method must be 'auto', 'sklearn' or 'torch', got {method!r}")
    centers = _l2_normalise(centers)
    lab = np.asarray(lab, np.int32)
    out, s0 = {}, 0
    for s, a in zip(subjects, arrays):
        out[s] = lab[s0:s0 + len(a)]
        s0 += len(a)
    return ClusterResult(out, centers, inertia, method, {"seed": seed, "n_voxels": int(len(x))})


def _kmeans_torch(x: np.ndarray, k: int, seed: int, device, max_iter: int, tol: float, progress):
    """Lloyd's k-means with k-means++ seeding; (labels (N,), centres (k, E), inertia)."""
    import torch

    dev = torch.device(device) if device is not None else torch.device("cuda" if torch.cuda.is_available() else "cpu")
    g = torch.Generator(device="cpu").manual_seed(seed)
    X = torch.from_numpy(x).to(dev)
    n = X.shape[0]
    sq = torch.linalg.vector_norm(X, dim=1) ** 2  # no (N, E) temporary

    def assign(c):  # nearest centre and inertia; argmax of x.c - |c|^2/2 is argmin of |x - c|^2
        score = X @ c.T - 0.5 * (c * c).sum(1)[None]
        best, lab = score.max(1)
        return lab, float(sq.sum() - 2 * best.sum()), best

    # Greedy k-means++ (as scikit-learn: 2 + log k candidates per step, keep the one that
    # lowers the potential most) on a subsample: enough to seed well, cheap for millions.
    sub = X[torch.randperm(n, generator=g)[: min(n, 5000 + 100 * k)].to(dev)]
    centers = sub[torch.randint(len(sub), (1,), generator=g).to(dev)]
    sub_sq = torch.linalg.vector_norm(sub, dim=1) ** 2
    d = torch.clamp(sub_sq - 2 * (sub @ centers[0]) + (centers[0] ** 2).sum(), min=0)
    n_local = 2 + int(np.log(k))
    for _ in range(1, k):
        p = (d / d.sum()).cpu()
        cand = torch.multinomial(p, n_local, replacement=True, generator=g).to(dev)
        c = sub[cand]
        d2 = torch.clamp(sub_sq[None] - 2 * (sub @ c.T).T + (c * c).sum(1)[:, None], min=0)
        dc = torch.minimum(d[None], d2)  # (n_local, n_sub)
        best = int(dc.sum(1).argmin())
        centers = torch.cat([centers, sub[cand[best]][None]])
        d = dc[best]
    prev = None
    for it in range(max_iter):
        lab, inertia, best = assign(centers)
        sums = torch.zeros_like(centers).index_add_(0, lab, X)
        cnt = torch.bincount(lab, minlength=k).to(X.dtype)
        empty = cnt == 0
        new = sums / cnt.clamp(min=1)[:, None]
        if empty.any():  # re-seed empty clusters at the points farthest from their centre
            far = (sq - 2 * best).topk(int(empty.sum())).indices
            new[empty] = X[far]
        centers = new
        if progress is not None:
            progress(it + 1, max_iter)
        if prev is not None and abs(prev - inertia) <= tol * max(prev, 1e-12):
            break
        prev = inertia
    lab, inertia, _ = assign(centers)
    return lab.cpu().numpy(), centers.cpu().numpy(), inertia


# ---- cluster maps in MNI space ---------------------------------------------------------
def _voxel_spacing(xyz: np.ndarray) -> float:
    """Median distance (mm) from a voxel to its nearest neighbour."""
    from scipy.spatial import cKDTree

    if len(xyz) < 2:
        return 2.0
    sample = xyz[np.random.default_rng(0).choice(len(xyz), min(len(xyz), 5000), replace=False)]
    d, _ = cKDTree(xyz).query(sample, k=2)
    return float(np.median(d[:, 1]))


def cluster_labels_volume(coords, labels, grid, max_distance: float | None = None) -> np.ndarray:
    """A Labels volume (grid.shape) int32 of cluster ids at one subject's voxels.

    Parameters
    ----------
    coords : (V, 3) MNI mm
        The subject's voxel centres (``model.subjects[subject]``).
    labels : (V,) int
        0-based cluster ids (``ClusterResult.labels[subject]``); negative = unlabelled.
    grid : napari_nrf.space.Grid
        The display grid (any resolution).
    max_distance : float or None
        Each grid voxel takes the label of the nearest subject voxel within this many mm
        (default: half the diagonal of the subject's voxel, from its median spacing), so
        a finer display grid is filled without holes and a coarser one samples it.

    Returns
    -------
    (X, Y, Z) int32 on ``grid``: 0 background, cluster ``c`` as ``c + 1``.
    """
    from scipy.spatial import cKDTree

    xyz = np.asarray(coords, np.float64)
    labels = np.asarray(labels)
    if xyz.ndim != 2 or xyz.shape[1] != 3 or labels.shape != (len(xyz),):
        raise AnalysisError(f"coords must be (V, 3) and labels (V,), got {xyz.shape} and {labels.shape}")
    out = np.zeros(grid.shape, np.int32)
    if len(xyz) == 0:
        return out
    if max_distance is None:
        max_distance = _voxel_spacing(xyz) * np.sqrt(3) / 2 + 1e-3
    # Only grid voxels in the bounding box of the subject's voxels (+ the radius) can be hit.
    lo = np.floor(grid.world_to_index(xyz.min(0) - max_distance)).astype(int).clip(0, np.array(grid.shape) - 1)
    hi = np.ceil(grid.world_to_index(xyz.max(0) + max_distance)).astype(int).clip(0, np.array(grid.shape) - 1)
    ijk = np.stack(np.meshgrid(*[np.arange(a, b + 1) for a, b in zip(lo, hi)], indexing="ij"), -1).reshape(-1, 3)
    d, nn = cKDTree(xyz).query(grid.index_to_world(ijk), distance_upper_bound=max_distance)
    hit = np.isfinite(d)
    vals = labels[nn[hit]].astype(np.int32) + 1
    keep = vals > 0
    sel = ijk[hit][keep]
    out[sel[:, 0], sel[:, 1], sel[:, 2]] = vals[keep]
    return out


def cluster_table(result: ClusterResult, coords: dict) -> dict:
    """Per-cluster features (a dict of equal-length columns, for napari ``Labels.features``).

    Columns: ``label`` (cluster id + 1, as in the volumes), ``cluster`` (0-based),
    ``size`` (voxels over all subjects), ``n_subjects`` (subjects with at least one voxel),
    ``subjects`` (comma-separated names), ``size_<subject>`` per subject, and the MNI
    centroid ``x_mm``, ``y_mm``, ``z_mm`` (mean voxel position over all subjects, mm).
    """
    k = result.k
    size = np.zeros(k, np.int64)
    acc = np.zeros((k, 3))
    per = {}
    for s, lab in result.labels.items():
        lab = np.asarray(lab)
        cnt = np.bincount(lab[lab >= 0], minlength=k)[:k]
        per[s] = cnt
        size += cnt
        if s in coords:
            xyz = np.asarray(coords[s], np.float64)
            for d in range(3):
                acc[:, d] += np.bincount(lab[lab >= 0], weights=xyz[lab >= 0, d], minlength=k)[:k]
    cen = acc / np.maximum(size, 1)[:, None]
    cen[size == 0] = np.nan
    table = {
        "label": np.arange(1, k + 1),
        "cluster": np.arange(k),
        "size": size,
        "n_subjects": np.sum([per[s] > 0 for s in per], axis=0).astype(np.int64),
        "subjects": [",".join(s for s in per if per[s][c] > 0) for c in range(k)],
    }
    for s in per:
        table[f"size_{s}"] = per[s]
    table["x_mm"], table["y_mm"], table["z_mm"] = cen[:, 0], cen[:, 1], cen[:, 2]
    return table


def cluster_mean_responses(model, features: dict, result: ClusterResult, subjects=None, batch_images: int = 32,
                           progress=None) -> np.ndarray:
    """Mean predicted response (k, n_images) float32 over each cluster's voxels.

    Parameters
    ----------
    model : UniversalEncoder (or any model with ``predict(features, subject=)``)
    features : dict name -> (n_images, ...) array/tensor
        Backbone features of an image library (``model.encode_images`` or a FeatureCache).
    result : ClusterResult
        Whose subjects are in ``model``.
    subjects : list or None
        Subjects whose voxels count (default: every subject of ``result``).
    progress : callable(done, total) or None
    """
    import torch

    subjects = list(result.labels) if subjects is None else list(subjects)
    n = int(len(next(iter(features.values()))))
    k = result.k
    sums = torch.zeros(k, n, dtype=torch.float64)
    counts = np.zeros(k, np.int64)
    total, done = len(subjects) * n, 0
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            for s in subjects:
                lab = torch.as_tensor(np.asarray(result.labels[s]), dtype=torch.long)
                ok = lab >= 0
                counts += np.bincount(lab[ok].numpy(), minlength=k)[:k]
                for i in range(0, n, batch_images):
                    f = {name: torch.as_tensor(np.asarray(v[i:i + batch_images])) for name, v in features.items()}
                    y = model.predict(f, subject=s).cpu().double()  # (b, V)
                    y = calibration.apply_model(model, y, voxels=np.arange(y.shape[1]), subject=s)
                    sums[:, i:i + len(y)].index_add_(0, lab[ok], y[:, ok].T)
                    done += len(y)
                    if progress is not None:
                        progress(done, total)
    finally:
        model.train(was_training)
    mean = sums.numpy() / np.maximum(counts, 1)[:, None]
    mean[counts == 0] = np.nan
    return mean.astype(np.float32)


def cluster_top_images(model, features: dict, result: ClusterResult, top: int = 8, subjects=None,
                       progress=None) -> dict:
    """Per cluster, the ``top`` images of a library with the highest mean predicted response.

    Returns dict cluster id (0-based) -> (indices (top,) int64 into the library, mean
    responses (top,) float32), best first. Empty clusters get empty arrays.
    """
    mean = cluster_mean_responses(model, features, result, subjects=subjects, progress=progress)
    out = {}
    for c in range(result.k):
        row = mean[c]
        if not np.isfinite(row).any():
            out[c] = (np.zeros(0, np.int64), np.zeros(0, np.float32))
            continue
        idx = np.argsort(-np.nan_to_num(row, nan=-np.inf), kind="stable")[:top]
        out[c] = (idx.astype(np.int64), row[idx])
    return out



@dataclass
class ClusterMaps:
    """What :func:`cluster_maps` returns: the clustering, one label volume per subject on
    ``grid`` (0 background, cluster c as c + 1) and the per-cluster features table."""

    result: ClusterResult
    volumes: dict
    grid: object
    table: dict


@fill_doc
def cluster_maps(model, k: int, subjects=None, grid=None, method: str = "auto", seed: int = 0, device=None,
                 progress=None, cancel=None) -> ClusterMaps:
    """k-means of a Universal encoder's voxel embeddings, placed in MNI space per subject.

    Parameters
    ----------
    model : UniversalEncoder
        Any model with ``embeddings(subject) -> (V, E)`` and ``subjects`` (name -> (V, 3) mm).
    k : int
        Number of clusters.
    subjects : list of str or None
        Subjects clustered together (default: all of the model's).
    grid : napari_nrf.space.Grid or None
        Display grid of the label volumes (default: MNI 2 mm).
    %(progress)s
        Called once per stage (clustering, then one per subject volume).
    %(cancel)s
        Checked between stages (:class:`AnalysisCancelled`).
    """
    from napari_nrf import space

    if not model.has_embeddings:
        raise AnalysisError(f"cluster maps need a model with voxel embeddings (kind 'universal'), got "
                            f"{model.kind!r}")
    subjects = list(model.subjects) if subjects is None else list(subjects)
    if not subjects:
        raise AnalysisError("choose at least one subject")
    unknown = [s for s in subjects if s not in model.subjects]
    if unknown:
        raise AnalysisError(f"unknown subject(s) {unknown}; the model has {sorted(model.subjects)}")
    grid = grid or space.Grid.mni(2.0)
    total = 1 + len(subjects)

    def check():
        if cancel is not None and cancel():
            raise AnalysisCancelled("cancelled")

    check()
    res = cluster_embeddings({s: model.embeddings(s) for s in subjects}, k, method=method, seed=seed, device=device)
    if progress is not None:
        progress(1, total)
    vols = {}
    for i, s in enumerate(subjects):
        check()
        vols[s] = cluster_labels_volume(model.subjects[s], res.labels[s], grid)
        if progress is not None:
            progress(2 + i, total)
    return ClusterMaps(res, vols, grid, cluster_table(res, {s: model.subjects[s] for s in subjects}))

# ---- top- and bottom-activating images of a region (napari region explorer) ----------
