"""Evaluation of encoding models: voxelwise accuracy, retrieval and a ridge baseline.

>>> report = evaluate(model, rs)                 # test split of a ResponseSet
>>> report["pearson_median"], report["retrieval"]["top1"], report["ridge"]["pearson_median"]

Metrics (all on held-out images of one subject):

* voxelwise Pearson r between predicted and measured responses across images: median,
  mean and median per ROI (``rs.roi`` / ``rs.roi_names``);
* in the data's units: MSE over images and voxels, voxelwise R^2 (coefficient of
  determination) and the calibration slope (measured responses regressed on the
  predictions, pooled over voxels; 1 = calibrated, > 1 shrunken predictions);
* noise-ceiling-normalised accuracy ``r^2 / (NC / 100)`` and ``R^2 / (NC / 100)`` per voxel
  where a ceiling exists (NSD's ceilings are percentages of explainable variance);
* against the noiseless truth when the set has one (virtual subjects);
* image retrieval as in the Universal Brain Encoder paper: for each measured test response, the true image and
  N - 1 random distractor test images are ranked by the Pearson correlation (across
  voxels) of their predicted response with the measured one; top-1 and top-5 accuracy,
  averaged over ``n_repeats`` draws of distractors;
* baselines on the same frozen backbone features, fitted on the train split
  (:mod:`napari_nrf.baselines`): a robust voxelwise ridge with pooled and spatial (PCA of
  the flattened token maps) columns, and fWRF trained by the same loop as the NRF.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from napari_nrf.errors import NapariNRFError, write_text_atomic
from napari_nrf.train import calibrate_set, predict_set, set_features, voxel_pearson, voxel_r2


class EvaluationError(NapariNRFError):
    """Bad evaluation input (no test images, mismatched shapes)."""


# ---- metrics ------------------------------------------------------------------------------
def retrieval(pred: np.ndarray, true: np.ndarray, n_candidates: int = 50, n_repeats: int = 10,
              seed: int = 0) -> dict:
    """Top-1 / top-5 image retrieval accuracy (fractions) among ``n_candidates`` images.

    ``pred`` and ``true`` are (n_images, V). For each query image i, the candidates are i
    and ``n_candidates - 1`` other images drawn at random; they are ranked by the Pearson
    correlation across voxels between their predicted response and ``true[i]``.
    """
    pred = np.asarray(pred, np.float64)
    true = np.asarray(true, np.float64)
    n = len(pred)
    if n < 2:
        raise EvaluationError("retrieval needs at least 2 test images")
    k = int(min(n_candidates, n))

    def z(a):
        a = a - a.mean(1, keepdims=True)
        return a / (np.linalg.norm(a, axis=1, keepdims=True) + 1e-12)

    corr = z(true) @ z(pred).T  # corr[i, j]: query i vs predicted j
    rng = np.random.default_rng(seed)
    top1 = top5 = 0.0
    for _ in range(n_repeats):
        for i in range(n):
            others = np.delete(np.arange(n), i)
            cand = rng.choice(others, size=k - 1, replace=False)
            rank = int((corr[i, cand] > corr[i, i]).sum())  # how many distractors beat the truth
            top1 += rank < 1
            top5 += rank < 5
    tot = n * n_repeats
    return {"top1": top1 / tot, "top5": top5 / tot, "n_candidates": k, "n_repeats": int(n_repeats),
            "chance_top1": 1.0 / k, "chance_top5": min(5, k) / k}


def calibration_slope(pred: np.ndarray, true: np.ndarray) -> float:
    """Slope of ``true`` regressed on ``pred`` (both (n_images, V)), pooled over voxels.

    Each voxel's predictions and responses are centred over the images first, so the slope
    compares the image-driven variation only (a voxel's offset does not count):
    ``sum(p_c * t_c) / sum(p_c^2)``. 1 means predictions in the data's units; above 1 they
    are shrunken (a slope of 10: ten times too small), below 1 inflated. NaN when the
    predictions do not vary.
    """
    p = np.asarray(pred, np.float64)
    t = np.asarray(true, np.float64)
    p = p - p.mean(0)
    t = t - t.mean(0)
    den = float((p * p).sum())
    return float((p * t).sum() / den) if den > 0 else float("nan")


def metrics(pred: np.ndarray, true: np.ndarray, roi=None, roi_names=None, noise_ceiling=None,
            truth=None) -> dict:
    """Voxelwise accuracy of ``pred`` against ``true`` (both (n_images, V) float).

    Returns a JSON-able dict: pearson_median, pearson_mean, mse, r2_median / r2_mean
    (voxelwise coefficient of determination, :func:`napari_nrf.train.voxel_r2`),
    calibration_slope (:func:`calibration_slope`), per_roi (name -> {median, n_voxels}),
    nc_normalised_median / _mean (``r^2 / (NC / 100)``) and nc_r2_median / _mean
    (``R^2 / (NC / 100)``) when ``noise_ceiling`` (V,), in percent, is given, and
    truth_pearson_median / _mean, truth_r2_median, truth_calibration_slope when ``truth``
    is given.
    """
    pred = np.asarray(pred, np.float32)
    true = np.asarray(true, np.float32)
    if pred.shape != true.shape:
        raise EvaluationError(f"predictions {pred.shape} and responses {true.shape} differ in shape")
    r = voxel_pearson(pred, true)
    out = {"n_images": int(pred.shape[0]), "n_voxels": int(pred.shape[1]),
           "pearson_median": float(np.nanmedian(r)), "pearson_mean": float(np.nanmean(r)),
           "mse": float(np.mean((pred - true) ** 2))}
    r2 = voxel_r2(pred, true)
    out.update(r2_median=float(np.nanmedian(r2)), r2_mean=float(np.nanmean(r2)),
               calibration_slope=calibration_slope(pred, true))
    if roi is not None:
        names = {int(k): v for k, v in (roi_names or {}).items()}
        per = {}
        for lab in np.unique(roi):
            if lab == 0:
                continue
            sel = roi == lab
            per[names.get(int(lab), str(int(lab)))] = {"median": float(np.nanmedian(r[sel])), "n_voxels": int(sel.sum())}
        out["per_roi"] = per
    if noise_ceiling is not None:
        nc = np.asarray(noise_ceiling, np.float32) / 100.0
        ok = nc > 0
        if ok.any():
            acc = r[ok] ** 2 / nc[ok]
            out["nc_normalised_median"] = float(np.nanmedian(acc))
            out["nc_normalised_mean"] = float(np.nanmean(acc))
            out["nc_r2_median"] = float(np.nanmedian(r2[ok] / nc[ok]))
            out["nc_r2_mean"] = float(np.nanmean(r2[ok] / nc[ok]))
    if truth is not None:
        rt = voxel_pearson(pred, truth)
        out["truth_pearson_median"] = float(np.nanmedian(rt))
        out["truth_pearson_mean"] = float(np.nanmean(rt))
        out["truth_r2_median"] = float(np.nanmedian(voxel_r2(pred, truth)))
        out["truth_calibration_slope"] = calibration_slope(pred, truth)
    return out


# ---- baselines ------------------------------------------------------------------------------
# The baselines live in napari_nrf.baselines; these names stay importable from here.
from napari_nrf.baselines import RIDGE_ALPHAS, BaselineError, RidgeBaseline, ridge_features  # noqa: E402,F401

BASELINES = ("ridge", "fwrf")


# ---- one call -----------------------------------------------------------------------------
def evaluate(model, rs, *, split: str = "test", features: dict | None = None, feature_cache=None,
             ridge: bool = True, n_candidates: int = 50, n_repeats: int = 10, seed: int = 0,
             predictions: np.ndarray | None = None, baselines=None, fit_kwargs: dict | None = None) -> dict:
    """Evaluate ``model`` on the ``split`` images of response set ``rs``.

    Parameters
    ----------
    features : dict name -> (rs.n_images, ...) array or None
        Backbone features of every image of ``rs`` (computed when None).
    ridge : bool
        Also fit and score the ridge baseline (train split -> ``split``); the same as
        ``baselines=("ridge",)`` (``baselines`` wins when given).
    baselines : sequence of "ridge", "fwrf" or None
        Baselines fitted on the train split and scored on ``split``: "ridge"
        (:class:`napari_nrf.baselines.RidgeBaseline`, robust, pooled + spatial features)
        and "fwrf" (:class:`napari_nrf.baselines.FWRF`, trained with :func:`napari_nrf.train.fit`,
        early-stopped on the val split, ``fit_kwargs`` passed on).
    predictions : (n_split_images, V) array or None
        Use these instead of running the model (e.g. a baseline's).

    Returns
    -------
    dict with the :func:`metrics` of the model (with its calibration applied, see
    :mod:`napari_nrf.calibration`), ``calibration_slope_uncalibrated`` (and
    ``truth_calibration_slope_uncalibrated``): the slopes before the gain, ``calibration``
    (the model's gains: global gain, fallbacks; None for a model without), ``retrieval``
    and one sub-dict per
    baseline ("ridge": plus ``alpha_median`` and ``n_dropped_columns``; "fwrf": plus
    ``best_epoch``) with the same keys.
    """
    todo = tuple(baselines) if baselines is not None else (("ridge",) if ridge else ())
    unknown = sorted(set(todo) - set(BASELINES))
    if unknown:
        raise EvaluationError(f"unknown baseline(s) {unknown}; choose from {list(BASELINES)}")
    rows = rs.indices(split)
    if len(rows) < 2:
        raise EvaluationError(f"the response set {rs.subject!r} has {len(rows)} image(s) in split {split!r}")
    from napari_nrf.data.responseset import check_finite

    true = rs.get_responses(rows)
    check_finite(true, f"responses of {rs.subject} ({split} rows)", rows)  # NaN would make every metric NaN
    if features is None:
        features = set_features(model, rs, cache=feature_cache)
    f_eval = {k: np.asarray(v)[rows] for k, v in features.items()}
    truth = rs.get_truth(rows)
    prec = "given"
    before = {}
    if predictions is None:
        from napari_nrf import precision

        prec = precision.choose(model.device)["dtype"]
        with precision.autocast(model.device, enabled=prec == "bf16"):
            raw = predict_set(model, f_eval, rs, calibrated=False)
        predictions = calibrate_set(model, raw, rs)  # the slope before and after the gain
        before["calibration_slope_uncalibrated"] = calibration_slope(raw, true)
        if truth is not None:
            before["truth_calibration_slope_uncalibrated"] = calibration_slope(raw, truth)
    cal = model.calibration if before else None  # given predictions: the caller's, as they are
    rep = {"subject": rs.subject, "split": split, "precision": prec,
           **metrics(predictions, true, rs.roi, rs.roi_names, rs.noise_ceiling, truth), **before,
           "calibration": None if cal is None else {k: v for k, v in cal.summary().items() if k != "subjects"},
           "retrieval": retrieval(predictions, true, n_candidates, n_repeats, seed)}
    tr = rs.indices("train")
    if todo and len(tr) < 2:
        raise EvaluationError("the baselines need training images (split == train)")
    for name in todo:
        if name == "ridge":
            try:
                rb = RidgeBaseline().fit({k: np.asarray(v)[tr] for k, v in features.items()}, rs.get_responses(tr))
            except BaselineError as e:
                raise EvaluationError(f"ridge baseline: {e}") from e
            pr, extra = rb.predict(f_eval), {"alpha_median": float(np.median(rb.alpha_)),
                                             "n_dropped_columns": rb.n_dropped_}
        else:
            from napari_nrf.baselines import fit_fwrf

            fw, hist = fit_fwrf(rs, {k: np.asarray(v) for k, v in features.items()},
                                backbone=model.backbone_name or "efficientnet-lite0",
                                seed=seed, **(fit_kwargs or {}))
            pr, extra = predict_set(fw, f_eval, rs), {"best_epoch": hist.best_epoch}
        rep[name] = {**metrics(pr, true, rs.roi, rs.roi_names, rs.noise_ceiling, truth),
                     "retrieval": retrieval(pr, true, n_candidates, n_repeats, seed), **extra}
    return rep


_TABLE_COLS = (("pearson_median", "r median"), ("pearson_mean", "r mean"), ("r2_median", "R2 median"),
               ("mse", "MSE"), ("calibration_slope", "slope"), ("calibration_slope_uncalibrated", "slope raw"),
               ("nc_normalised_median", "r2/NC median"),
               ("nc_r2_median", "R2/NC median"), ("truth_pearson_median", "r truth median"))


def format_table(reports: list[dict]) -> str:
    """A plain-text table of evaluation reports: one row per subject for the model and each
    baseline (Pearson r, R^2, MSE, calibration slope, noise-ceiling-normalised r^2 and R^2,
    r against the noiseless truth, retrieval among N candidates), then the median r per
    ROI where the set has ROIs.
    A "-" marks a metric the data cannot give (no ceilings, no truth)."""
    n_cand = sorted({int(r["retrieval"]["n_candidates"]) for r in reports if "retrieval" in r})
    among = f"/{n_cand[0]}" if len(n_cand) == 1 else ""
    labels = [lab for _, lab in _TABLE_COLS] + [f"top1{among}", f"top5{among}"]
    widths = [max(9, len(lab) + 2) for lab in labels]
    head = f"{'subject':<12}{'model':<8}" + "".join(f"{lab:>{w}}" for lab, w in zip(labels, widths))
    lines = [head, "-" * len(head)]
    for rep in reports:
        for name, r in (("model", rep),) + tuple((b, rep.get(b)) for b in BASELINES):
            if r is None:
                continue
            vals = [f"{r[c]:.4f}" if r.get(c) is not None else "-" for c, _ in _TABLE_COLS]
            vals += [f"{r['retrieval'][k]:.3f}" for k in ("top1", "top5")]
            lines.append(f"{rep['subject']:<12}{name:<8}" + "".join(f"{v:>{w}}" for v, w in zip(vals, widths)))
    for rep in reports:  # one block per subject, one row per ROI (tall, not wide)
        roi = rep.get("per_roi") or {}
        if not roi:
            continue
        rr = (rep.get("ridge") or {}).get("per_roi") or {}
        rw = max(12, max(len(k) for k in roi) + 2)
        lines += ["", f"{rep['subject']}: median voxel r per ROI",
                  f"{'ROI':<{rw}}{'voxels':>8}{'model':>10}" + (f"{'ridge':>10}" if rr else "")]
        for k, v in roi.items():
            ridge_cell = (f"{rr[k]['median']:>10.3f}" if k in rr else f"{'-':>10}") if rr else ""
            lines.append(f"{k:<{rw}}{v['n_voxels']:>8}{v['median']:>10.3f}{ridge_cell}")
    return "\n".join(lines)


def write_json(obj, path) -> Path:
    """Write ``obj`` as JSON to ``path`` atomically."""
    from napari_nrf.guards import json_safe

    return write_text_atomic(path, json.dumps(json_safe(obj), indent=2,
                                              default=lambda o: o.item() if hasattr(o, "item") else str(o)))
