"""New-subject adaptation (seed 000 section 3.2, seed 002 section 4.4).

:func:`finetune_ensemble` adapts K pretrained models to a new subject from a few of its
images and returns one :class:`~napari_nrf.models.ensemble.EnsembleModel`:

1. the new subject's response set is cut to ``n_images`` training images (a seeded random
   choice among its ``split == train`` rows) plus its validation rows, the held-out split
   that early-stops each finetuning;
2. each base is adapted through the one training loop, :func:`napari_nrf.train.fit`:
   an NRF is finetuned end to end (merger and MLP); a universal encoder gets the new
   subject's voxel embeddings, trained alone (embeddings-only transfer,
   :func:`napari_nrf.models.universal.transfer_subject`);
3. the voxelwise least-squares ensemble (a weight per base and a bias per voxel, eq. 1-2)
   is fitted on the same training images.

Every step checkpoints under ``checkpoint_dir``: ``base-{k}/`` holds fit's per-epoch
checkpoint and ``finetuned-{k}.safetensors`` a finished base, so a resumed run skips
finished bases and continues the current one from its last epoch (fit's batches are
seeded per epoch, so the result equals an uninterrupted run's). The output is written
atomically and never over a base model.

:func:`finetune_job` and :func:`transfer_job` are the :mod:`napari_nrf.jobs` targets
(``napari-nrf finetune``, the Training jobs widget); :func:`submit_finetune` queues one.
:func:`train_job` / :func:`submit_train` run the same loop on a new NRF from scratch in the
background (the widget's "Train a new NRF" mode), with the same progress, cancel and resume.
"""

from __future__ import annotations

import copy
import time
from pathlib import Path

import numpy as np
import torch

from napari_nrf.errors import NapariNRFError, choose_device
from napari_nrf.settings import FINETUNE_FIT


class FinetuneError(NapariNRFError):
    """Bad input to new-subject adaptation (no base, too few images, output over a base)."""


def _load_set(data):
    from napari_nrf.data.responseset import ResponseSet

    return data if isinstance(data, ResponseSet) else ResponseSet.load(data)


def select_images(rs, n_images: int | None, seed: int = 0):
    """A copy of ``rs`` with ``n_images`` of its training images (seeded random choice,
    kept in file order) and all its validation images; returns (subset, rows).

    ``rows`` (int64) are the kept rows of ``rs``. ``n_images=None`` keeps every training image.
    """
    tr, va = rs.indices("train"), rs.indices("val")
    if n_images is not None:
        if n_images < 2:
            raise FinetuneError(f"need at least 2 training images, got n_images={n_images}")
        if n_images > len(tr):
            raise FinetuneError(f"{rs.subject} has {len(tr)} training images; asked for {n_images}")
        tr = np.sort(np.random.default_rng([seed, 7]).choice(tr, size=n_images, replace=False))
    rows = np.concatenate([tr, va]).astype(np.int64)
    return rs.subset(rows), rows


def _round_features(feats: dict) -> dict:
    # The feature cache stores float16: round fresh features the same way so a resumed
    # run (reading the cache) trains on exactly the numbers of the first run.
    return {k: np.asarray(v, np.float32).astype(np.float16).astype(np.float32) for k, v in feats.items()}


def _as_model(base, device):
    from napari_nrf.models import load_model

    if isinstance(base, (str, Path)):
        return load_model(base, device=device)
    return copy.deepcopy(base).to(device)


