"""Evaluating a Rest2Visual model as the paper does (Qt-free): map metrics per subject,
whole set and V1-V5, identification and inter-subject correlation on shared images.

:func:`evaluate_maps` predicts every subject's test maps (a subject the model has not seen
is added from its rest map alone: the paper's unseen-subject setting), scores them with
:mod:`napari_nrf.mapmetrics`, and compares subjects on the images they all saw, on a
common grid (each subject's voxels averaged into its cells).
"""

from __future__ import annotations

import numpy as np

from napari_nrf.calibration import apply_model
from napari_nrf import mapmetrics as mm
from napari_nrf import space
from napari_nrf.models.rest2visual import Rest2VisualError

COMMON_RESOLUTION = 4.0


def predict_maps(model, rs, rows, features=None, feature_cache=None) -> np.ndarray:
    """Predicted maps (len(rows), V) of response set ``rs``'s subject at its voxels (the
    subject is added from ``rs``'s rest maps when the model does not know it)."""
    from napari_nrf.train import predict_set, set_features

    if rs.subject not in model.rest_maps:
        if rs.rest_maps is None:
            raise Rest2VisualError(f"{rs.subject}: new to the model and without rest maps")
        model.add_subject(rs.subject, rs.rest_maps, rs.rest_grid, coords=rs.coords)
    elif len(model.subjects.get(rs.subject, ())) == 0:
        model.subjects[rs.subject] = np.asarray(rs.coords, np.float32)
    if features is None:
        features = set_features(model, rs, cache=feature_cache, rows=rows)
        feats = features
    else:
        feats = {k: np.asarray(v)[rows] for k, v in features.items()}
    return predict_set(model, feats, rs)


def common_cells(sets, maps: list, resolution: float = COMMON_RESOLUTION) -> np.ndarray:
    """(S, n, P) maps of every set on the cells of a common grid covered by all of them."""
    lo = np.min([rs.coords.min(0) for rs in sets], 0)
    hi = np.max([rs.coords.max(0) for rs in sets], 0)
    g = space.Grid.from_extent(resolution, lo - resolution, hi + resolution)
    vols = [space.points_to_volume(rs.coords, m.T, g).reshape(-1, m.shape[0]).T for rs, m in zip(sets, maps)]
    ok = np.all([np.isfinite(v).all(0) for v in vols], 0)
    return np.stack([v[:, ok] for v in vols])


def common_points(resolution: float = COMMON_RESOLUTION, seed: int = 0, threshold: float = 0.3) -> np.ndarray:
    """MNI points (P, 3) mm float32 where every subject's truth and prediction can be read:
    the cells of a ``resolution`` mm grid over the simulator's visual box that lie in grey
    matter inside the template layout's visual areas (summed membership >= ``threshold``).

    Unlike :func:`common_cells` (cells that every subject's own voxels cover, few when areas
    are displaced), these do not depend on the subjects, so field models and the truth
    (:func:`napari_nrf.simulate.subjects.truth_at`) are compared on the same ~1,400 points.
    """
    from napari_nrf.simulate.subjects import VISUAL_BOX, VirtualSubject

    g = space.Grid.from_extent(resolution, *VISUAL_BOX)
    xyz = g.coords(np.ones(g.shape, bool))
    tmpl = VirtualSubject(index=0, seed=int(seed), identical=True)
    keep = (tmpl.membership(xyz).sum(1) >= threshold) & (space.gm_probability(g).ravel() >= 0.3)
    return np.asarray(xyz[keep], np.float32)


def predict_at(model, features: dict, xyz, subject=None, batch_images: int = 32) -> np.ndarray:
    """Predictions (n, P) float32 of a field model at MNI points ``xyz`` (P, 3) mm for the
    images of ``features`` (arrays with n rows); ``subject`` for a conditioned model."""
    import torch

    was = model.training
    model.eval()
    kw = {"subject": subject} if model.conditioned else {}
    n = len(next(iter(features.values())))
    out = []
    with torch.no_grad():
        for s in range(0, n, batch_images):
            fb = {k: torch.as_tensor(np.asarray(v[s:s + batch_images])) for k, v in features.items()}
            out.append(model.predict(fb, coords=np.asarray(xyz, np.float32), **kw).float().cpu().numpy())
    model.train(was)
    return apply_model(model, np.concatenate(out), coords=xyz, subject=subject)  # the gain fitted after training


def truth_at_points(sets, rows_list, xyz) -> np.ndarray | None:
    """(S, n, P) noiseless responses of simulated subjects' images ``rows_list`` at points
    ``xyz`` (None when a set is not simulated)."""
    from napari_nrf.simulate.subjects import truth_at

    if any("simulator" not in rs.meta for rs in sets):
        return None
    return np.stack([truth_at(rs, xyz, rows) for rs, rows in zip(sets, rows_list)])


def isc_report(pred: np.ndarray, true: np.ndarray) -> dict:
    """Inter-subject correlation matrices (S x S, mean over images of the map r between
    subjects) of predicted and true maps (S, n, P), and the Pearson r of their off-diagonal
    entries (the paper's figure 4 comparison)."""
    a, b = mm.inter_subject_matrix(pred), mm.inter_subject_matrix(true)
    iu = np.triu_indices(len(a), 1)
    sim = float(np.corrcoef(a[iu], b[iu])[0, 1]) if len(a) > 2 and a[iu].std() > 0 and b[iu].std() > 0 \
        else float("nan")
    return {"predicted": a.round(4).tolist(), "true": b.round(4).tolist(), "similarity": sim,
            "mean_off_diagonal_predicted": float(a[iu].mean()), "mean_off_diagonal_true": float(b[iu].mean())}


