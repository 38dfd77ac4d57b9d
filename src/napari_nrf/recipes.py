"""Training recipes: how each kind is trained through the one loop (:func:`napari_nrf.train.fit`).

* :func:`train_nrf`: a new NRF from scratch;
* :func:`train_universal`: a Universal encoder jointly on several subjects;
* :func:`transfer_subject`: a new subject added to a Universal encoder by learning only
  its voxel embeddings (the Universal Brain Encoder paper section 4.4);
* new-subject adaptation of any kind (finetune + ensemble): :mod:`napari_nrf.finetune`.

Their default settings are the presets of :mod:`napari_nrf.settings`.
"""

from __future__ import annotations

from napari_nrf.distributed import is_main
from napari_nrf.guards import check_model_memory
from napari_nrf.models.nrf import build_nrf
from napari_nrf.models.universal import UniversalEncoder, UniversalModelError, build_universal
from napari_nrf.settings import TRANSFER_FIT, UNIVERSAL_FIT
from napari_nrf.train import fit

__all__ = ["train_movie", "train_movie_features", "train_nrf", "train_universal", "transfer_subject"]


def train_nrf(train_sets, *, backbone: str = "efficientnet-lite0", preset: str = "demo", out=None,
              model_overrides: dict | None = None, backbone_config: dict | None = None, **fit_kwargs):
    """Build an NRF for ``backbone`` (size ``preset`` + ``model_overrides``), :func:`fit` it
    and save it to ``out`` (a ``.safetensors`` bundle) when given. Returns (model, history).

    A demo model on a few virtual subjects (a few hundred images, 4-6 mm voxels) trains in
    a minute or two on a laptop CPU with ``epochs=10``.
    """
    sizes = ", ".join(f"{k} {v}" for k, v in (model_overrides or {}).items()) or "the preset's sizes"
    check_model_memory(lambda: build_nrf(backbone, preset, backbone_config=backbone_config, **(model_overrides or {})),
                       f"an NRF of preset {preset} with {sizes}")
    model = build_nrf(backbone, preset, backbone_config=backbone_config, seed=fit_kwargs.get("seed", 0),
                      **(model_overrides or {}))
    hist = fit(model, list(train_sets), **fit_kwargs)
    if out is not None and is_main():  # data-parallel: rank 0 writes the bundle
        model.save(out)
    return model, hist


def train_universal(train_sets, *, backbone: str = "efficientnet-lite0", out=None, model_config: dict | None = None,
                    backbone_config: dict | None = None, levels=None, feature_shapes: dict | None = None,
                    **fit_kwargs):
    """Train a Universal encoder jointly on ``train_sets`` (one ResponseSet per subject; the
    subjects may have seen different images) with :func:`napari_nrf.train.fit`.

    Each step pairs a batch of one subject's training images with voxels sampled from the
    same subject. ``model_config`` goes to :class:`UniversalEncoder` (embed_dim, channels,
    ...); ``fit_kwargs`` to ``fit`` (defaults: :data:`napari_nrf.settings.UNIVERSAL_FIT`). Saves the
    bundle to ``out`` when given. Returns (model, history).
    """
    sets = list(train_sets)
    kw = UNIVERSAL_FIT.merged(fit_kwargs)
    model = build_universal(backbone, {rs.subject: rs.coords for rs in sets}, backbone_config=backbone_config,
                            levels=levels, feature_shapes=feature_shapes, seed=kw.get("seed", 0),
                            **(model_config or {}))
    hist = fit(model, sets, **kw)
    model.provenance.setdefault("training", {})["mode"] = "joint"
    if out is not None and is_main():  # data-parallel: rank 0 writes
        model.save(out)
    return model, hist