def finetune_ensemble(bases, data, *, n_images: int | None = None, epochs: int = FINETUNE_FIT.epochs,
                      batch_images: int = FINETUNE_FIT.batch_images, batch_voxels: int = FINETUNE_FIT.batch_voxels,
                      lr: float = FINETUNE_FIT.lr, weight_decay: float = FINETUNE_FIT.weight_decay,
                      alpha: float = FINETUNE_FIT.alpha, patience: int = FINETUNE_FIT.patience,
                      seed: int = FINETUNE_FIT.seed, ridge: float = 0.0,
                      steps_per_epoch: int | None = FINETUNE_FIT.steps_per_epoch,
                      feature_cache=None, features: dict | None = None, checkpoint_dir=None, resume: bool = True,
                      device=None, progress=None, cancel=None, out=None, finetune: bool = True):
    """Adapt K base models to the subject of ``data`` and fit their voxelwise ensemble.

    Parameters
    ----------
    bases : list of paths (.safetensors bundles) or EncodingModel
        The K pretrained models (one backbone). Models are copied, files never written.
    data : ResponseSet or path (.h5)
        The new subject (training rows, validation rows for early stopping).
    n_images : int or None
        Training images to use (default: all of the train split).
    epochs, batch_images, batch_voxels, lr, weight_decay, alpha, patience, steps_per_epoch
        :func:`napari_nrf.train.fit` settings of each finetuning (defaults
        :data:`napari_nrf.settings.FINETUNE_FIT`: lr lower than training from scratch).
        Universal bases use the transfer defaults for lr/decay.
    seed : int
        Seeds the image choice and every fit.
    ridge : float
        Ridge term of the ensemble fit (0: ordinary least squares, the paper).
    feature_cache : FeatureCache, path or None
    features : dict or None
        Precomputed backbone features of every image of ``data`` (name -> (N, ...)).
    checkpoint_dir : path or None
        Checkpoints for resuming (see the module doc).
    device : str or None
        Default: CUDA when available, else the CPU (:func:`napari_nrf.errors.choose_device`).
    progress : callable(record: dict) or None
        Records with ``stage``, ``base``, ``epoch``, ``step``, ``fraction`` (0..1),
        ``loss`` and ``val_pearson`` (validation median voxel Pearson) when known.
    cancel : callable() -> bool or None
        Polled between steps; True raises :class:`napari_nrf.train.TrainingCancelled`.
    out : path or None
        Save the ensemble bundle here (atomically); refused when it is a base's file.
    finetune : bool
        False skips step 2 (an ensemble of the pretrained bases as they are).

    Returns
    -------
    (EnsembleModel, info dict with per-base histories and validation scores)
    """
    from napari_nrf.features import FeatureCache
    from napari_nrf.models.ensemble import EnsembleModel
    from napari_nrf.train import fit, predict_set, set_features, voxel_pearson

    if not bases:
        raise FinetuneError("finetuning needs at least one base model")
    device = choose_device(device)
    if out is not None:
        out = Path(out)
        for b in bases:
            if isinstance(b, (str, Path)) and Path(b).resolve() == out.resolve():
                raise FinetuneError(f"the output {out} is one of the base models; choose another file")
    rs = _load_set(data)
    sub, rows = select_images(rs, n_images, seed)
    n_tr = int((sub.split == 0).sum())
    report = progress or (lambda rec: None)
    ck = Path(checkpoint_dir) if checkpoint_dir is not None else None
    if ck is not None:
        ck.mkdir(parents=True, exist_ok=True)
    cache = FeatureCache(feature_cache) if isinstance(feature_cache, (str, Path)) else feature_cache

    k_total = len(bases)
    t_start = time.time()
    models = []
    feats = None
    info = {"subject": sub.subject, "n_train_images": n_tr, "n_val_images": int((sub.split == 1).sum()),
            "bases": [str(b) if isinstance(b, (str, Path)) else getattr(b, "kind", "model") for b in bases],
            "histories": [], "val_pearson": []}
    for k, base in enumerate(bases):
        done_path = ck / f"finetuned-{k}.safetensors" if ck is not None else None
        if resume and done_path is not None and done_path.exists():
            from napari_nrf.models import load_model

            model = load_model(done_path, device=device)
            models.append(model)
            info["histories"].append(model.provenance.get("finetune_history"))
            info["val_pearson"].append(model.metrics.get("val_median_pearson"))
            report({"stage": "finetune", "base": k, "fraction": 0.95 * (k + 1) / k_total, "skipped": True})
            continue
        model = _as_model(base, device)
        if feats is None:
            report({"stage": "features", "fraction": 0.0})
            if features is not None:
                feats = {n: np.asarray(v)[rows] for n, v in features.items()}
            else:
                feats = set_features(model, sub, cache=cache)
            feats = _round_features(feats)
        if finetune:
            last = [0.0]

            def prog(done, total, k=k):
                if done == total or time.time() - last[0] > 0.5:  # a line per step is too many
                    last[0] = time.time()
                    report({"stage": "finetune", "base": k, "step": int(done), "steps": int(total),
                            "fraction": 0.95 * (k + done / max(total, 1)) / k_total})

            def on_epoch(rec, k=k):
                report({"stage": "finetune", "base": k, "epoch": rec["epoch"], "loss": rec.get("train_loss"),
                        "val_pearson": rec.get("val_median_pearson")})

            kw = dict(epochs=epochs, batch_images=batch_images, batch_voxels=batch_voxels, alpha=alpha,
                      patience=patience, seed=seed, steps_per_epoch=steps_per_epoch, features=[feats],
                      checkpoint_dir=None if ck is None else ck / f"base-{k}", resume=resume, progress=prog,
                      on_epoch=on_epoch, cancel=cancel, device=device)
            if getattr(model, "kind", "") == "universal":
                from napari_nrf.recipes import transfer_subject

                if sub.subject in model.voxel_embeddings:
                    raise FinetuneError(f"base {k} already has a subject named {sub.subject!r}")
                model, hist = transfer_subject(model, sub, **kw)
            else:
                hist = fit(model, [sub], lr=lr, weight_decay=weight_decay, **kw)
                # The finetuned field now belongs to the new subject (fit keeps older coords
                # of a same-named subject; these are the ones the ensemble uses).
                model.subjects[sub.subject] = np.asarray(sub.coords, np.float32)
            h = hist.to_dict()
            info["histories"].append(h)
            info["val_pearson"].append(h.get("best_score"))
            model.provenance = dict(model.provenance or {})
            model.provenance["finetune_history"] = h
        elif getattr(model, "kind", "") == "universal":
            raise FinetuneError("a universal base needs the new subject's embeddings: use finetune=True")
        if done_path is not None:
            model.save(done_path)
        models.append(model.eval())
    if feats is None:  # every base was finished in an earlier run
        feats = _round_features({n: np.asarray(v)[rows] for n, v in features.items()} if features is not None
                                else set_features(models[0], sub, cache=cache))
    report({"stage": "ensemble", "fraction": 0.96})
    ens = EnsembleModel(models, sub.subject, sub.coords)
    ens.to(device)
    tr = np.flatnonzero(sub.split == 0)
    va = np.flatnonzero(sub.split == 1)
    with torch.no_grad():
        ens.fit({n: torch.as_tensor(v[tr]).to(device) for n, v in feats.items()}, sub.get_responses(tr), ridge=ridge)
    metrics = {}
    if len(va) >= 3:
        pred = predict_set(ens, {n: v[va] for n, v in feats.items()}, sub)
        metrics["val_median_pearson"] = float(np.nanmedian(voxel_pearson(pred, sub.get_responses(va))))
    ens.metrics = metrics
    ens.provenance = {"adaptation": {"method": "finetune+ensemble" if finetune else "ensemble",
                                     "n_train_images": n_tr, "epochs": epochs, "lr": lr, "seed": seed,
                                     "bases": info["bases"], "base_val_pearson": info["val_pearson"],
                                     "seconds": round(time.time() - t_start, 1)},
                      "data": [str(data) if isinstance(data, (str, Path)) else sub.subject]}
    info["ensemble_val_pearson"] = metrics.get("val_median_pearson")
    if out is not None:
        ens.save(out)
    report({"stage": "done", "fraction": 1.0, "val_pearson": metrics.get("val_median_pearson")})
    return ens, info