def shared_rows(sets, split: str = "test") -> list:
    """Per set, the rows of ``split`` whose image ids every set has, in one common order."""
    ids = None
    for rs in sets:
        s = set(rs.image_ids[rs.indices(split)].tolist())
        ids = s if ids is None else ids & s
    ids = sorted(ids or [])
    out = []
    for rs in sets:
        pos = {int(i): r for r, i in enumerate(rs.image_ids)}
        out.append(np.array([pos[i] for i in ids], np.int64))
    return out


def evaluate_maps(model, sets, split: str = "test", feature_cache=None, features=None, window: int = 7,
                  data_range: float | None = None, roi=mm.V1_V5) -> dict:
    """Map metrics of ``model`` on ``sets`` (their ``split`` rows) and identification.

    Returns ``{"subjects": {name: {"whole": scores, "v1_v5": scores}}, "mean": {...},
    "identification": {...}, "isc_similarity": r}`` where scores are those of
    :func:`napari_nrf.mapmetrics.score_maps` and ``isc_similarity`` is the Pearson r of
    the off-diagonal inter-subject correlations of predicted vs measured maps. For
    simulated subjects also ``identification_truth`` and ``isc_truth``: the same against
    the noiseless truth at :func:`common_points` (the model read there as a field).
    """
    per, preds, trues = {}, [], []
    rows_shared = shared_rows(sets, split)
    for k, rs in enumerate(sets):
        rows = rs.indices(split)
        f = None if features is None else features[k]
        pred = predict_maps(model, rs, rows, f, feature_cache)
        true = rs.get_responses(rows)
        sc = {"whole": mm.score_maps(pred, true, rs.coords, window, data_range)}
        roi_sel = mm.roi_points(rs, roi)
        if roi_sel.sum() >= 10:
            sc["v1_v5"] = mm.score_maps(pred[:, roi_sel], true[:, roi_sel], rs.coords[roi_sel], window, data_range)
        per[rs.subject] = sc
        pos = {int(r): j for j, r in enumerate(rows)}
        sel = [pos[int(r)] for r in rows_shared[k] if int(r) in pos]
        preds.append(pred[sel])
        trues.append(true[sel])
    out = {"split": split, "subjects": per, "mean": {}}
    for part in ("whole", "v1_v5"):
        vals = [s[part] for s in per.values() if part in s]
        if vals:
            out["mean"][part] = {m: float(np.mean([v[m] for v in vals])) for m in ("pearson", "mae", "ssim", "rsa")}
            out["mean"][part]["pearson_sd_subjects"] = float(np.std([v["pearson"] for v in vals]))
    n_shared = min(len(p) for p in preds) if preds else 0
    if len(sets) > 1 and n_shared >= 2:
        P = common_cells(sets, preds)
        T = common_cells(sets, trues)
        out["identification"] = mm.identification(P, T)
        iu = np.triu_indices(len(sets), 1)
        out["isc_similarity"] = float(np.corrcoef(mm.inter_subject_matrix(P)[iu], mm.inter_subject_matrix(T)[iu])[0, 1]) \
            if len(sets) > 2 else float("nan")
        out["n_shared_images"], out["n_common_cells"] = int(n_shared), int(P.shape[2])
        xyz = common_points()
        T = truth_at_points(sets, rows_shared, xyz)
        if T is not None and model.continuous:
            if features is None:
                from napari_nrf.train import set_features

                fs = [set_features(model, rs, cache=feature_cache, rows=r) for rs, r in zip(sets, rows_shared)]
            else:
                fs = [{k: np.asarray(v)[r] for k, v in f.items()} for f, r in zip(features, rows_shared)]
            Pp = np.stack([predict_at(model, f, xyz, rs.subject) for f, rs in zip(fs, sets)])
            out["identification_truth"] = mm.identification(Pp, T)
            out["isc_truth"] = isc_report(Pp, T)
            out["n_common_points"] = int(len(xyz))
    return out


def format_report(rep: dict) -> str:
    """A text table of :func:`evaluate_maps`'s report."""
    lines = [f"{'subject':<12} {'part':<6} {'pearson':>8} {'mae':>7} {'ssim':>7} {'rsa':>7}"]
    for s, sc in rep["subjects"].items():
        for part, v in sc.items():
            lines.append(f"{s:<12} {part:<6} {v['pearson']:8.3f} {v['mae']:7.3f} {v['ssim']:7.3f} {v['rsa']:7.3f}")
    for part, v in rep["mean"].items():
        lines.append(f"{'mean':<12} {part:<6} {v['pearson']:8.3f} {v['mae']:7.3f} {v['ssim']:7.3f} {v['rsa']:7.3f}")
    if "identification" in rep:
        i = rep["identification"]
        lines.append(f"identification accuracy {i['accuracy']:.3f} (chance {i['chance']:.3f}); map r to one's own "
                     f"{i['within']:.3f}, to others' {i['between']:.3f}")
    if "identification_truth" in rep:
        i = rep["identification_truth"]
        lines.append(f"against the noiseless truth: accuracy {i['accuracy']:.3f}; map r to one's own {i['within']:.3f}, "
                     f"to others' {i['between']:.3f}; ISC similarity {rep['isc_truth']['similarity']:.3f}")
    return "\n".join(lines)
