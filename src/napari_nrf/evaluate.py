"""Evaluation of encoding models: voxelwise accuracy, retrieval and a ridge baseline.

>>> report = evaluate(model, rs)                 # test split of a ResponseSet
>>> report["pearson_median"], report["retrieval"]["top1"], report["ridge"]["pearson_median"]

Metrics (all on held-out images of one subject):

* voxelwise Pearson r between predicted and measured responses across images: median,
  mean and median per ROI (``rs.roi`` / ``rs.roi_names``);
* MSE over images and voxels;
* noise-ceiling-normalised accuracy ``r^2 / (NC / 100)`` per voxel where a ceiling exists
  (NSD's ceilings are percentages of explainable variance), median and mean;
* against the noiseless truth when the set has one (virtual subjects);
* image retrieval as in seed 002: for each measured test response, the true image and
  N - 1 random distractor test images are ranked by the Pearson correlation (across
  voxels) of their predicted response with the measured one; top-1 and top-5 accuracy,
  averaged over ``n_repeats`` draws of distractors;
* a voxelwise ridge baseline on the same frozen backbone features (the pooled embedding
  plus each token map averaged over tokens, standardised), scikit-learn ``RidgeCV`` with
  one alpha per voxel chosen by efficient leave-one-out (GCV), fitted on the train split.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from napari_nrf.errors import NapariNRFError, write_text_atomic
from napari_nrf.train import predict_set, set_features, voxel_pearson

RIDGE_ALPHAS = np.logspace(-1, 6, 15)


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


def metrics(pred: np.ndarray, true: np.ndarray, roi=None, roi_names=None, noise_ceiling=None,
            truth=None) -> dict:
    """Voxelwise accuracy of ``pred`` against ``true`` (both (n_images, V) float).

    Returns a JSON-able dict: pearson_median, pearson_mean, mse, per_roi (name ->
    {median, n_voxels}), nc_normalised_median / _mean (when ``noise_ceiling`` (V,), in
    percent, is given) and truth_pearson_median / _mean (when ``truth`` is given).
    """
    pred = np.asarray(pred, np.float32)
    true = np.asarray(true, np.float32)
    if pred.shape != true.shape:
        raise EvaluationError(f"predictions {pred.shape} and responses {true.shape} differ in shape")
    r = voxel_pearson(pred, true)
    out = {"n_images": int(pred.shape[0]), "n_voxels": int(pred.shape[1]),
           "pearson_median": float(np.nanmedian(r)), "pearson_mean": float(np.nanmean(r)),
           "mse": float(np.mean((pred - true) ** 2))}
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
    if truth is not None:
        rt = voxel_pearson(pred, truth)
        out["truth_pearson_median"] = float(np.nanmedian(rt))
        out["truth_pearson_mean"] = float(np.nanmean(rt))
    return out


# ---- ridge baseline -----------------------------------------------------------------------
def ridge_features(feats: dict) -> np.ndarray:
    """(n, D) design matrix: the pooled embedding(s) and every token map averaged over tokens."""
    cols = []
    for k in sorted(feats):
        a = np.asarray(feats[k], np.float32)
        cols.append(a.mean(1) if a.ndim == 3 else a.reshape(len(a), -1))
    return np.concatenate(cols, axis=1)


class RidgeBaseline:
    """Voxelwise ridge regression from backbone features, one alpha per voxel (RidgeCV, GCV).

    Parameters
    ----------
    alphas : array of float
        Candidate penalties (default 1e-1 .. 1e6, log-spaced).
    """

    def __init__(self, alphas=RIDGE_ALPHAS):
        self.alphas = np.asarray(alphas, float)
        self.model = None

    def fit(self, feats: dict, y: np.ndarray) -> "RidgeBaseline":
        from sklearn.linear_model import RidgeCV

        x = ridge_features(feats).astype(np.float64)
        self.mean_, self.std_ = x.mean(0), x.std(0) + 1e-6
        self.model = RidgeCV(alphas=self.alphas, alpha_per_target=True)
        self.model.fit((x - self.mean_) / self.std_, np.asarray(y, np.float64))
        return self

    def predict(self, feats: dict) -> np.ndarray:
        if self.model is None:
            raise EvaluationError("fit the ridge baseline first")
        x = (ridge_features(feats).astype(np.float64) - self.mean_) / self.std_
        return self.model.predict(x).astype(np.float32)

    @property
    def alpha_(self) -> np.ndarray:
        return np.atleast_1d(self.model.alpha_)


# ---- one call -----------------------------------------------------------------------------
def evaluate(model, rs, *, split: str = "test", features: dict | None = None, feature_cache=None,
             ridge: bool = True, n_candidates: int = 50, n_repeats: int = 10, seed: int = 0,
             predictions: np.ndarray | None = None) -> dict:
    """Evaluate ``model`` on the ``split`` images of response set ``rs``.

    Parameters
    ----------
    features : dict name -> (rs.n_images, ...) array or None
        Backbone features of every image of ``rs`` (computed when None).
    ridge : bool
        Also fit and score the ridge baseline (train split -> ``split``).
    predictions : (n_split_images, V) array or None
        Use these instead of running the model (e.g. a baseline's).

    Returns
    -------
    dict with the :func:`metrics` of the model, ``retrieval`` and (``ridge=True``) a
    ``ridge`` sub-dict with the same keys plus ``alpha_median``.
    """
    rows = rs.indices(split)
    if len(rows) < 2:
        raise EvaluationError(f"the response set {rs.subject!r} has {len(rows)} image(s) in split {split!r}")
    if features is None:
        features = set_features(model, rs, cache=feature_cache)
    f_eval = {k: np.asarray(v)[rows] for k, v in features.items()}
    true = rs.get_responses(rows)
    truth = rs.get_truth(rows)
    prec = "given"
    if predictions is None:
        from napari_nrf import precision

        prec = precision.choose(model.device)["dtype"]
        with precision.autocast(model.device, enabled=prec == "bf16"):
            predictions = predict_set(model, f_eval, rs)
    rep = {"subject": rs.subject, "split": split, "precision": prec,
           **metrics(predictions, true, rs.roi, rs.roi_names, rs.noise_ceiling, truth),
           "retrieval": retrieval(predictions, true, n_candidates, n_repeats, seed)}
    if ridge:
        tr = rs.indices("train")
        if len(tr) < 2:
            raise EvaluationError("the ridge baseline needs training images (split == train)")
        rb = RidgeBaseline().fit({k: np.asarray(v)[tr] for k, v in features.items()}, rs.get_responses(tr))
        pr = rb.predict(f_eval)
        rep["ridge"] = {**metrics(pr, true, rs.roi, rs.roi_names, rs.noise_ceiling, truth),
                        "retrieval": retrieval(pr, true, n_candidates, n_repeats, seed),
                        "alpha_median": float(np.median(rb.alpha_))}
    return rep


_TABLE_COLS = (("pearson_median", "r median"), ("pearson_mean", "r mean"), ("mse", "MSE"),
               ("nc_normalised_median", "r2/NC median"), ("truth_pearson_median", "r truth median"))


def format_table(reports: list[dict]) -> str:
    """A plain-text table of evaluation reports: one row per subject for the model and the
    ridge baseline (Pearson r, MSE, noise-ceiling-normalised r^2, r against the noiseless
    truth, retrieval among N candidates), then the median r per ROI where the set has ROIs.
    A "-" marks a metric the data cannot give (no ceilings, no truth)."""
    n_cand = sorted({int(r["retrieval"]["n_candidates"]) for r in reports if "retrieval" in r})
    among = f"/{n_cand[0]}" if len(n_cand) == 1 else ""
    labels = [lab for _, lab in _TABLE_COLS] + [f"top1{among}", f"top5{among}"]
    widths = [max(9, len(lab) + 2) for lab in labels]
    head = f"{'subject':<12}{'model':<8}" + "".join(f"{lab:>{w}}" for lab, w in zip(labels, widths))
    lines = [head, "-" * len(head)]
    for rep in reports:
        for name, r in (("model", rep), ("ridge", rep.get("ridge"))):
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
    return write_text_atomic(path, json.dumps(obj, indent=2,
                                              default=lambda o: o.item() if hasattr(o, "item") else str(o)))
