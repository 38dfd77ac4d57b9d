"""The one training loop of napari-nrf (NRF fitting, finetuning, Universal-encoder transfer).

:func:`fit` trains any :class:`~napari_nrf.models.EncodingModel` on response sets:

* the backbone is frozen and every image's features are computed once per fit (through
  the on-disk :class:`~napari_nrf.features.FeatureCache` when given) and kept in memory as
  float32 arrays, so an epoch costs only the model's own layers (about 280 kB per image
  for efficientnet-lite0, 0.3 GB for 1000 images; CLIP features are 1.2 MB per image);
* a step draws ``batch_images`` training images of one subject and ``batch_voxels`` of its
  voxels, and minimises ``(1 - alpha) * MSE - alpha * cos``, the cosine taken across the
  sampled voxels of each image and averaged over images (NRF's loss, alpha = 0.1);
* a schedule in optimiser steps (:func:`default_steps` scales it with the training
  images; epochs are derived); AdamW; the kept model is the validation with the best
  median voxel R^2 (mean over validation subjects), and early stopping waits until neither
  R^2 nor the median voxel Pearson r improves; deterministic seeds (a fresh generator per epoch, so a resumed run draws the
  same batches as an uninterrupted one);
* a checkpoint (model + optimiser + history, one safetensors file, never pickled) after
  every epoch, and ``resume=True`` continues from it after an interruption;
* ``trainable`` filters parameter names (finetuning, transfer to a new subject); the
  model's ``parameter_groups`` (its ``lr_scale(name)``) sets each parameter's learning-rate
  multiplier, and the model's ``loss_dict`` (named loss terms, summed) is the loss of a
  batch, on one process and on every rank of a data-parallel run alike (:func:`_train_step`);
* after the best state is restored, a gain that puts its predictions in the data's units
  is fitted on the validation split (:func:`fit_calibration`, :mod:`napari_nrf.calibration`:
  per voxel, shrunk toward one global gain by each voxel's reliability; the global gain
  only for a set with fewer than 10 validation images), kept in ``model.calibration``
  (saved with the bundle, applied by every consumer), ``History.calibration`` and
  ``model.metrics["calibration"]``, and logged;
* ``progress(done, total)`` after each step, ``on_epoch(record)`` after each epoch and
  ``cancel()`` polled between steps (True raises :class:`TrainingCancelled`).

Models are asked for predictions through the contract's ``train_predict(features,
subject, voxels, coords)`` (:mod:`napari_nrf.models.base`): by default continuous models
(NRF) get the sampled voxels' MNI coordinates, voxel-indexed models (Universal encoder)
the voxel indices and the subject name. A kind whose ``supports_fit`` is False (the
ensemble) is refused with :class:`napari_nrf.errors.UnsupportedOperation`.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from napari_nrf import calibration as calib
from napari_nrf import distributed
from napari_nrf.errors import Cancelled, NapariNRFError
from napari_nrf.models.base import encoding_loss
from napari_nrf.settings import NRF_FIT, FitSettings, SettingsError

CHECKPOINT = "checkpoint.safetensors"
BEST = "best.safetensors"


class TrainingError(NapariNRFError):
    """Bad training input (no training images, mismatched features, ...)."""


class TrainingCancelled(Cancelled):
    """Raised when ``cancel()`` returns True; the last epoch's checkpoint stays for resuming."""


@dataclass
class History:
    """What :func:`fit` did: one record per epoch and the best validation score."""

    records: list = field(default_factory=list)
    best_epoch: int = -1
    best_score: float = float("nan")  # validation median voxel r at the best epoch
    best_r2: float = float("nan")  # validation median voxel R^2 at the best epoch (the selection score)
    stopped_early: bool = False
    resumed_from: int | None = None
    calibration: dict = field(default_factory=dict)  # the gain fitted after training (calibration.summary)

    def to_dict(self) -> dict:
        return asdict(self)


# ---- features ---------------------------------------------------------------------------
def set_features(model, rs, cache=None, rows=None, batch_size: int = 32, progress=None) -> dict:
    """Backbone features of a response set's images: dict name -> (n, ...) float32 ndarray.

    ``rows`` (default: every image) selects images; ``cache`` is a FeatureCache.
    """
    from napari_nrf.features import extract_features

    rows = np.arange(rs.n_images) if rows is None else np.asarray(rows)
    own = model.features_of_set(rs, cache=cache, progress=progress)
    if own is not None:  # a kind that reads its own inputs (film chunks), not backbone features
        return own if len(rows) == rs.n_images and np.array_equal(rows, np.arange(rs.n_images)) else \
            {k: v[rows] for k, v in own.items()}
    bb = model.backbone(device="cpu" if model.device.type == "cpu" else model.device)
    return extract_features(bb, rs.get_images(rows), batch_size=batch_size, cache=cache,
                            device=model.device, progress=progress)


