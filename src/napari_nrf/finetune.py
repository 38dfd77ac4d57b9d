"""New-subject adaptation (the NRF paper section 3.2, the Universal Brain Encoder paper section 4.4).

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

The background-job targets and submit functions of training (finetune, transfer, a new
NRF) live in :mod:`napari_nrf.train_jobs`.
"""

from __future__ import annotations

import copy
import threading
import time
from pathlib import Path

import numpy as np

from napari_nrf._docs import fill_doc
from napari_nrf.errors import NapariNRFError, choose_device
from napari_nrf.settings import FINETUNE_FIT


# finetune_ensemble's progress counts thousandths of the whole adaptation (bases + ensemble).
PROGRESS_UNITS = 1000


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


def _kind_of(base) -> str:
    """The kind of a base (a bundle path's metadata, or a model's attribute)."""
    if isinstance(base, (str, Path)):
        from napari_nrf.models.bundle import read_metadata

        try:
            return read_metadata(base).get("kind", "")
        except Exception:  # noqa: BLE001 - unreadable: _as_model reports it
            return ""
    return base.kind


def _as_model(base, device):
    from napari_nrf.models import load_model

    if isinstance(base, (str, Path)):
        return load_model(base, device=device)
    return copy.deepcopy(base).to(device)


@fill_doc
def finetune_ensemble(bases, data, *, n_images: int | None = None, epochs: int | None = FINETUNE_FIT.epochs, steps: int | None = None,
                      batch_images: int = FINETUNE_FIT.batch_images, batch_voxels: int = FINETUNE_FIT.batch_voxels,
                      lr: float = FINETUNE_FIT.lr, weight_decay: float = FINETUNE_FIT.weight_decay,
                      alpha: float = FINETUNE_FIT.alpha, patience: int = FINETUNE_FIT.patience,
                      seed: int = FINETUNE_FIT.seed, ridge: float = 0.0,
                      steps_per_epoch: int | None = FINETUNE_FIT.steps_per_epoch,
                      feature_cache=None, features: dict | None = None, checkpoint_dir=None, resume: bool = True,
                      device=None, progress=None, on_epoch=None, cancel=None, out=None, finetune: bool = True,
                      devices=None):
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
    %(device)s
    progress : callable(done, total, message="") or None
        The shared progress shape (:data:`napari_nrf.errors.Progress`): ``done`` of
        ``total`` = :data:`PROGRESS_UNITS` thousandths of the whole adaptation, the
        message naming the stage ("features", "finetune base 2/3", "base 1/3 done before",
        "ensemble", "done"). With several devices, bases report concurrently.
    on_epoch : callable(record: dict) or None
        The training loop's epoch records (:func:`napari_nrf.train.fit`'s ``on_epoch``:
        ``epoch``, ``train_loss``, ``val_median_pearson``, ...) with ``base`` (0-based)
        and ``stage`` added.
    %(cancel)s
        Polled between steps (:class:`napari_nrf.train.TrainingCancelled`).
    out : path or None
        Save the ensemble bundle here (atomically); refused when it is a base's file.
    finetune : bool
        False skips step 2 (an ensemble of the pretrained bases as they are).
    devices : list of str or None
        Adapt the bases concurrently, one per device (``["cuda:0", "cuda:1"]``; a worker
        thread per device takes the next base), each exactly as one after another would
        (fits are seeded per epoch); the ensemble is fitted on ``device``. Universal
        bases (dropout from torch's global generator) still go one after another.

    Returns
    -------
    (EnsembleModel, info dict with per-base histories and validation scores)
    """
    from napari_nrf.features import FeatureCache
    from napari_nrf.models.ensemble import EnsembleModel
    from napari_nrf.train import fit, fit_calibration, predict_set, set_features, voxel_pearson

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
    lock = threading.Lock()

    def report(fraction: float, message: str) -> None:
        if progress is not None:
            with lock:  # bases adapted in threads report through one lock
                progress(int(round(PROGRESS_UNITS * fraction)), PROGRESS_UNITS, message)
    ck = Path(checkpoint_dir) if checkpoint_dir is not None else None
    if ck is not None:
        ck.mkdir(parents=True, exist_ok=True)
    cache = FeatureCache(feature_cache) if isinstance(feature_cache, (str, Path)) else feature_cache

    k_total = len(bases)
    t_start = time.time()
    feats = None
    info = {"subject": sub.subject, "n_train_images": n_tr, "n_val_images": int((sub.split == 1).sum()),
            "bases": [str(b) if isinstance(b, (str, Path)) else b.kind for b in bases],
            "histories": [None] * k_total, "val_pearson": [None] * k_total}
    models: list = [None] * k_total

    def adapt(k, base, dev):
        """Base ``k`` adapted on ``dev`` (the module doc's step 2); saved when checkpointing."""
        done_path = ck / f"finetuned-{k}.safetensors" if ck is not None else None
        model = _as_model(base, dev)
        if finetune:
            last = [0.0]

            stage = f"finetune base {k + 1}/{k_total}"

            def prog(done, total, message="", k=k, stage=stage):
                if done == total or time.time() - last[0] > 0.5:  # a line per step is too many
                    last[0] = time.time()
                    report(0.95 * (k + done / max(total, 1)) / k_total, stage)

            def epoch_rec(rec, k=k, stage=stage):
                if on_epoch is not None:
                    with lock:
                        on_epoch({**rec, "base": k, "stage": stage})

            kw = dict(epochs=None if steps else epochs, steps=steps, batch_images=batch_images, batch_voxels=batch_voxels, alpha=alpha,
                      patience=patience, seed=seed, steps_per_epoch=steps_per_epoch, features=[feats],
                      checkpoint_dir=None if ck is None else ck / f"base-{k}", resume=resume, progress=prog,
                      on_epoch=epoch_rec, cancel=cancel, device=dev)
            if model.per_subject_parameters:  # learn only the new subject's own parameters
                from napari_nrf.recipes import transfer_subject

                if sub.subject in model.subjects:
                    raise FinetuneError(f"base {k} already has a subject named {sub.subject!r}")
                model, hist = transfer_subject(model, sub, **kw)
            else:
                hist = fit(model, [sub], lr=lr, weight_decay=weight_decay, **kw)
                # The finetuned field now belongs to the new subject (fit keeps older coords
                # of a same-named subject; these are the ones the ensemble uses).
                model.subjects[sub.subject] = np.asarray(sub.coords, np.float32)
            h = hist.to_dict()
            info["histories"][k] = h
            info["val_pearson"][k] = h.get("best_score")
            model.provenance = dict(model.provenance or {})
            model.provenance["finetune_history"] = h
        elif model.per_subject_parameters:
            raise FinetuneError(f"a {model.kind} base needs the new subject's own parameters: use finetune=True")
        if done_path is not None:
            model.save(done_path)
        models[k] = model.to(device).eval()

    todo = []
    for k, base in enumerate(bases):
        done_path = ck / f"finetuned-{k}.safetensors" if ck is not None else None
        if resume and done_path is not None and done_path.exists():
            from napari_nrf.models import load_model

            model = load_model(done_path, device=device)
            models[k] = model
            info["histories"][k] = model.provenance.get("finetune_history")
            info["val_pearson"][k] = model.metrics.get("val_median_pearson")
            report(0.95 * (k + 1) / k_total, f"base {k + 1}/{k_total} done before")
            continue
        todo.append(k)
    if todo:
        report(0.0, "features")
        if features is not None:
            feats = {n: np.asarray(v)[rows] for n, v in features.items()}
        else:
            feats = set_features(_as_model(bases[todo[0]], device), sub, cache=cache)
        feats = _round_features(feats)
    devs = [str(d) for d in (devices or [])]
    # Kinds that draw from torch's global generator in training (dropout masks) would share
    # it in concurrent fits, so they (and single-device runs) go one after another.
    from napari_nrf.models import MODEL_KINDS, discover_kinds

    discover_kinds()
    concurrent = len(devs) > 1 and len(todo) > 1 and finetune and all(
        MODEL_KINDS[_kind_of(bases[k])].concurrent_fits if _kind_of(bases[k]) in MODEL_KINDS else False
        for k in todo)
    if not concurrent:
        for k in todo:
            adapt(k, bases[k], device)
    else:
        import queue

        jobs: queue.Queue = queue.Queue()
        for k in todo:
            jobs.put(k)
        errors: list = []

        def worker(dev):
            while not errors:
                try:
                    k = jobs.get_nowait()
                except queue.Empty:
                    return
                try:
                    adapt(k, bases[k], dev)
                except BaseException as exc:  # noqa: BLE001 - re-raised below, in the caller
                    errors.append(exc)

        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(len(devs[:len(todo)]), thread_name_prefix="napari-nrf-finetune") as pool:
            list(pool.map(worker, devs[:len(todo)]))
        if errors:
            raise errors[0]
    if feats is None:  # every base was finished in an earlier run
        feats = _round_features({n: np.asarray(v)[rows] for n, v in features.items()} if features is not None
                                else set_features(models[0], sub, cache=cache))
    import torch  # deferred: the Training jobs widget imports this module at start-up

    report(0.96, "ensemble")
    ens = EnsembleModel(models, sub.subject, sub.coords)
    ens.to(device)
    tr = np.flatnonzero(sub.split == 0)
    va = np.flatnonzero(sub.split == 1)
    with torch.no_grad():
        ens.fit({n: torch.as_tensor(v[tr]).to(device) for n, v in feats.items()}, sub.get_responses(tr), ridge=ridge)
    # The ensemble is fitted by least squares, not by fit: its gain is fitted here, the same way.
    cal_info = fit_calibration(ens, [sub], [feats], [va])
    metrics = {"calibration": {k: v for k, v in cal_info.items() if k != "subjects"}}
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
    report(1.0, "done")
    return ens, info