def transfer_subject(model: UniversalEncoder, rs, *, out=None, init: str = "random", **fit_kwargs):
    """Add the subject of response set ``rs`` to a trained ``model`` by learning only its
    voxel embeddings (every shared weight frozen; the Universal Brain Encoder paper section 4.4).

    Uses the training images of ``rs`` (``split == train``; subsample them first for a
    few-image transfer) and :func:`napari_nrf.train.fit` with
    ``trainable=model.embedding_filter(subject)`` (defaults:
    :data:`napari_nrf.settings.TRANSFER_FIT`, the step schedule of the new subject's training
    images; the embeddings learn at the model's ``embedding_lr_scale`` x lr). Returns (model, history); the model
    keeps its other subjects unchanged.
    """
    if not isinstance(model, UniversalEncoder):
        raise UniversalModelError(f"transfer needs a universal model, got kind {model.kind!r}")
    if rs.subject in model.voxel_embeddings:
        raise UniversalModelError(f"subject {rs.subject!r} is already in the model; rename the response set")
    model.add_subject(rs.subject, rs.coords, init=init)
    kw = TRANSFER_FIT.merged(fit_kwargs)
    kw.setdefault("trainable", model.embedding_filter(rs.subject))
    keep_training = model.provenance.get("training")
    keep_metrics = dict(model.metrics or {})
    hist = fit(model, [rs], **kw)
    # fit records the run it did; the model's own training record stays the joint one.
    if keep_training is not None:
        model.provenance["training"] = keep_training
    model.metrics = {**keep_metrics, f"val_median_pearson_{rs.subject}": hist.best_score,
                     f"calibration_{rs.subject}": {k: v for k, v in hist.calibration.items() if k != "subjects"}}
    tr = model.provenance.setdefault("transfer", {})
    tr[rs.subject] = {"n_train_images": int((rs.split == 0).sum()), "best_epoch": hist.best_epoch,
                      "val_median_pearson": hist.best_score}
    if out is not None and is_main():  # data-parallel: rank 0 writes
        model.save(out)
    return model, hist


# ---- Rest2Visual ---------------------------------------------------------------
def train_rest2visual(train_sets, *, backbone: str = "efficientnet-lite0", preset: str = "field", out=None,
                      model_config: dict | None = None, extent=None, feature_shapes: dict | None = None,
                      model=None, token_maps: dict | None = None, base=None, **fit_kwargs):
    """Train one Rest2Visual model over the subjects of ``train_sets`` (ResponseSets that
    carry per-session rest maps, :meth:`ResponseSet.set_rest_maps`) with :func:`fit`.

    ``preset``: "field" (the default), "field-tiny", "field-paper": the shared NRF field
    with the individual rest-map term (:mod:`napari_nrf.models.rest2visual_field`; fit
    defaults :data:`napari_nrf.settings.REST2VISUAL_FIELD_FIT`, the NRF's; ``token_maps``
    the trunk's, ``base`` a trained image-only NRF of the trunk's configuration to start
    from); "tiny" / "demo" / "paper": the paper's U-Net
    (:data:`napari_nrf.models.rest2visual.PRESETS`; defaults
    :data:`napari_nrf.settings.REST2VISUAL_FIT`). ``model_config`` overrides
    (``resolution``, ``channels``, ``ablate``... / ``stencil_mm``, ``displacement``...),
    ``extent`` the model grid's MNI box; ``fit_kwargs`` go to ``fit``. Returns (model, history).
    """
    from napari_nrf.models.rest2visual import Rest2VisualError, build_rest2visual
    from napari_nrf.models.rest2visual_field import FIELD_PRESETS, Rest2VisualField, build_rest2visual_field
    from napari_nrf.settings import REST2VISUAL_FIELD_FIT, REST2VISUAL_FIT

    sets = list(train_sets)
    for rs in sets:
        if getattr(rs, "rest_maps", None) is None:
            raise Rest2VisualError(f"response set {rs.subject!r} has no rest maps: make them with napari-nrf rest-map "
                                   "and attach them (napari-nrf attach-rest), or simulate with --rest")
    field = preset in FIELD_PRESETS if model is None else isinstance(model, Rest2VisualField)
    kw = (REST2VISUAL_FIELD_FIT if field else REST2VISUAL_FIT).merged(fit_kwargs)
    if model is None and field:
        model = build_rest2visual_field(backbone, preset, feature_shapes=feature_shapes, extent=extent,
                                        seed=kw.get("seed", 0), token_maps=token_maps, **(model_config or {}))
        model.set_reference([(rs.rest_maps, rs.rest_grid) for rs in sets])
        if base is not None:
            model.copy_trunk(base)
    elif model is None:
        model = build_rest2visual(backbone, preset, feature_shapes=feature_shapes, extent=extent,
                                  seed=kw.get("seed", 0), **(model_config or {}))
    for rs in sets:
        model.add_subject(rs.subject, rs.rest_maps, rs.rest_grid, coords=rs.coords)
    hist = fit(model, sets, **kw)
    model.provenance.setdefault("training", {})["mode"] = "joint over subjects (rest map + image)"
    if out is not None:
        model.save(out)
    return model, hist


