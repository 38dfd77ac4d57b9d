"""Training as background jobs (:mod:`napari_nrf.jobs`): the targets and submit functions.

:func:`finetune_job` (new-subject adaptation, :func:`napari_nrf.finetune.finetune_ensemble`),
:func:`transfer_job` (embeddings-only transfer, :func:`napari_nrf.recipes.transfer_subject`)
and :func:`train_job` (a new NRF from scratch, :func:`napari_nrf.recipes.train_nrf`) run in
the job's child process with its checkpoints, device, progress and cancel flag;
:func:`submit_finetune` and :func:`submit_train` check the inputs now and queue one. Every
job they queue carries ``group="training"`` in its spec (the Training jobs widget lists
that group).

Scripts that call ``submit_*`` must guard their top level with
``if __name__ == "__main__":``: jobs run in *spawned* child processes, which import the
script again, so an unguarded script submits again in every child and never ends.
"""

from __future__ import annotations

import time
from pathlib import Path

from napari_nrf.errors import check_device
from napari_nrf.finetune import FinetuneError, _load_set, finetune_ensemble, select_images
from napari_nrf.settings import FINETUNE_FIT

GROUP = "training"


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

    def prog(done, total, message=""):
        ctx.report(stage=message or None, fraction=done / max(total, 1))

    def on_epoch(rec):
        ctx.report(stage=rec.get("stage"), base=rec.get("base"), epoch=rec["epoch"], loss=rec.get("train_loss"),
                   val_pearson=rec.get("val_median_pearson"))

    def run():
        return finetune_ensemble(bases, data, out=out, checkpoint_dir=ctx.checkpoint_dir, resume=True,
                                 device=ctx.device, progress=prog, on_epoch=on_epoch, cancel=cancel, **kwargs)

    _, info = _cancelled_to_job(run)
    return {"out": str(out), "subject": info["subject"], "n_train_images": info["n_train_images"],
            "val_pearson": info["ensemble_val_pearson"], "base_val_pearson": info["val_pearson"]}


def transfer_job(ctx, base, data, out, n_images=None, seed: int = 0, **fit_kwargs) -> dict:
    """Job target: embeddings-only transfer of a universal encoder to a new subject
    (the Universal Brain Encoder paper section 4.4); writes the universal bundle with the subject added to ``out``."""
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


def _data_files(data, none: str, what: str) -> list[str]:
    """``data`` (a path or paths) as absolute paths that exist; ``none``/``what`` word the errors."""
    data = [data] if isinstance(data, (str, Path)) else list(data)
    if not data:
        raise FinetuneError(none)
    data = [str(Path(d).expanduser().resolve()) for d in data]
    for d in data:
        if not Path(d).exists():
            raise FinetuneError(f"{what} not found: {d}")
    return data


def _checked_out(out, inputs=(), overwrite: bool = False) -> str:
    """The absolute output path, checked now (not when the job ends) by the one shared
    output check (:func:`napari_nrf.errors.check_output`): a bundle path, never one of
    ``inputs``, an existing file only with ``overwrite``."""
    from napari_nrf.errors import OutputError, check_output
    from napari_nrf.models.bundle import BundleError, check_bundle_path

    out = str(Path(out).expanduser().resolve())
    try:
        check_bundle_path(out)
        check_output(out, inputs, overwrite=overwrite, flag="output")
    except (BundleError, OutputError) as exc:
        raise FinetuneError(str(exc)) from exc
    return out


def _check_base(path) -> None:
    """A finetune base must be a model bundle of a kind the training loop can adapt: an
    ``.h5`` response set, an ensemble (fitted by least squares, not trained) or an unknown
    kind is refused now, from the bundle's header alone (nothing is loaded)."""
    from napari_nrf.models.base import discover_kinds
    from napari_nrf.models.bundle import BundleError, read_metadata

    if Path(path).suffix.lower() in (".h5", ".hdf5"):
        raise FinetuneError(f"base {path} is a response set (.h5); a base is a trained model (.safetensors)")
    try:
        kind = read_metadata(path)["kind"]
    except BundleError as exc:
        raise FinetuneError(f"base {path}: {exc}") from exc
    cls = discover_kinds().get(kind)
    if cls is None:
        raise FinetuneError(f"base {path} is a model of unknown kind {kind!r}; known: {', '.join(discover_kinds())}")
    if cls.composite or not cls.supports_fit:
        raise FinetuneError(f"base {path} is an {kind} model, which cannot be finetuned; give the models it "
                            "was built from (its bases) instead")