def _as_rows(v):
    """Features kept for the loop: lazy row arrays (``lazy_rows``) and integer arrays (uint8
    frames) as they are, read per batch; anything else as float32."""
    if getattr(v, "lazy_rows", False):
        return v
    a = np.asarray(v)
    return a if a.dtype.kind in "ui" else a.astype(np.float32, copy=False)


def _batch(a, rows, dev) -> torch.Tensor:
    """Rows ``rows`` (sorted) of a feature array as a float32 tensor on ``dev``."""
    return torch.as_tensor(np.asarray(a[rows])).to(dev, torch.float32)


def _check_features(feats: dict, n: int, what: str) -> dict:
    for k, v in feats.items():
        if len(v) != n:
            raise TrainingError(f"{what}: feature {k!r} has {len(v)} rows for {n} images")
    return feats


# ---- predictions and metrics ------------------------------------------------------------
def model_predict(model, feats: dict, subject: str, voxels, coords) -> torch.Tensor:
    """Predictions (B, n) of ``model`` for the sampled ``voxels`` (n,) of ``subject`` at MNI
    ``coords`` (n, 3): the one place where the loop meets the model contract."""
    return model.train_predict(feats, subject=subject, voxels=voxels, coords=coords)


def voxel_pearson(pred: np.ndarray, true: np.ndarray) -> np.ndarray:
    """Pearson r per voxel (column) of (n_images, V) arrays; NaN where either is constant."""
    p = np.asarray(pred, np.float64)
    t = np.asarray(true, np.float64)
    p = p - p.mean(0)
    t = t - t.mean(0)
    den = np.sqrt((p * p).sum(0) * (t * t).sum(0))
    with np.errstate(invalid="ignore", divide="ignore"):
        r = (p * t).sum(0) / den
    r[den == 0] = np.nan
    return r.astype(np.float32)


def voxel_r2(pred: np.ndarray, true: np.ndarray) -> np.ndarray:
    """Coefficient of determination per voxel (column) of (n_images, V) arrays:
    ``1 - sum (true - pred)^2 / sum (true - mean(true))^2`` (in the data's units: 0 for a
    prediction of the voxel's mean, negative when worse); NaN where ``true`` is constant."""
    p = np.asarray(pred, np.float64)
    t = np.asarray(true, np.float64)
    sst = ((t - t.mean(0)) ** 2).sum(0)
    with np.errstate(invalid="ignore", divide="ignore"):
        r2 = 1.0 - ((t - p) ** 2).sum(0) / sst
    r2[sst == 0] = np.nan
    return r2.astype(np.float32)


# The loop's default loss lives with the contract (a kind's default loss_dict uses it).
loss_fn = encoding_loss


@torch.no_grad()
def predict_set(model, feats: dict, rs, rows=None, batch_images: int = 64, chunk_voxels: int = 16384,
                calibrated: bool = True) -> np.ndarray:
    """Predictions (n_rows, V) float32 at every voxel of response set ``rs``.

    ``feats`` holds the features of the images ``rows`` (default: all images of ``rs``),
    in that order. ``calibrated``: with the model's gains applied (:func:`calibrate_set`).
    """
    was = model.training
    model.eval()
    n = len(next(iter(feats.values())))
    v = rs.n_voxels
    out = np.empty((n, v), np.float32)
    dev = model.device
    coords = torch.from_numpy(np.asarray(rs.coords, np.float32)).to(dev)
    for s in range(0, n, batch_images):
        fb = {k: _batch(a, slice(s, s + batch_images), dev) for k, a in feats.items()}
        for c in range(0, v, chunk_voxels):
            idx = torch.arange(c, min(c + chunk_voxels, v), device=dev)
            out[s:s + batch_images, c:c + chunk_voxels] = model_predict(
                model, fb, rs.subject, idx, coords[c:c + chunk_voxels]).float().cpu().numpy()
    model.train(was)
    return calibrate_set(model, out, rs) if calibrated else out


