"""Training recipes: how each kind is trained through the one loop (:func:`napari_nrf.train.fit`).

* :func:`train_nrf`: a new NRF from scratch (defined in :mod:`napari_nrf.train`);
* :func:`train_universal`: a Universal encoder jointly on several subjects;
* :func:`transfer_subject`: a new subject added to a Universal encoder by learning only
  its voxel embeddings (the Universal Brain Encoder paper section 4.4);
* new-subject adaptation of any kind (finetune + ensemble): :mod:`napari_nrf.finetune`.

Their default settings are the presets of :mod:`napari_nrf.settings`.
"""

from __future__ import annotations

from napari_nrf.distributed import is_main
from napari_nrf.models.universal import UniversalEncoder, UniversalModelError, build_universal
from napari_nrf.settings import TRANSFER_FIT, UNIVERSAL_FIT
from napari_nrf.train import fit, train_nrf

__all__ = ["train_movie", "train_nrf", "train_universal", "transfer_subject"]


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
    model.metrics = {**keep_metrics, f"val_median_pearson_{rs.subject}": hist.best_score}
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
