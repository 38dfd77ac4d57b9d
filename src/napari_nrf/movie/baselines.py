"""Static image-encoder baselines for movies: the NRF and the Universal encoder
trained on each TR's middle frame, paired with the response ``delay`` TRs later.

The image kinds see one still frame per TR (no motion, no frame history): row i of
:func:`middle_frame_set` is (middle frame of the chunk of TR t, response of TR t + delay) of
one film, the same rows, splits and voxels as the movie model's
:meth:`~napari_nrf.movie.MovieDataset.training_set`. They are trained by the kinds' own
recipes (:func:`napari_nrf.recipes.train_nrf`, :func:`napari_nrf.recipes.train_universal`,
with their default settings) through the one ``fit``, and scored by
:func:`evaluate_static` exactly as :func:`napari_nrf.movie.evaluate.evaluate_movie` scores
a movie model (voxelwise r over the test TRs per film and pooled, R^2, calibration slope,
permutation test, spatial r).

Frames are read lazily: :class:`FrameView` reads only the middle frame of each chunk from
the data set's HDF5 file (one (S, S, 3) uint8 image per TR), never the chunks.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from .dataset import ChunkView, MovieDataset
from .video import MovieError

KINDS = ("nrf", "universal")


def middle_frame_set(ds: MovieDataset, delay: int = 4, films=None, voxels=None, subject: str | None = None):
    """A :class:`~napari_nrf.data.ResponseSet` of still images for the image kinds: row i =
    (middle frame (S, S, 3) uint8 of the chunk of TR t, response (V,) of TR t + ``delay``),
    rows, splits, voxels and truth as ``ds.training_set(delay, films, voxels)``; images a
    lazy :class:`~napari_nrf.movie.dataset.ChunkView` of one frame per row. ``subject`` renames the set (default the data set's)."""
    rs = ds.training_set(delay, films=films, voxels=voxels)
    cv = rs.images
    view = ChunkView(cv.sources, cv.film, cv.t, frame=ds.frames_per_tr // 2)
    return dataclasses.replace(rs, images=view, subject=str(subject or rs.subject),
                               meta={**rs.meta, "still": "middle frame"})


def train_static(datasets, kind: str = "nrf", delay: int = 4, voxels=None, out=None, feature_cache=None,
                 **fit_kwargs):
    """Train an image kind (``kind`` "nrf" or "universal") on the middle frames of one movie
    data set or of several (a list: e.g. single subjects, jointly; their subject names must
    differ) with the response ``delay`` TRs later, through the kind's recipe and its default
    settings (``fit_kwargs`` override them). ``voxels`` (indices into each data set's voxels)
    restricts the voxels. Returns (model, history); the model's provenance records the delay."""
    from napari_nrf.recipes import train_universal
    from napari_nrf.recipes import train_nrf

    if kind not in KINDS:
        raise MovieError(f"static baseline kind must be one of {KINDS}, got {kind!r}")
    dsl = [datasets] if isinstance(datasets, MovieDataset) else list(datasets)
    if not dsl:
        raise MovieError("train_static needs at least one movie data set")
    sets = [middle_frame_set(d, delay, voxels=voxels) for d in dsl]
    if kind == "nrf":
        model, hist = train_nrf(sets, feature_cache=feature_cache, **fit_kwargs)
    else:
        model, hist = train_universal(sets, feature_cache=feature_cache, **fit_kwargs)
    model.provenance.setdefault("training", {}).update(
        {"movie_baseline": {"frame": "middle", "delay_tr": int(delay),
                            "films": dsl[0].film_names, "subjects": [d.subject for d in dsl]}})
    if out is not None:
        model.save(out)
    return model, hist


def evaluate_static(model, ds: MovieDataset, delay: int = 4, split: str = "test", n_perm: int = 0, seed: int = 0,
                    voxels=None, feature_cache=None, subject: str | None = None, return_r: bool = False) -> dict:
    """Scores of an image model on the ``split`` TRs of every film of ``ds`` (the middle
    frame of TR t predicting the response of TR t + ``delay``), in the layout of
    :func:`napari_nrf.movie.evaluate.evaluate_movie` ("films", "pooled", "held_out_film",
    "segments"; each with median/mean r, median R^2, calibration slope, spatial r).
    ``subject``: the model's subject for these voxels (default the data set's; an NRF
    predicts at the voxels' MNI coordinates whatever the subject)."""
    from napari_nrf.data.responseset import SPLITS
    from napari_nrf.train import predict_set, set_features

    from .evaluate import score_films

    if model.inputs == "frames":
        raise MovieError("evaluate_static is for image models; a movie model: evaluate_movie")
    want = SPLITS[split]
    pairs = {}
    for name in ds.film_names:
        rs = middle_frame_set(ds, delay, films=[name], voxels=voxels, subject=subject)
        rows = np.flatnonzero(rs.split == want)
        if len(rows) < 3:
            continue
        feats = set_features(model, rs, cache=feature_cache, rows=rows)
        pairs[name] = (predict_set(model, feats, rs, rows), rs.get_responses(rows))
    if not pairs:
        raise MovieError(f"no film of the data set has {split} TRs after the {delay}-TR delay")
    out = score_films(ds, pairs, n_perm, seed, return_r=return_r, voxels=voxels)
    out.update({"delay": int(delay), "split": split, "kind": model.kind, "frame": "middle"})
    return out


def static_baseline(datasets, kind: str = "nrf", delay: int = 4, voxels=None, split: str = "test", n_perm: int = 0,
                    feature_cache=None, **fit_kwargs) -> dict:
    """Train (:func:`train_static`) and score (:func:`evaluate_static`, on the first data
    set) a static baseline; returns the report with "best_epoch" and "seconds" added."""
    import time

    t = time.perf_counter()
    dsl = [datasets] if isinstance(datasets, MovieDataset) else list(datasets)
    model, hist = train_static(dsl, kind, delay, voxels=voxels, feature_cache=feature_cache, **fit_kwargs)
    rep = evaluate_static(model, dsl[0], delay, split=split, n_perm=n_perm, voxels=voxels,
                          feature_cache=feature_cache)
    rep["best_epoch"] = int(hist.best_epoch)
    rep["seconds"] = round(time.perf_counter() - t, 1)
    return rep