def train_movie(dataset, *, size: str = "demo", delay: int = 4, w: float = 0.5, out=None, voxels=None,
                still: bool = False, perceptual: str | None = None, **fit_kwargs):
    """Train the movie encoder-decoder (:mod:`napari_nrf.models.movie`) on a
    :class:`~napari_nrf.movie.MovieDataset` with :func:`napari_nrf.train.fit`.

    ``delay`` (TR) pairs each TR's chunk with the response ``delay`` TRs later; ``w`` the
    encoder's weight in the loss (1: encoder alone); ``voxels`` restricts the voxels (e.g.
    the SNR selection); ``still``: train on each chunk's middle frame only (the
    middle-frame baseline); ``perceptual`` (default: the backbone for sizes demo/paper,
    none for tiny). ``fit_kwargs`` go to ``fit`` (defaults :data:`napari_nrf.settings.MOVIE_FIT`).
    Returns (model, history).
    """
    from napari_nrf.models.movie import MovieEncoderDecoder
    from napari_nrf.settings import MOVIE_FIT

    rs = dataset.training_set(delay=delay, voxels=voxels, still=still)
    kw = MOVIE_FIT.merged(fit_kwargs)
    if perceptual is None:
        perceptual = "none" if size == "tiny" else "efficientnet-lite0"
    import torch

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(kw.get("seed", 0)))
        model = MovieEncoderDecoder(rs.n_voxels, subject=rs.subject, frames_per_tr=dataset.frames_per_tr,
                                    frame_size=dataset.frame_size, size=size, delay=delay, w=w,
                                    perceptual=perceptual, tr=dataset.tr)
    model.subjects = {rs.subject: rs.coords}
    model.backbone_name = "efficientnet-lite0"  # the perceptual term's stages
    hist = fit(model, [rs], **kw)
    model.provenance.setdefault("training", {}).update(
        {"mode": "movie", "films": dataset.film_names, "still": bool(still), "delay": int(delay), "w": float(w)})
    if out is not None:
        model.save(out)
    return model, hist


def _median_r2(pred, true) -> float:
    import numpy as np

    from napari_nrf.train import voxel_r2

    return float(np.nanmedian(voxel_r2(pred, true)))


def block_split(split, film, frac: float = 0.2):
    """A copy of a movie training set's ``split`` (N,) where, in each film (``film`` (N,)
    per row, rows in time order) with training TRs, the train and validation TRs become
    training and the last ``frac`` of them validation (one contiguous block)."""
    import numpy as np

    out = np.asarray(split).copy()
    film = np.asarray(film)
    for f in np.unique(film):
        rows = np.flatnonzero((film == f) & ((out == 0) | (out == 1)))
        if len(rows) < 10:
            continue
        k = max(3, int(round(frac * len(rows))))
        out[rows] = 0
        out[rows[-k:]] = 1
    return out