def train_job(ctx, data, out, backbone: str = "efficientnet-lite0", preset: str = "demo",
              model_overrides: dict | None = None, step_delay: float = 0.0, **fit_kwargs) -> dict:
    """Job target: a new NRF trained from scratch on the response sets ``data`` (a list of
    .h5 paths; several subjects train one field on the union of their voxels) through
    :func:`napari_nrf.recipes.train_nrf`; writes ``out``. Resumes from the job's checkpoint
    after a cancel or a crash. ``step_delay`` (s): a pause per step, for tests and demos."""
    from napari_nrf.recipes import train_nrf

    if isinstance(data, (str, Path)):
        data = [data]
    sets = [_load_set(p) for p in data]
    if isinstance(fit_kwargs.get("feature_cache"), (str, Path)):
        from napari_nrf.features import FeatureCache

        fit_kwargs["feature_cache"] = FeatureCache(fit_kwargs["feature_cache"])

    callbacks = _training_callbacks(ctx, step_delay)

    def run():
        return train_nrf(sets, backbone=backbone, preset=preset, out=out, model_overrides=model_overrides,
                         checkpoint_dir=ctx.checkpoint_dir / "train", resume=True, device=ctx.device,
                         **callbacks, **fit_kwargs)

    _, hist = _cancelled_to_job(run)
    return {"out": str(out), "subjects": [rs.subject for rs in sets], "best_epoch": hist.best_epoch,
            "val_pearson": hist.best_score}


def _training_callbacks(ctx, step_delay: float = 0.0) -> dict:
    """``progress``, ``on_epoch``, ``cancel`` and ``feature_progress`` of a training job:
    the job's progress lines and cancel flag (``step_delay`` s: a pause per step)."""

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

    return {"progress": prog, "on_epoch": on_epoch, "cancel": cancel, "feature_progress": features}


def train_kind_job(ctx, kind, data, out, backbone: str = "efficientnet-lite0", step_delay: float = 0.0,
                   **fit_kwargs) -> dict:
    """Job target: a new model of ``kind`` trained on the data files ``data`` through its
    spec's recipe (:meth:`napari_nrf.kinds.KindSpec.train`); writes ``out``. Resumes from
    the job's checkpoint after a cancel or a crash."""
    from napari_nrf.kinds import spec_for

    if isinstance(fit_kwargs.get("feature_cache"), (str, Path)):
        from napari_nrf.features import FeatureCache

        fit_kwargs["feature_cache"] = FeatureCache(fit_kwargs["feature_cache"])
    spec = spec_for(kind)
    callbacks = _training_callbacks(ctx, step_delay)

    def run():
        return spec.train(data, out, backbone=backbone, checkpoint_dir=ctx.checkpoint_dir / "train", resume=True,
                          device=ctx.device, **callbacks, **fit_kwargs)

    _, hist = _cancelled_to_job(run)
    return {"out": str(out), "kind": kind, "best_epoch": hist.best_epoch, "val_pearson": hist.best_score}


def submit_train_kind(manager, kind, data, out, *, device: str | None = None, overwrite: bool = False,
                      start: bool = True, threads: int | None = None, **kwargs):
    """Queue a :func:`train_kind_job` (a new ``kind`` model on the data files ``data``);
    an NRF goes through :func:`submit_train` (its sizes). Inputs are checked now."""
    from napari_nrf.kinds import spec_for
    from napari_nrf.train import check_fit_settings

    if kind == "nrf":
        return submit_train(manager, data, out, device=device, overwrite=overwrite, start=start, threads=threads,
                            **kwargs)
    spec = spec_for(kind)
    if not spec.trainable:
        raise FinetuneError(f"model kind {kind!r} has no training recipe")
    data = _data_files(data, "choose the data file(s)", "data file")
    out = _checked_out(out, data, overwrite)
    if not spec.panel.get("presets"):
        kwargs.pop("preset", None)
    check_fit_settings({k: v for k, v in kwargs.items() if k != "preset"}, spec.fit)
    device = check_device(device)
    if kwargs.get("feature_cache") is not None:
        kwargs["feature_cache"] = str(Path(kwargs["feature_cache"]).expanduser().resolve())
    name = f"train {Path(out).stem} ({kind}, {len(data)} file(s))"
    return manager.submit("napari_nrf.train_jobs:train_kind_job", {"kind": kind, "data": data, "out": out, **kwargs},
                          name=name, device=device, outputs=[out], protected=data, overwrite=overwrite,
                          start=start, threads=threads, group=GROUP)