# ---- jobs ----------------------------------------------------------------------------------

def _cancelled_to_job(fn):
    from napari_nrf.jobs import JobCancelled
    from napari_nrf.train import TrainingCancelled

    try:
        return fn()
    except TrainingCancelled as exc:
        raise JobCancelled() from exc


def finetune_job(ctx, bases, data, out, step_delay: float = 0.0, **kwargs) -> dict:
    """Job target: :func:`finetune_ensemble` with the job's checkpoints, device, progress
    and cancel flag; writes ``out``. Returns a JSON summary.

    ``step_delay`` (s) pauses after each training step: only for demos and tests that
    must watch a tiny job run.
    """
    def cancel():
        if step_delay:
            time.sleep(step_delay)
        return ctx.cancelled()

    def run():
        return finetune_ensemble(bases, data, out=out, checkpoint_dir=ctx.checkpoint_dir, resume=True,
                                 device=ctx.device, progress=lambda rec: ctx.report(**rec),
                                 cancel=cancel, **kwargs)

    _, info = _cancelled_to_job(run)
    return {"out": str(out), "subject": info["subject"], "n_train_images": info["n_train_images"],
            "val_pearson": info["ensemble_val_pearson"], "base_val_pearson": info["val_pearson"]}


def transfer_job(ctx, base, data, out, n_images=None, seed: int = 0, **fit_kwargs) -> dict:
    """Job target: embeddings-only transfer of a universal encoder to a new subject
    (seed 002 section 4.4); writes the universal bundle with the subject added to ``out``."""
    from napari_nrf.models import load_model
    from napari_nrf.recipes import transfer_subject

    if Path(base).resolve() == Path(out).resolve():
        raise FinetuneError("the output is the base model; choose another file")
    sub, _ = select_images(_load_set(data), n_images, seed)
    model = load_model(base, device=ctx.device)
    if isinstance(fit_kwargs.get("feature_cache"), (str, Path)):
        from napari_nrf.features import FeatureCache

        fit_kwargs["feature_cache"] = FeatureCache(fit_kwargs["feature_cache"])

    def prog(done, total):
        if done == total or done % 5 == 0:
            ctx.report(stage="transfer", step=int(done), steps=int(total), fraction=done / max(total, 1))

    def on_epoch(rec):
        ctx.report(stage="transfer", epoch=rec["epoch"], loss=rec.get("train_loss"),
                   val_pearson=rec.get("val_median_pearson"))

    def run():
        return transfer_subject(model, sub, out=out, checkpoint_dir=ctx.checkpoint_dir / "transfer", resume=True,
                                seed=seed, progress=prog, on_epoch=on_epoch, cancel=ctx.cancelled,
                                device=ctx.device, **fit_kwargs)

    _, hist = _cancelled_to_job(run)
    return {"out": str(out), "subject": sub.subject, "val_pearson": hist.best_score}