def train_movie_features(dataset, *, w: float = 1.0, out=None, voxels=None, still: bool = False,
                         feature_cache=None, model_config: dict | None = None, calibrate: str = "voxel",
                         block_validation: bool = True, init_closed_form: bool = True, **fit_kwargs):
    """Train the movie model on pretrained frame features (:mod:`napari_nrf.models.movie_features`,
    the default of ``train-movie``) on a :class:`~napari_nrf.movie.MovieDataset`.

    Rows are ``dataset.training_set(0)`` (the delay is learned); the frame features are
    read from ``feature_cache`` (a :class:`~napari_nrf.features.FeatureCache`, default
    the user's cache folder) or computed once per film and frame. The inputs are
    standardised on the training TRs; after :func:`napari_nrf.train.fit` (defaults
    :data:`napari_nrf.settings.MOVIE_FEATURES_FIT`) the output gain is fitted on the
    validation TRs and, with two or more training films, on each film predicted from the
    others (``calibrate`` "voxel": per voxel, the slope of measured on predicted
    clipped to [0, 2]; "pooled": one slope; "none"). ``block_validation`` (default) first
    moves each training film's validation TRs to one block at the end of its training TRs
    (the data set's every-fifth-TR validation sits next to training TRs, whose
    autocorrelated responses make it optimistic: early stopping and gain would then
    overfit). ``w`` < 1 adds the frame decoder; ``model_config``
    goes to the model (features, frames_used, feature_size, history, latent, n_kernels).
    Returns (model, history)."""
    import numpy as np
    import torch

    from napari_nrf.features import FeatureCache
    from napari_nrf.models.movie_features import MovieFeatureEncoder
    from napari_nrf.settings import MOVIE_FEATURES_FIT
    from napari_nrf.train import predict_set

    rs = dataset.training_set(delay=0, voxels=voxels, still=still)
    if block_validation:
        import dataclasses

        rs = dataclasses.replace(rs, split=block_split(rs.split, rs.images.film))
    kw = MOVIE_FEATURES_FIT.merged(fit_kwargs)
    cache = feature_cache if feature_cache is not None else FeatureCache()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(kw.get("seed", 0)))
        model = MovieFeatureEncoder(rs.n_voxels, subject=rs.subject, frames_per_tr=dataset.frames_per_tr,
                                    frame_size=dataset.frame_size, w=w, tr=dataset.tr, **(model_config or {}))
    model.subjects = {rs.subject: rs.coords}
    model.backbone_name = "efficientnet-lite0"
    if "device" in kw and kw["device"] is not None:
        model.to(kw["device"])
    feats = model.features_of_set(rs, cache=cache)
    train_rows = np.flatnonzero(rs.split == 0)
    model.set_input_scaling(feats["window"][train_rows])
    val = np.flatnonzero(rs.split == 1)
    y_val = rs.get_responses(val) if len(val) else None
    init, start_r2 = None, float("nan")
    if init_closed_form and len(val) >= 3:
        y_all = rs.get_responses(np.arange(rs.n_images))
        init = model.init_closed_form(feats["window"], y_all, train_rows, val, film=rs.images.film)
        start = {k: v.detach().clone() for k, v in model.state_dict().items()}
        start_r2 = _median_r2(predict_set(model, {k: v[val] for k, v in feats.items()}, rs, val), y_val)
    if init is not None and kw.get("trainable") is None:  # refine the response in time and the readout
        kw["trainable"] = lambda name: not name.startswith("within.")
    hist = fit(model, [rs], features=[feats], **kw)
    kept_start = init is not None and not hist.best_r2 > start_r2
    if kept_start:  # the loop did not improve on its closed-form start: keep the start, fitted on train + val
        model.load_state_dict(start)
        model.refit_readout(np.concatenate([train_rows, val]), init)
    gain = None
    if calibrate != "none" and len(val) >= 3:
        # the closed-form start's out-of-sample predictions: the validation block (fitted on
        # train only) and each training film predicted from the others (a new film's case)
        if kept_start:
            p, y = init["oos_pred"], y_all[init["oos_rows"]]
        else:
            p, y = predict_set(model, {k: v[val] for k, v in feats.items()}, rs, val), y_val
        gain = model.fit_gain(p, y, per_voxel=calibrate == "voxel")
    model.provenance.setdefault("training", {}).update(
        {"mode": "movie-features", "films": dataset.film_names, "still": bool(still), "w": float(w),
         "validation_gain": gain, "kept": "closed-form start" if kept_start else "trained",
         "start_val_median_r2": start_r2, "trained_val_median_r2": float(hist.best_r2)})
    model._solve = None  # the closed form's arrays
    if out is not None and is_main():
        model.save(out)
    return model, hist