def calibrate_set(model, pred: np.ndarray, rs) -> np.ndarray:
    """Uncalibrated predictions ``pred`` (n, V) at the voxels of response set ``rs`` with the
    model's calibration applied (:mod:`napari_nrf.calibration`): a continuous kind's gains
    at the voxels' MNI points, a voxel kind's of ``rs.subject``'s voxels. Unchanged without one."""
    return calib.apply_model(model, pred, coords=rs.coords, voxels=np.arange(rs.n_voxels), subject=rs.subject)


def fit_calibration(model, val_sets, va_feats, va_rows, log=None) -> dict:
    """Fit ``model.calibration`` on the validation rows ``va_rows`` of ``val_sets`` (features
    ``va_feats``, every image of each set) with :func:`napari_nrf.calibration.estimate`;
    returns its summary (or why there is none). ``log(line)`` gets one line about it."""
    import logging

    parts = []
    for rs, f, r in zip(val_sets, va_feats, va_rows):
        if len(r):
            pred = predict_set(model, {k: a[r] for k, a in f.items()}, rs, calibrated=False)
            parts.append((rs.subject, rs.coords, pred, rs.get_responses(r)))
    cal, info = calib.estimate(parts)
    model.calibration = cal
    line = calib.describe(info, cal)
    logging.getLogger(__name__).log(logging.WARNING if (cal is None or info.get("fallback")) else logging.INFO, line)
    if log is not None:
        log(line)
    return {**(cal.summary() if cal is not None else info), "message": line}


# ---- checkpoints ------------------------------------------------------------------------
def _content_hash(rs, rows: int = 64) -> str:
    """A cheap hash of a response set's content: coordinates, image ids and splits in full,
    responses at up to ``rows`` evenly spaced images (a lazy set reads only those rows)."""
    h = hashlib.blake2b(digest_size=12)
    for a in (rs.coords, rs.split, rs.image_ids):
        a = np.asarray(a)
        h.update(str((a.dtype.str, a.shape)).encode())
        h.update(a.tobytes() if a.dtype != object else "\0".join(map(str, a.tolist())).encode())
    n = int(rs.n_images)
    idx = np.unique(np.linspace(0, n - 1, min(rows, n)).astype(int)) if n else np.zeros(0, int)
    h.update(np.ascontiguousarray(np.asarray(rs.responses[idx] if len(idx) else [])).tobytes())
    return h.hexdigest()


def _fingerprint(model, sets, hp: dict) -> str:
    """What makes a run the same run: kind, configuration, every setting and the data's content."""
    desc = {"config": model.config(), "kind": model.kind, "hp": hp,
            "sets": [[rs.subject, rs.n_images, rs.n_voxels, int((rs.split == 0).sum()), _content_hash(rs)]
                     for rs in sets]}
    return hashlib.blake2b(json.dumps(desc, sort_keys=True, default=str).encode(), digest_size=12).hexdigest()