def _checked_out(out) -> str:
    """The absolute output path, checked now (not when the job ends)."""
    from napari_nrf.models.bundle import BundleError, check_bundle_path

    out = str(Path(out).expanduser().resolve())
    try:
        check_bundle_path(out)
    except BundleError as exc:
        raise FinetuneError(str(exc)) from exc
    return out


def train_job(ctx, data, out, backbone: str = "efficientnet-lite0", preset: str = "demo",
              model_overrides: dict | None = None, step_delay: float = 0.0, **fit_kwargs) -> dict:
    """Job target: a new NRF trained from scratch on the response sets ``data`` (a list of
    .h5 paths; several subjects train one field on the union of their voxels) through
    :func:`napari_nrf.train.train_nrf`; writes ``out``. Resumes from the job's checkpoint
    after a cancel or a crash. ``step_delay`` (s): a pause per step, for tests and demos."""
    from napari_nrf.train import train_nrf

    if isinstance(data, (str, Path)):
        data = [data]
    sets = [_load_set(p) for p in data]
    if isinstance(fit_kwargs.get("feature_cache"), (str, Path)):
        from napari_nrf.features import FeatureCache

        fit_kwargs["feature_cache"] = FeatureCache(fit_kwargs["feature_cache"])

    def prog(done, total):
        if done == total or done % 5 == 0:  # a JSON line per 5 steps is plenty for a bar
            ctx.report(stage="training", step=int(done), steps=int(total), fraction=done / max(total, 1))

    def on_epoch(rec):
        ctx.report(stage="training", epoch=rec["epoch"], loss=rec.get("train_loss"),
                   val_pearson=rec.get("val_median_pearson"))

    def cancel():
        if step_delay:
            time.sleep(step_delay)
        return ctx.cancelled()

    def features(done, total, subject):
        # No fraction: the job's ETA is the training steps' rate, not the backbone's.
        if total and (done == total or done % 64 == 0):
            ctx.report(stage=f"features {subject} {done}/{total}")

    def run():
        return train_nrf(sets, backbone=backbone, preset=preset, out=out, model_overrides=model_overrides,
                         checkpoint_dir=ctx.checkpoint_dir / "train", resume=True, device=ctx.device,
                         progress=prog, on_epoch=on_epoch, cancel=cancel, feature_progress=features,
                         **fit_kwargs)

    _, hist = _cancelled_to_job(run)
    return {"out": str(out), "subjects": [rs.subject for rs in sets], "best_epoch": hist.best_epoch,
            "val_pearson": hist.best_score}