def _check_model_overrides(backbone: str, preset: str, overrides) -> None:
    """Sizes that make a model which cannot work (``width 0``) or arguments NRF does not
    take, refused now: the model is built on torch's ``meta`` device (no memory)."""
    import warnings

    import torch

    from napari_nrf.models.nrf import build_nrf

    overrides = dict(overrides or {})
    for k in ("width", "depth", "downsample_dim", "merged_dim", "n_fourier"):
        v = overrides.get(k)
        if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < 1):
            raise FinetuneError(f"model size {k} must be a whole number >= 1, got {v!r}")
    try:
        with torch.device("meta"), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            build_nrf(backbone, preset, **overrides)
    except Exception as exc:  # noqa: BLE001 - any failure to build means the overrides are wrong
        raise FinetuneError(f"model overrides {overrides}: {type(exc).__name__}: {exc}") from None
    from napari_nrf.guards import check_model_memory

    check_model_memory(lambda: build_nrf(backbone, preset, **overrides), f"model overrides {overrides}")


def _check_response_set(path) -> None:
    """Read ``path``'s header and small arrays now (lazily: no responses), so a movie set,
    a damaged file or a FIFO is refused at submit time, not inside a created job."""
    from napari_nrf.data.responseset import ResponseSet

    ResponseSet.load(path, lazy=True).close()


def submit_train(manager, data, out, *, device: str | None = None, overwrite: bool = False, start: bool = True,
                 threads: int | None = None, **kwargs):
    """Queue a :func:`train_job` (a new NRF on the response sets ``data``) on ``manager``;
    returns the :class:`~napari_nrf.jobs.Job`. ``kwargs``: backbone, preset, model_overrides
    and :func:`napari_nrf.train.fit` settings. Inputs are checked now, not in the child."""
    from napari_nrf.train import check_fit_settings

    data = _data_files(data, "choose at least one response set (.h5)", "response set")
    for d in data:
        _check_response_set(d)
    out = _checked_out(out, data, overwrite)
    from napari_nrf.features import BACKBONES
    from napari_nrf.models.nrf import PRESETS

    if kwargs.get("backbone", "efficientnet-lite0") not in BACKBONES:
        raise FinetuneError(f"unknown backbone {kwargs['backbone']!r}; available: {', '.join(sorted(BACKBONES))}")
    if kwargs.get("preset", "demo") not in PRESETS:
        raise FinetuneError(f"unknown preset {kwargs['preset']!r}; available: {', '.join(PRESETS)}")
    check_fit_settings(kwargs)
    _check_model_overrides(kwargs.get("backbone", "efficientnet-lite0"), kwargs.get("preset", "demo"),
                           kwargs.get("model_overrides"))
    device = check_device(device)
    if kwargs.get("feature_cache") is not None:
        kwargs["feature_cache"] = str(Path(kwargs["feature_cache"]).expanduser().resolve())
    subjects = "1 subject" if len(data) == 1 else f"{len(data)} subjects"
    name = f"train {Path(out).stem} ({kwargs.get('preset', 'demo')} NRF, {subjects})"
    return manager.submit("napari_nrf.train_jobs:train_job", {"data": data, "out": out, **kwargs}, name=name,
                          device=device, outputs=[out], protected=data, overwrite=overwrite, start=start,
                          threads=threads, group=GROUP)


def submit_finetune(manager, bases, data, out, *, device: str | None = None, overwrite: bool = False,
                    start: bool = True, threads: int | None = None, **kwargs):
    """Queue a finetune + ensemble job on ``manager``; returns the :class:`~napari_nrf.jobs.Job`.

    Paths are made absolute (the child may start elsewhere); the bases are protected inputs.
    """
    bases = [str(Path(b).expanduser().resolve()) for b in bases]
    if not bases:
        raise FinetuneError("add at least one base model")
    for b in bases:
        if not Path(b).exists():
            raise FinetuneError(f"base model not found: {b}")
        _check_base(b)
    data = str(Path(data).expanduser().resolve())
    if not Path(data).exists():
        raise FinetuneError(f"response set not found: {data}")
    _check_response_set(data)
    out = _checked_out(out, [*bases, data], overwrite)
    n = kwargs.get("n_images")
    if n is not None and (isinstance(n, bool) or not isinstance(n, int) or n < 2):
        raise FinetuneError(f"images: need at least 2 training images of the new subject, got {n!r}")
    from napari_nrf.train import check_fit_settings

    check_fit_settings(kwargs, FINETUNE_FIT)
    device = check_device(device)
    if kwargs.get("feature_cache") is not None:
        kwargs["feature_cache"] = str(Path(kwargs["feature_cache"]).expanduser().resolve())
    name = f"finetune {Path(out).stem} ({len(bases)} bases, {kwargs.get('n_images') or 'all'} images)"
    return manager.submit("napari_nrf.train_jobs:finetune_job", {"bases": bases, "data": data, "out": out, **kwargs},
                          name=name, device=device, outputs=[out], protected=bases + [data], overwrite=overwrite,
                          start=start, threads=threads, group=GROUP)