def _save_checkpoint(path: Path, model, opt, params: list, meta: dict) -> None:
    from napari_nrf.models.bundle import save_bundle

    t = {f"model.{k}": v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    for i, (_, p) in enumerate(params):
        st = opt.state.get(p, {})
        for k, v in st.items():
            t[f"optim.{i}.{k}"] = torch.as_tensor(v).detach().cpu().reshape(-1 if k == "step" else v.shape).clone()
    save_bundle(path, t, {"kind": "training-checkpoint", **meta})


def _load_checkpoint(path: Path, model, opt, params: list) -> dict:
    from napari_nrf.models.bundle import load_bundle

    t, meta = load_bundle(path)
    state = {k[6:]: v for k, v in t.items() if k.startswith("model.")}
    model.load_state_dict(state, strict=True)
    dev = model.device
    for i, (_, p) in enumerate(params):
        st = {}
        for k in ("step", "exp_avg", "exp_avg_sq"):
            key = f"optim.{i}.{k}"
            if key in t:
                v = t[key]
                st[k] = v.reshape(()).to(torch.float32) if k == "step" else v.to(dev)
        if st:
            opt.state[p] = st
    return meta


# ---- the loop ---------------------------------------------------------------------------
def default_steps(n_train: int) -> int:
    """Optimiser steps of a default fit on ``n_train`` training images (all sets together):
    ``clip(2 n_train, 400, 2000)`` (20 images: 400, 200: 400, 800: 1600, 1000+: 2000).

    Chosen with ``benchmarks/nrf_schedule.py`` (docs/results.md, "NRF defaults"): a small
    data set needs a few hundred steps to reach the responses' units however few images
    it has (an epoch of 20 images is one step), a large one about two passes' worth of
    steps per 32-image batch; early stopping ends most runs before the cap.
    """
    return int(min(2000, max(400, 2 * int(n_train))))


def fit(model, train_sets, val_sets=None, *, epochs: int | None = NRF_FIT.epochs,
        batch_images: int = NRF_FIT.batch_images, batch_voxels: int = NRF_FIT.batch_voxels,
        lr: float = NRF_FIT.lr, weight_decay: float = NRF_FIT.weight_decay, alpha: float = NRF_FIT.alpha,
        trainable=None, feature_cache=None, features=None, val_features=None, checkpoint_dir=None,
        resume: bool = True, seed: int = NRF_FIT.seed, patience: int = NRF_FIT.patience,
        steps_per_epoch: int | None = NRF_FIT.steps_per_epoch, progress=None, on_epoch=None, cancel=None,
        device=None, val_every: int | None = NRF_FIT.val_every, feature_progress=None,
        steps: int | None = NRF_FIT.steps) -> History:
    """Train ``model`` in place on the train split of ``train_sets``; keep the best epoch.

    The schedule is a number of optimiser steps: ``steps`` (default
    :func:`default_steps` of the training images), split into epochs of
    ``steps_per_epoch`` (default: one pass over the training images); ``epochs`` instead
    gives ``epochs x steps_per_epoch`` steps. The model is validated about 40 times per
    run (every ``val_every`` epochs, default derived) and the validation with the best
    **median voxel R^2** (coefficient of determination, scale-aware: shrunken or inflated
    predictions lose) is kept; training stops when neither R^2 nor the median voxel
    Pearson r has improved for ``patience`` validations.

    Parameters
    ----------
    model : EncodingModel
        NRF, Universal encoder, ... (its subjects must exist for voxel-indexed models).
    train_sets : list of ResponseSet
        Training images are each set's ``split == train`` rows. Subject names must differ.
    val_sets : list of ResponseSet or None
        Validation images are the ``split == val`` rows (default: of ``train_sets``).
        Without any validation rows the last epoch is kept and no early stopping happens.
    steps, epochs : int or None
        The schedule (see above); give at most one.
    batch_images, batch_voxels, lr, weight_decay, alpha, seed, patience, steps_per_epoch, val_every
        Batch (images x sampled voxels), AdamW settings, the loss mixture and early
        stopping: the fields of :class:`napari_nrf.settings.FitSettings` (defaults, checks
        and help text there; these defaults are :data:`napari_nrf.settings.NRF_FIT`).
    trainable : callable(param_name) -> bool, or None
        Only the parameters it accepts are trained (default: all).
    feature_cache : FeatureCache or None
        Where backbone features are read/written.
    features, val_features : list of dict or None
        Precomputed features (name -> (n_images, ...) arrays, every image of the set, in
        order), one per set, to share features between fits.
    checkpoint_dir : path or None
        ``checkpoint.safetensors`` (each epoch) and ``best.safetensors`` (best model) live here.
    resume : bool
        Continue from a checkpoint of the same model, data and settings.
    seed : int
        Seeds batch order, voxel sampling and dropout.
    patience : int
        Stop after this many validations without improvement (of R^2 or r).
    steps_per_epoch : int or None
        Default: one pass over the training images.
    val_every : int or None
        Validate every this many epochs (default: about 40 validations per run).
    progress : callable(done, total), on_epoch : callable(record), cancel : callable() -> bool
    feature_progress : callable(done, total, subject) or None
        Called while the frozen backbone encodes a set's images (before the first step;
        a minute or more for a few hundred uncached images on a CPU).

    Returns
    -------
    History
    """
    if not train_sets:
        raise TrainingError("fit needs at least one response set")
    _check_schedule(epochs=epochs, batch_images=batch_images, batch_voxels=batch_voxels, lr=lr,
                    weight_decay=weight_decay, alpha=alpha, patience=patience, steps_per_epoch=steps_per_epoch,
                    val_every=val_every, steps=steps)
    names = [rs.subject for rs in train_sets]
    if len(set(names)) != len(names):
        raise TrainingError(f"training sets need distinct subject names, got {names}")
    if not model.supports_fit:
        raise model.unsupported("training with fit", "fit its base models, then the model's own fit")
    if distributed.env()[1] > 1:  # started by torchrun: one device per rank, join the group
        model.to(distributed.rank_device(device if device is not None else model.device))
        distributed.setup(model.device)
    elif device is not None:
        model.to(device)
    dev = model.device
    world = distributed.world_size()
    main = distributed.is_main()
    if not main:  # rank 0 reports; the others train silently
        progress = on_epoch = feature_progress = None
    val_sets = list(train_sets) if val_sets is None else list(val_sets)
    model.training_history = None  # an earlier fit's records must not go beside this run's checkpoints

    tr_rows = [rs.indices("train") for rs in train_sets]
    if sum(len(r) for r in tr_rows) == 0:
        raise TrainingError("no training images (split == train) in the response sets")
    va_rows = [rs.indices("val") for rs in val_sets]
    have_val = any(len(r) >= 3 for r in va_rows)
    tr_y = [rs.get_responses(r) for rs, r in zip(train_sets, tr_rows)]
    # NaN / inf responses would train a NaN model (or stop at a NaN loss): refused with
    # the rows and voxels at fault, before any feature is computed.
    from napari_nrf.data.responseset import check_finite

    for rs, r, y in zip(train_sets, tr_rows, tr_y):
        check_finite(y, f"responses of {rs.subject} (training rows)", r)
    for rs, r in zip(val_sets, va_rows):
        if len(r) >= 3:
            check_finite(rs.get_responses(r), f"responses of {rs.subject} (validation rows)", r)

    if checkpoint_dir is not None and main:
        from napari_nrf.guards import check_free_disk

        # Checkpoint (weights + two Adam moments), best weights and the final bundle: a
        # full disk is refused now, not after the features, an epoch or the whole training.
        n_bytes = sum(t.numel() * t.element_size() for t in model.state_dict().values())
        check_free_disk(Path(checkpoint_dir) / CHECKPOINT, 5 * n_bytes, "the training's checkpoints and model")

    # Features of every image, once (frozen backbone).
    def feats_for(sets, given, what):
        out = []
        for i, rs in enumerate(sets):
            if given is not None:
                f = given[i]
            else:
                prog = None if feature_progress is None else (
                    lambda d, t, _s=rs.subject: feature_progress(d, t, _s))
                f = (set_features(model, rs, cache=feature_cache, progress=prog) if world == 1
                     else _shared_features(model, rs, feature_cache, prog))
            out.append(_check_features({k: _as_rows(v) for k, v in f.items()}, rs.n_images,
                                       f"{what} set {rs.subject}"))
        return out

    tr_feats = feats_for(train_sets, features, "training")
    if val_features is None and val_sets is not None and all(any(v is t for t in train_sets) for v in val_sets):
        va_feats = [tr_feats[[id(t) for t in train_sets].index(id(v))] for v in val_sets]
    else:
        va_feats = feats_for(val_sets, val_features, "validation")
    tr_coords = [torch.from_numpy(np.asarray(rs.coords, np.float32)).to(dev) for rs in train_sets]
    if model.continuous:
        for rs in train_sets:  # the bundle records whose voxels the field was fitted to
            model.subjects.setdefault(rs.subject, np.asarray(rs.coords, np.float32))

    scaled = model.parameter_groups(trainable)  # (name, parameter, lr scale)
    params = [(n, p) for n, p, _ in scaled]
    if not params:
        raise TrainingError("the trainable filter accepts no parameter")
    keep = {n for n, _ in params}
    old_flags = {n: p.requires_grad for n, p in model.named_parameters()}
    for n, p in model.named_parameters():
        p.requires_grad_(n in keep)
    # A model may scale the learning rate of some parameters: the Universal encoder's voxel
    # embeddings, each updated only when its voxel is sampled.
    groups: dict = {}
    for _, p, s in scaled:
        groups.setdefault(s, []).append(p)
    opt = torch.optim.AdamW([{"params": ps, "lr": lr * s} for s, ps in groups.items()], lr=lr,
                            weight_decay=weight_decay)

    sizes = np.array([len(r) for r in tr_rows], float)
    n_steps = steps_per_epoch or int(sum(math.ceil(s / batch_images) for s in sizes if s))
    if epochs is None:  # the schedule in steps; epochs derived
        total_steps = int(steps) if steps is not None else default_steps(int(sizes.sum()))
        epochs = max(1, math.ceil(total_steps / n_steps))
    if val_every is None:
        val_every = max(1, round(epochs / 40))
    hp = dict(epochs=epochs, batch_images=batch_images, batch_voxels=batch_voxels, lr=lr, weight_decay=weight_decay,
              alpha=alpha, seed=seed, steps_per_epoch=n_steps, trainable=sorted(keep),
              steps=n_steps * epochs, val_every=val_every, patience=patience)
    fp = _fingerprint(model, train_sets, hp)
    hist = History()
    start_epoch, bad = 0, 0
    best_state = None
    best_r = float("nan")  # best validation median r so far (restored on resume)
    ckdir = Path(checkpoint_dir) if checkpoint_dir is not None else None
    if ckdir is not None:
        ckdir.mkdir(parents=True, exist_ok=True)
        ck = ckdir / CHECKPOINT
        if resume and ck.exists():
            from napari_nrf.models.bundle import read_metadata

            meta = read_metadata(ck)
            if meta.get("fingerprint") != fp:
                import warnings

                warnings.warn(f"{ck}: the checkpoint is of another run (different data, model or settings); "
                              "starting over", stacklevel=2)
            else:
                meta = _load_checkpoint(ck, model, opt, params)
                hist = History(**{k: v for k, v in meta["history"].items() if k in History.__dataclass_fields__})
                start_epoch, bad = int(meta["epoch"]) + 1, int(meta.get("bad", 0))
                best_r = float(meta.get("best_r", float("nan")))
                hist.resumed_from = int(meta["epoch"])
                if (ckdir / BEST).exists():
                    from napari_nrf.models.bundle import load_bundle

                    best_state = {k: v.to(dev) for k, v in load_bundle(ckdir / BEST)[0].items()
                                  if not k.startswith("subjects.")}

    total = n_steps * epochs
    if world > 1:  # every rank starts from rank 0's weights (a random init of new embeddings)
        with torch.no_grad():
            for t in model.state_dict().values():
                torch.distributed.broadcast(t, src=0)
    old_cal, model.calibration = model.calibration, None  # training and validation see raw predictions
    model.train()
    try:
        for epoch in range(start_epoch, epochs):
            if hist.stopped_early:
                break
            t0 = time.perf_counter()
            rng = np.random.default_rng([seed, epoch])
            torch.manual_seed(seed * 100003 + epoch)
            plan = _plan(rng, tr_rows, sizes, batch_images, n_steps)
            losses, terms = [], {}
            for step, (si, rows_local) in enumerate(plan):
                v = train_sets[si].n_voxels
                vox = np.sort(rng.choice(v, size=min(batch_voxels, v), replace=False))
                total_loss, named = _train_step(model, opt, params, tr_feats[si], tr_rows[si], tr_y[si], rows_local,
                                                vox, train_sets[si].subject, tr_coords[si], alpha, cancel, world,
                                                (epoch, step, lr))
                losses.append(total_loss)
                for k, x in named.items():
                    terms.setdefault(k, []).append(x)
                if progress is not None:
                    progress(epoch * n_steps + step + 1, total)
            rec = {"epoch": epoch, "train_loss": float(np.mean(losses)), "seconds": time.perf_counter() - t0}
            if len(terms) > 1:  # a kind with several named loss terms: each one's epoch mean
                rec["train_terms"] = {k: float(np.mean(x)) for k, x in terms.items()}
            if have_val and ((epoch + 1) % val_every == 0 or epoch == epochs - 1):
                meds, r2s = _validate(model, val_sets, va_feats, va_rows, world)
                model.train()
                score, r2 = float(np.mean(meds)), float(np.mean(r2s))
                rec["val_median_pearson"], rec["val_median_r2"] = score, r2
                # The kept state maximises R^2 (scale-aware); patience runs out only when
                # neither R^2 nor the scale-free r still improves.
                improved = False
                if not hist.best_r2 == hist.best_r2 or r2 > hist.best_r2:  # NaN check: first validation
                    hist.best_r2, hist.best_score, hist.best_epoch, improved = r2, score, epoch, True
                    best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
                    if ckdir is not None and main:
                        model.save(ckdir / BEST)
                if not best_r == best_r or score > best_r:
                    best_r, improved = score, True
                if improved:
                    bad = 0
                else:
                    bad += 1
                    if bad >= patience:
                        hist.stopped_early = True
            hist.records.append(rec)
            if ckdir is not None and main:  # every rank holds the same state; one writes it
                _save_checkpoint(ckdir / CHECKPOINT, model, opt, params,
                                 {"epoch": epoch, "bad": bad, "best_r": best_r, "fingerprint": fp,
                                  "history": hist.to_dict(), "hp": hp})
            if on_epoch is not None:
                on_epoch(dict(rec))
    except BaseException:
        model.calibration = old_cal
        raise
    finally:
        for n, p in model.named_parameters():
            p.requires_grad_(old_flags.get(n, True))
        model.eval()
    if best_state is not None:
        model.load_state_dict(best_state)
    model.training_history = list(hist.records)  # saved beside the bundle (napari_nrf.history)
    # The gain that puts the kept state in the data's units, on the validation split.
    if model.own_calibration:  # e.g. a film model whose gain needs whole films, not validation rows
        hist.calibration = {"skipped": f"the {model.kind} kind fits its own gain"}
    else:
        hist.calibration = fit_calibration(model, val_sets, va_feats, va_rows)
    if old_cal is not None and trainable is not None:
        # A partial fit (one subject's own parameters): the other subjects keep their gains
        # (and all of them the old ones when no new gain could be fitted).
        if model.calibration is None:
            model.calibration = old_cal
        for s, v in old_cal.voxels.items():
            model.calibration.voxels.setdefault(s, v)
    if not have_val and hist.records:
        hist.best_epoch = hist.records[-1]["epoch"]
    model.metrics = dict(model.metrics or {})
    if have_val:
        model.metrics["val_median_pearson"] = hist.best_score
        model.metrics["val_median_r2"] = hist.best_r2
    model.metrics["calibration"] = {k: v for k, v in hist.calibration.items() if k != "subjects"}
    model.provenance = dict(model.provenance or {})
    model.provenance["training"] = {**{k: v for k, v in hp.items() if k != "trainable"},
                                    "subjects": names, "n_train_images": [int(s) for s in sizes],
                                    "best_epoch": hist.best_epoch, "epochs_run": len(hist.records)}
    if world > 1:
        model.provenance["training"]["ranks"] = world
        distributed.barrier()  # no rank still reads the checkpoint when rank 0 removes it
    if ckdir is not None and main:
        # A finished run's checkpoint is removed: resuming it would skip training.
        for f in (ckdir / CHECKPOINT, ckdir / BEST):
            f.unlink(missing_ok=True)
        try:
            ckdir.rmdir()
        except OSError:
            pass  # other files of the user's in it
    return hist


def check_fit_settings(kwargs: dict, defaults: FitSettings = NRF_FIT) -> None:
    """Check :func:`fit` keyword arguments (missing ones take ``defaults``) before work
    starts elsewhere, e.g. when a background job is queued. Raises :class:`TrainingError`."""
    try:
        defaults.check_kwargs(kwargs)
    except SettingsError as exc:
        raise TrainingError(str(exc)) from exc


def _check_schedule(**hp) -> None:
    """Refuse settings that cannot train (a zero batch gives a NaN loss, 0 epochs no model)."""
    check_fit_settings(hp)


def _train_step(model, opt, params, feats, rows_set, y_set, rows_local, vox, subject, coords, alpha, cancel,
                world, where) -> tuple[float, dict]:
    """One optimiser step, on one process or on every rank of a data-parallel run.

    The batch is the images ``rows_set[rows_local]`` (their responses ``y_set[rows_local]``)
    and the sampled voxels ``vox``; the loss is the sum of the model's
    :meth:`~napari_nrf.models.EncodingModel.loss_dict` terms. With several ranks, each
    takes its share of the batch (a kind whose ``splits_batches`` is False: the whole
    batch) and weights its loss by that share's fraction, so the gradients summed over
    the ranks in one all-reduce (with the loss terms and the cancel flags) are the whole
    batch's gradient, as on one process. ``where`` is (epoch, step, lr) for messages.
    Returns the batch's loss and its named terms (floats)."""
    epoch, step, lr = where
    stop = bool(cancel is not None and cancel())
    if stop and world == 1:
        raise TrainingCancelled(f"training cancelled in epoch {epoch}")
    dev = model.device
    n_batch = len(rows_local)
    split = world > 1 and model.splits_batches
    own = rows_local[distributed.share(n_batch)] if split else rows_local
    weight = len(own) / n_batch if split else 1.0 / world
    opt.zero_grad(set_to_none=True)
    names = list(model.loss_terms)  # known on every rank, also one without rows in this batch
    values = torch.zeros(len(names), device=dev)
    if len(own):
        fb = {k: _batch(a, rows_set[own], dev) for k, a in feats.items()}
        y = torch.from_numpy(y_set[own][:, vox]).to(dev)
        vt = torch.from_numpy(vox).to(dev)
        named = model.loss_dict(fb, y, subject, vt, coords[vt], alpha)
        if list(named) != names:
            raise TrainingError(f"model kind {model.kind!r}: loss_dict gave the terms {list(named)}, "
                                f"its loss_terms declare {names}")
        loss = sum(named.values())
        if world == 1 and not torch.isfinite(loss):
            # Stop before the optimiser spreads NaN into every weight; the last epoch's
            # checkpoint stays valid.
            _diverged(loss.item(), epoch, step, lr)
        (loss * weight if weight != 1.0 else loss).backward()
        values = torch.stack([t.detach().float() * weight for t in named.values()])
    if world == 1:
        opt.step()
        return float(loss.item()), dict(zip(names, values.tolist()))
    ps = [p for _, p in params]
    # A parameter without a gradient on every rank (another subject's embeddings) stays
    # without one: AdamW then leaves it (and its moments) alone, as on one process.
    has = torch.tensor([0.0 if p.grad is None else 1.0 for p in ps], device=dev)
    for p in ps:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
    tail = torch.cat([has, values, torch.tensor([1.0 if stop else 0.0], device=dev)])
    distributed.allreduce_([p.grad for p in ps] + [tail])
    if tail[-1].item() > 0:
        raise TrainingCancelled(f"training cancelled in epoch {epoch}")
    vals = tail[len(ps):-1].tolist()
    total = float(sum(vals))
    if not math.isfinite(total):
        _diverged(total, epoch, step, lr)
    for p, h in zip(ps, tail[:len(ps)].tolist()):
        if h == 0:
            p.grad = None
    opt.step()
    return total, dict(zip(names, vals))


def _diverged(value, epoch, step, lr):
    raise TrainingError(
        f"the loss became {value} at epoch {epoch}, step {step}: lower the learning rate "
        f"(now {lr:g}) or check the responses and features for NaN/inf values")


def _validate(model, val_sets, va_feats, va_rows, world) -> tuple[list, list]:
    """Median voxel r and R^2 of each validation set (with at least 3 rows). With several
    ranks each predicts its share of the rows and the per-voxel sums are added."""
    meds, r2s = [], []
    for rs, f, r in zip(val_sets, va_feats, va_rows):
        if len(r) < 3:
            continue
        if world > 1:
            r_own = r[distributed.share(len(r))]
            pred = predict_set(model, {k: a[r_own] for k, a in f.items()}, rs)
            sums = distributed.allreduce_numpy(distributed.voxel_sums(pred, rs.get_responses(r_own)), model.device)
            vr, vr2 = distributed.sums_scores(sums)
        else:
            pred = predict_set(model, {k: a[r] for k, a in f.items()}, rs)
            yv = rs.get_responses(r)
            vr, vr2 = voxel_pearson(pred, yv), voxel_r2(pred, yv)
        meds.append(float(np.nanmedian(vr)))
        r2s.append(float(np.nanmedian(vr2)))
    return meds, r2s


def _shared_features(model, rs, cache, progress=None) -> dict:
    """Features of every image of ``rs`` when training data-parallel: each rank encodes
    its share of the images; with a feature cache the shares go through it (its writes are
    locked, see :class:`napari_nrf.features.FeatureCache`) and every rank then reads all,
    without one the shares are gathered. Shares are whole batches of 32 images."""
    # Whole extraction batches per rank: a batch's numbers (then rounded to the cache's
    # float16) are those of a one-process run only when the batch holds the same images.
    bs = 32
    batches = distributed.share(math.ceil(rs.n_images / bs))
    own = np.arange(batches.start * bs, min(batches.stop * bs, rs.n_images))
    mine = set_features(model, rs, cache=cache, rows=own, batch_size=bs, progress=progress) if len(own) else {}
    if cache is not None:
        distributed.barrier()
        return set_features(model, rs, cache=cache)
    parts = [None] * distributed.world_size()
    torch.distributed.all_gather_object(parts, {k: np.asarray(v, np.float32) for k, v in mine.items()})
    parts = [p for p in parts if p]
    return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}


def _plan(rng, tr_rows, sizes, batch_images: int, n_steps: int) -> list:
    """(set index, local row positions) per step: shuffled passes over each set's images."""
    batches = []
    while len(batches) < n_steps:
        chunk = []
        for si, n in enumerate(sizes.astype(int)):
            if n == 0:
                continue
            perm = rng.permutation(n)
            chunk += [(si, np.sort(perm[s:s + batch_images])) for s in range(0, n, batch_images)]
        rng.shuffle(chunk)
        batches += chunk
    return batches[:n_steps]