def submit_train(manager, data, out, *, device: str | None = None, overwrite: bool = False, start: bool = True,
                 threads: int | None = None, **kwargs):
    """Queue a :func:`train_job` (a new NRF on the response sets ``data``) on ``manager``;
    returns the :class:`~napari_nrf.jobs.Job`. ``kwargs``: backbone, preset, model_overrides
    and :func:`napari_nrf.train.fit` settings. Inputs are checked now, not in the child."""
    from napari_nrf.train import check_fit_settings

    data = [data] if isinstance(data, (str, Path)) else list(data)
    if not data:
        raise FinetuneError("choose at least one response set (.h5)")
    data = [str(Path(d).expanduser().resolve()) for d in data]
    for d in data:
        if not Path(d).exists():
            raise FinetuneError(f"response set not found: {d}")
    out = _checked_out(out)
    from napari_nrf.features import BACKBONES
    from napari_nrf.models.nrf import PRESETS

    if kwargs.get("backbone", "efficientnet-lite0") not in BACKBONES:
        raise FinetuneError(f"unknown backbone {kwargs['backbone']!r}; available: {', '.join(sorted(BACKBONES))}")
    if kwargs.get("preset", "demo") not in PRESETS:
        raise FinetuneError(f"unknown preset {kwargs['preset']!r}; available: {', '.join(PRESETS)}")
    check_fit_settings(kwargs)
    device = choose_device(device)
    if kwargs.get("feature_cache") is not None:
        kwargs["feature_cache"] = str(Path(kwargs["feature_cache"]).expanduser().resolve())
    subjects = "1 subject" if len(data) == 1 else f"{len(data)} subjects"
    name = f"train {Path(out).stem} ({kwargs.get('preset', 'demo')} NRF, {subjects})"
    return manager.submit("napari_nrf.finetune:train_job", {"data": data, "out": out, **kwargs}, name=name,
                          device=device, outputs=[out], protected=data, overwrite=overwrite, start=start,
                          threads=threads)


def submit_finetune(manager, bases, data, out, *, device: str | None = None, overwrite: bool = False,
                    start: bool = True, threads: int | None = None, **kwargs):
    """Queue a finetune + ensemble job on ``manager``; returns the :class:`~napari_nrf.jobs.Job`.

    Paths are made absolute (the child may start elsewhere); the bases are protected inputs.
    """
    bases = [str(Path(b).expanduser().resolve()) for b in bases]
    for b in bases:
        if not Path(b).exists():
            raise FinetuneError(f"base model not found: {b}")
    data = str(Path(data).expanduser().resolve())
    if not Path(data).exists():
        raise FinetuneError(f"response set not found: {data}")
    out = _checked_out(out)
    from napari_nrf.train import check_fit_settings

    check_fit_settings(kwargs, FINETUNE_FIT)
    device = choose_device(device)
    if kwargs.get("feature_cache") is not None:
        kwargs["feature_cache"] = str(Path(kwargs["feature_cache"]).expanduser().resolve())
    name = f"finetune {Path(out).stem} ({len(bases)} bases, {kwargs.get('n_images') or 'all'} images)"
    return manager.submit("napari_nrf.finetune:finetune_job", {"bases": bases, "data": data, "out": out, **kwargs},
                          name=name, device=device, outputs=[out], protected=bases + [data], overwrite=overwrite,
                          start=start, threads=threads)
