"""The model contract every model kind honours.

A model maps images to voxel responses in two steps::

    feats = model.encode_images(images)              # backbone + caches, per image
    resp  = model.predict(feats, coords=xyz)         # (B, N) at MNI points (continuous kinds)
    resp  = model.predict(feats, voxels=idx, subject="sub-01")   # at a subject's voxels

``feats`` is a dict of tensors with a leading batch dimension (the backbone's named
features, see :mod:`napari_nrf.features`). The training loop (:mod:`napari_nrf.train`),
the query engine (:mod:`napari_nrf.query`), evaluation and the widgets speak only this
contract, so a new kind is one new file in ``models/`` (or in a plugin package, entry
point group ``napari_nrf.model_kinds``) with a subclass of :class:`EncodingModel`
decorated with :func:`register`.

What a kind provides
--------------------
Required (the base raises ``NotImplementedError``):

``kind`` (class attribute)
    The bundle kind, a unique string.
``config() -> dict``
    JSON-able constructor arguments: ``cls(**config)`` rebuilds the architecture.
``predict(features, coords=None, voxels=None, subject=None) -> (B, N) float32``
    At MNI points ``coords`` (N, 3) mm, or at voxel indices ``voxels`` (N,) of ``subject``.
``example(feature_shapes, subjects, backbone=..., seed=0, bases=None)`` (classmethod)
    A tiny, randomly initialised instance (the contract test battery and the docs use it).

Capabilities (class attributes or properties; the defaults are those of a voxel kind):

``continuous`` (False)
    ``predict(coords=)`` answers at any MNI point: a field. Queries compute every grid
    point; otherwise they place the subject's voxels on the grid.
``supports_points`` (= ``continuous``)
    ``predict(coords=)`` is accepted (a voxel kind may map points to its nearest voxel).
``supports_fit`` (True)
    :func:`napari_nrf.train.fit` may train it (an ensemble is fitted by least squares).
``composite`` (False)
    Built from base models of other kinds (``example(..., bases=[...])``).
``conditioned`` (False)
    A continuous kind whose field depends on the subject (Rest2Visual: each subject's
    rest map): ``predict(coords=, subject=)`` and ``query_images(features, subject=)``
    take the subject (None: the model's first), and the query engine passes it on.

What the rest of the package may ask of any model (declared here with defaults; no code
outside a kind's own module probes a model with ``getattr``/``hasattr`` or its ``kind``):

``feature_shapes`` (None)
    Backbone feature name -> shape without batch that ``predict`` reads (None: not
    known; the precision guard then needs features passed in).
``pseudo_subjects`` (())
    Subject names a conditioned kind answers for beyond ``subjects`` (Rest2Visual's
    stimulus-only ``population`` reference).
``has_embeddings`` / ``embeddings(subject) -> (V, E) float32``  (False / unsupported)
    Per-voxel embeddings (the Universal encoder's), for the cluster maps.
``per_subject_parameters`` (False)
    A new subject needs parameters of its own before the model predicts for it (the
    Universal encoder's voxel embeddings, added with ``add_subject``): finetuning to a new
    subject learns only those (:func:`napari_nrf.recipes.transfer_subject`).
``has_decoder`` (False)
    ``decode(responses) -> (B, 3, S, S)`` reconstructs the input (the movie encoder-decoder).
``describe_subject(subject) -> str``
    One line about a subject for the model card (default: its voxel count).
``delay`` (0)
    TRs between an input and the response ``predict`` gives for it (the movie kind's).
``context`` (0)
    TRs of earlier film chunks a prediction reads: chunks given in one batch are taken as
    consecutive TRs, so a caller streaming a film passes this many earlier chunks first
    (the movie-features kind's learned haemodynamic response).
``concurrent_fits`` (True)
    Training draws nothing from torch's global generator, so threads may fit several
    models of this kind at once (finetuning an ensemble's bases on several devices).

Optional hooks with working defaults:

``encode_images``
    The frozen backbone ``backbone_name`` with the on-disk feature cache.
``train_predict(features, subject, voxels, coords)``
    What the training loop asks for a batch (default: ``coords`` for continuous kinds,
    ``voxels`` of ``subject`` otherwise).
``lr_scale(name) -> float`` / ``parameter_groups(trainable)``
    The trainable parameters and their learning-rate multipliers.
``loss_dict(features, true, subject, voxels, coords, alpha) -> {name: scalar tensor}``
    The one loss entry point of the training loop (single process and every rank of a
    data-parallel run alike): named loss terms of a batch, whose sum is minimised. The
    default is ``{"encoding": loss(train_predict(...), true, alpha)}``; a kind whose loss
    needs more than its predictions at the sampled voxels (the movie encoder-decoder's
    frame reconstruction) overrides it.
``loss_terms`` (``("encoding",)``)
    The names ``loss_dict`` returns, in order (every rank knows them without asking).
``loss(pred, true, alpha) -> scalar tensor``
    The default loss_dict's term: :func:`encoding_loss` (``(1 - alpha) MSE - alpha cos``).
``splits_batches`` (True)
    The batch loss is a mean over images and nothing in training mode mixes images
    (batch norm) or draws per-batch randomness (dropout), so the ranks of a data-parallel
    run may each take a share of a batch. False: every rank computes the whole batch (the
    same numbers as one process, without a speed-up).
``inputs`` / ``features_of_set(rs, cache=, progress=)``
    What the model reads: ``"images"`` (default: backbone features of each image) or
    ``"frames"`` (chunks of film frames per TR, ``features["frames"]`` (B, F, S, S, 3)
    grey levels). ``features_of_set`` gives a response set's features for the loop:
    None (default) means the backbone's; a kind may return its own arrays, and an array
    with ``lazy_rows = True`` (a :class:`napari_nrf.movie.dataset.ChunkView`) is read a
    batch at a time and never converted whole to float32.
``bundle_tensors`` / ``bundle_metadata`` / ``from_bundle`` / ``save``
    safetensors bundles of the state dict, the subjects' voxel coordinates and the metadata.
``calibration`` (None)
    The :class:`napari_nrf.calibration.Calibration` (per-voxel gains) that training fits
    on the validation split; ``save`` and :func:`load_model` store and restore it for every
    kind, and the consumers apply it with :func:`napari_nrf.calibration.apply` (the query
    engine, :func:`napari_nrf.train.predict_set`). ``predict`` itself stays uncalibrated
    (training optimises it). None: gain 1 (bundles written before it existed).
The fast query of a continuous kind (:class:`napari_nrf.query.QueryEngine`)
    ``query_images(features) -> state`` once per query (opaque to the engine),
    ``query_points(coords) -> point state`` once per grid (tensors, or lists/dicts of
    tensors, with a leading point dimension: the engine slices and caches it),
    ``query_predict(state, point_state) -> (B, n)`` per chunk and
    ``query_bytes_per_point(n_images)`` (activation memory, for the chunk size). The
    defaults (features; the points themselves; ``predict(features, coords=)``) work for
    any continuous model; NRF overrides them with its split first layer.

An operation a kind does not support raises :class:`UnsupportedOperation` with a
message saying what it supports instead (:meth:`EncodingModel.unsupported`).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

from napari_nrf import calibration as _calibration
from napari_nrf.errors import UnsupportedOperation

from .bundle import load_bundle, read_metadata, save_bundle

MODEL_KINDS: dict[str, type] = {}

_REQUIRED = ("config", "predict")


def register(cls):
    """Class decorator: make ``cls`` loadable from bundles of ``cls.kind``.

    Checks the contract's required parts; a kind registered twice under one name by two
    different classes is refused (a reload of the same module replaces it).
    """
    kind = getattr(cls, "kind", None)
    if not isinstance(kind, str) or not kind or kind == EncodingModel.kind:
        raise TypeError(f"{cls.__name__}: a model kind needs a class attribute kind = '<name>'")
    if not issubclass(cls, EncodingModel):
        raise TypeError(f"{cls.__name__}: model kinds subclass napari_nrf.models.EncodingModel")
    missing = [m for m in _REQUIRED if getattr(cls, m) is getattr(EncodingModel, m)]
    if missing:
        raise TypeError(f"model kind {kind!r} ({cls.__name__}) does not implement {', '.join(missing)}")
    old = MODEL_KINDS.get(kind)
    if old is not None and old is not cls and (old.__module__, old.__qualname__) != (cls.__module__, cls.__qualname__):
        raise TypeError(f"model kind {kind!r} is registered twice: {old.__module__}.{old.__qualname__} "
                        f"and {cls.__module__}.{cls.__qualname__}")
    MODEL_KINDS[kind] = cls
    return cls


_DISCOVERED = False


def discover_kinds() -> dict[str, type]:
    """Import every module of ``napari_nrf.models`` and every ``napari_nrf.model_kinds``
    entry point, so that each kind registers itself; returns :data:`MODEL_KINDS`.

    No list of kinds is kept anywhere: a kind is known once its module is imported.
    """
    global _DISCOVERED
    if not _DISCOVERED:
        import importlib
        import pkgutil
        from importlib.metadata import entry_points

        for info in pkgutil.iter_modules([str(Path(__file__).parent)]):  # this package's modules
            if not info.name.startswith("_"):
                importlib.import_module(f"{__package__}.{info.name}")
        for ep in entry_points(group="napari_nrf.model_kinds"):
            ep.load()
        _DISCOVERED = True
    return MODEL_KINDS


def slice_points(state, start: int, stop: int):
    """Rows ``start:stop`` of a point state (a tensor/array, or lists/tuples/dicts of them)."""
    if isinstance(state, dict):
        return {k: slice_points(v, start, stop) for k, v in state.items()}
    if isinstance(state, (list, tuple)):
        return type(state)(slice_points(v, start, stop) for v in state)
    return state[start:stop]


def cat_points(parts: list):
    """Concatenate point states along their point dimension (inverse of :func:`slice_points`)."""
    first = parts[0]
    if isinstance(first, dict):
        return {k: cat_points([p[k] for p in parts]) for k in first}
    if isinstance(first, (list, tuple)):
        return type(first)(cat_points([p[i] for p in parts]) for i in range(len(first)))
    if isinstance(first, np.ndarray):
        return np.concatenate(parts)
    return torch.cat(parts)


def points_nbytes(state) -> int:
    """Bytes held by a point state."""
    if isinstance(state, dict):
        return sum(points_nbytes(v) for v in state.values())
    if isinstance(state, (list, tuple)):
        return sum(points_nbytes(v) for v in state)
    if torch.is_tensor(state):
        return state.numel() * state.element_size()
    return int(getattr(state, "nbytes", 0))


def encoding_loss(pred: torch.Tensor, true: torch.Tensor, alpha: float = 0.1) -> torch.Tensor:
    """``(1 - alpha) * MSE - alpha * cos`` of (B, n) predictions and responses; the cosine
    across voxels per image, averaged over images (NRF's loss, alpha = 0.1).

    The norm of each image's prediction in the cosine is floored at 0.1 x the norm of its
    responses: the cosine is scale-free, so its gradient grows as 1 / |pred| and, for a
    model whose outputs start near zero (1e-3 or exactly 0), dwarfs the MSE's gradient by
    orders of magnitude; Adam's second moment then remembers that spike for ~1000 steps
    and the MSE, the only term that sets the predictions' units, barely moves them. Above
    the floor this is exactly the cosine.
    """
    mse = torch.mean((pred - true) ** 2)
    tn = torch.linalg.vector_norm(true, dim=1)
    pn = torch.maximum(torch.linalg.vector_norm(pred, dim=1), 0.1 * tn)
    cos = ((pred * true).sum(1) / (pn * tn).clamp_min(1e-8)).mean()
    return (1 - alpha) * mse - alpha * cos


class EncodingModel(nn.Module):
    """Base class of every model kind: see the module doc for the contract.

    Attributes
    ----------
    kind : str
        Bundle kind ("nrf", "universal", "ensemble", ...).
    continuous : bool
        True when ``predict`` accepts arbitrary MNI ``coords`` (an implicit field);
        False when it predicts only at known voxels of known subjects.
    subjects : dict[str, np.ndarray]
        Subject name -> (V, 3) float32 voxel MNI coordinates the model was trained on.
    backbone_name : str
        Name of the image backbone in :mod:`napari_nrf.features`.
    """

    kind = "base"
    continuous = False
    supports_fit = True
    composite = False
    conditioned = False  # continuous, but the field depends on the subject (query_images(subject=))
    loss_terms: tuple = ("encoding",)  # the keys of loss_dict, in order
    pseudo_subjects: tuple = ()  # subjects a conditioned kind answers for beyond self.subjects
    has_embeddings = False  # embeddings(subject) gives per-voxel embeddings
    per_subject_parameters = False  # a new subject needs its own parameters (add_subject)
    has_decoder = False  # decode(responses) reconstructs the input
    delay = 0  # TRs between an input and the response predicted for it
    context = 0  # TRs of earlier chunks a prediction reads (consecutive chunks in a batch)
    own_calibration = False  # the kind puts its outputs in the data's units itself: no generic validation gain
    concurrent_fits = True  # training draws nothing from torch's global generator (threads may fit several)
    splits_batches = True  # data-parallel ranks may each take a share of a batch (see the module doc)
    inputs = "images"  # "images" (backbone features) or "frames" (film chunks per TR)
    calibration = None  # napari_nrf.calibration.Calibration fitted after training (None: gain 1)

    def __init__(self):
        super().__init__()
        self.subjects: dict[str, np.ndarray] = {}
        self.backbone_name: str = ""
        self.backbone_config: dict = {}
        self.metrics: dict = {}
        self.provenance: dict = {}
        self._backbone = None

    # ---- capabilities ----------------------------------------------------------------
    @property
    def supports_points(self) -> bool:
        """``predict(coords=)`` is accepted (always for continuous kinds)."""
        return bool(self.continuous)

    @property
    def feature_shapes(self) -> dict | None:
        """Backbone feature name -> shape without batch that ``predict`` reads; None when
        the kind does not know them."""
        return None

    def describe_subject(self, subject: str) -> str:
        """One line about ``subject`` for the model card (default: its voxel count)."""
        return f"{len(self.subjects[subject])} voxels"

    def embeddings(self, subject: str | None = None):
        """Per-voxel embeddings (V, E) float32 of ``subject`` (kinds with ``has_embeddings``)."""
        raise self.unsupported("voxel embeddings (cluster maps)", "a Universal encoder has them")

    def decode(self, responses: torch.Tensor) -> torch.Tensor:
        """The input reconstructed from responses (B, V) (kinds with ``has_decoder``)."""
        raise self.unsupported("reconstructions from responses", "the movie encoder-decoder (w < 1) has a decoder")

    def add_subject(self, subject: str, coords, **kw) -> None:
        """Give a new ``subject`` (voxels at MNI ``coords`` (V, 3) mm) parameters of its own
        (kinds with ``per_subject_parameters``)."""
        raise self.unsupported("adding a subject's own parameters", "finetune the whole model on the subject")

    def subject_filter(self, subject: str):
        """``trainable(name) -> bool`` accepting only ``subject``'s own parameters."""
        raise self.unsupported("training one subject's own parameters", "finetune the whole model on the subject")

    def unsupported(self, what: str, instead: str = "") -> UnsupportedOperation:
        """The error to raise for an operation this kind does not support."""
        msg = f"model kind {self.kind!r} does not support {what}"
        return UnsupportedOperation(msg + (f"; {instead}" if instead else ""))

    @classmethod
    def example(cls, feature_shapes: dict, subjects: dict, backbone: str = "efficientnet-lite0", seed: int = 0,
                bases=None) -> "EncodingModel":
        """A tiny, randomly initialised model for backbone features ``feature_shapes``
        (name -> shape without batch) and ``subjects`` (name -> (V, 3) MNI mm); a
        composite kind combines ``bases``. Used by the contract test battery."""
        raise NotImplementedError(f"model kind {cls.kind!r} provides no example()")

    # ---- images -> features -----------------------------------------------------------
    def backbone(self, device=None):
        """The frozen image backbone (built lazily, shared by encode_images)."""
        from napari_nrf.features import get_backbone

        if self._backbone is None:
            # Kept out of the module registry (object.__setattr__): the frozen backbone is
            # not part of the model's state_dict, its bundles or its parameters.
            object.__setattr__(self, "_backbone", get_backbone(self.backbone_name, **self.backbone_config))
        dev = device or self.device
        return self._backbone.to(dev)

    @property
    def device(self) -> torch.device:
        for p in self.parameters():
            return p.device
        return torch.device("cpu")

    def encode_images(self, images, batch_size: int = 16, cache=None, progress=None) -> dict:
        """Backbone features of ``images`` (paths, arrays or a (B, H, W, 3) uint8 array).

        Returns a dict name -> tensor (B, ...) on the model's device. With ``cache`` (a
        :class:`napari_nrf.features.FeatureCache`) features are read from / written to disk.
        """
        from napari_nrf.features import extract_features
        from napari_nrf.features.extract import cached_features

        feats = None
        if cache is not None and self._backbone is None:  # all cached: no need to build the backbone
            feats = cached_features(self.backbone_name, self.backbone_config, images, cache)
            if feats is not None and progress is not None:
                n = len(next(iter(feats.values())))
                progress(n, n)
        if feats is None:
            feats = extract_features(self.backbone(), images, batch_size=batch_size, cache=cache,
                                     device=self.device, progress=progress)
        return {k: torch.as_tensor(v).to(self.device, torch.float32) for k, v in feats.items()}

    # ---- features -> responses ----------------------------------------------------------
    def predict(self, features: dict, coords=None, voxels=None, subject: str | None = None) -> torch.Tensor:
        """Responses (B, N) float32 for B images at N MNI points ``coords`` (N, 3) mm, or at
        voxel indices ``voxels`` (N,) of ``subject``."""
        raise NotImplementedError

    # ---- training hooks (napari_nrf.train.fit) -------------------------------------------
    def train_predict(self, features: dict, subject: str, voxels, coords) -> torch.Tensor:
        """Predictions (B, n) for a training batch: the sampled ``voxels`` (n,) of
        ``subject`` whose MNI coordinates are ``coords`` (n, 3)."""
        if self.continuous:
            return self.predict(features, coords=coords)
        return self.predict(features, voxels=voxels, subject=subject)

    def loss(self, pred: torch.Tensor, true: torch.Tensor, alpha: float) -> torch.Tensor:
        """Loss of predictions ``pred`` (B, n) against responses ``true`` (B, n): by
        default :func:`encoding_loss`."""
        return encoding_loss(pred, true, alpha)

    def loss_dict(self, features: dict, true: torch.Tensor, subject: str, voxels, coords,
                  alpha: float) -> dict[str, torch.Tensor]:
        """Named loss terms (scalar tensors; the loop minimises their sum) of a training
        batch: responses ``true`` (B, n) float32 at the sampled ``voxels`` (n,) of
        ``subject``, whose MNI coordinates are ``coords`` (n, 3) mm."""
        pred = self.train_predict(features, subject=subject, voxels=voxels, coords=coords)
        return {"encoding": self.loss(pred, true, alpha)}

    def features_of_set(self, rs, cache=None, progress=None) -> dict | None:
        """Features of every row of response set ``rs`` for :func:`napari_nrf.train.fit`
        (name -> (n, ...) array-like; lazy arrays allowed), or None: the backbone's
        features of ``rs``'s images (the default)."""
        return None

    def lr_scale(self, param_name: str) -> float:
        """Learning-rate multiplier of parameter ``param_name`` (default 1)."""
        return 1.0

    def parameter_groups(self, trainable=None) -> list[tuple[str, nn.Parameter, float]]:
        """``(name, parameter, lr_scale)`` of the parameters :func:`napari_nrf.train.fit`
        trains; ``trainable(name) -> bool`` filters them (default: all)."""
        if not self.supports_fit:
            raise self.unsupported("training with fit", "fit its base models, then the kind's own fit")
        return [(n, p, float(self.lr_scale(n))) for n, p in self.named_parameters()
                if trainable is None or trainable(n)]

    # ---- fast queries (napari_nrf.query.QueryEngine), continuous kinds ------------------
    def _need_continuous(self, what: str) -> None:
        if not self.continuous:
            raise self.unsupported(what, "it predicts at its subjects' voxels (predict(voxels=, subject=))")

    def query_images(self, features: dict):
        """Per-query image state (opaque to the engine); default: the features."""
        self._need_continuous("queries at arbitrary points")
        return features

    def query_points(self, coords: torch.Tensor):
        """Image-independent state of MNI points ``coords`` (n, 3) mm, with a leading point
        dimension (the engine slices it and caches it per grid); default: the points."""
        self._need_continuous("queries at arbitrary points")
        return coords

    def query_predict(self, state, points) -> torch.Tensor:
        """Responses (B, n) from :meth:`query_images` and :meth:`query_points` states."""
        return self.predict(state, coords=points)

    def query_bytes_per_point(self, n_images: int) -> int:
        """Activation bytes per point of one chunk of B = ``n_images`` (sizes the chunks)."""
        return 4 * max(1, n_images) * int(getattr(self, "width", 512))

    # ---- bundles ---------------------------------------------------------------------
    def bundle_tensors(self) -> dict:
        """Tensors to save (default: the state dict plus subjects' coordinates)."""
        t = {k: v for k, v in self.state_dict().items()}
        for s, xyz in self.subjects.items():
            t[f"subjects.{s}.coords"] = torch.as_tensor(np.asarray(xyz, np.float32))
        return t

    def bundle_metadata(self) -> dict:
        return {
            "kind": self.kind,
            "config": self.config(),
            "backbone": {"name": self.backbone_name, "config": self.backbone_config},
            "subjects": {s: {"n_voxels": int(len(x)), "tensor": f"subjects.{s}.coords"} for s, x in self.subjects.items()},
            "metrics": self.metrics,
            "provenance": self.provenance,
        }

    def config(self) -> dict:
        """JSON-able constructor arguments (``cls(**config)`` rebuilds the architecture)."""
        raise NotImplementedError

    def save(self, path) -> Path:
        """Save as a ``.safetensors`` bundle (atomic), with the calibration when there is one;
        after training, with ``<bundle>.history.csv`` beside it (:mod:`napari_nrf.history`)."""
        tensors, meta = self.bundle_tensors(), self.bundle_metadata()
        if self.calibration is not None:
            extra, meta["calibration"] = self.calibration.bundle_parts()
            tensors = {**tensors, **extra}
        out = save_bundle(path, tensors, meta)
        if getattr(self, "training_history", None):
            from napari_nrf.history import write_history

            write_history(out, self.training_history, (self.provenance.get("training") or {}).get("best_epoch"))
        return out

    @classmethod
    def from_bundle(cls, tensors: dict, meta: dict) -> "EncodingModel":
        from .bundle import BundleError

        cfg = meta.get("config")
        if not isinstance(cfg, dict):
            raise BundleError("metadata field 'config' is missing or not an object")
        state = {k: v for k, v in tensors.items() if not k.startswith("subjects.")}
        check_config_against_tensors(cls, cfg, state)  # before allocating anything the metadata asks for
        model = cls(**cfg)
        missing, unexpected = model.load_state_dict(state, strict=False)
        if missing:
            raise BundleError(f"missing tensor(s) {', '.join(sorted(missing)[:8])}")
        bb = meta.get("backbone")
        if not isinstance(bb, dict) or not isinstance(bb.get("name"), str):
            raise BundleError("metadata field 'backbone' is missing or has no 'name'")
        model.backbone_name = bb["name"]
        model.backbone_config = bb.get("config") or {}
        subjects = meta.get("subjects") or {}
        if not isinstance(subjects, dict):
            raise BundleError("metadata field 'subjects' is not an object")
        model.subjects = {}
        for s, info in subjects.items():
            key = info.get("tensor") if isinstance(info, dict) else None
            if key not in tensors:
                raise BundleError(f"metadata field 'subjects.{s}.tensor' names {key!r}, which is not in the file")
            c = tensors[key]
            if c.ndim != 2 or c.shape[1] != 3 or not bool(torch.isfinite(c).all()):
                raise BundleError(f"tensor {key}: subject coordinates must be finite (N, 3) MNI mm, got {tuple(c.shape)}")
            nv = info.get("n_voxels", c.shape[0])
            if not isinstance(nv, int) or isinstance(nv, bool) or nv != c.shape[0]:
                raise BundleError(f"metadata field 'subjects.{s}.n_voxels' is {nv!r}, the tensor {key} holds "
                                  f"{c.shape[0]} voxels")
            model.subjects[s] = c.numpy()
        model.metrics = meta.get("metrics", {})
        model.provenance = meta.get("provenance", {})
        return model


# A bundle's configuration may not ask for much more than the file holds: parameters and
# buffers the tensors do not give (derived buffers) up to this many elements beyond them.
MAX_DERIVED_ELEMENTS = 64_000_000


def check_config_against_tensors(cls, cfg: dict, state: dict) -> None:
    """Refuse a bundle whose ``config`` contradicts its tensors' own shapes, before any
    allocation: the architecture is built on torch's ``meta`` device (no memory), its
    state-dict shapes compared with the stored tensors, and its total size with theirs
    (a crafted ``n_fourier = 1e9`` or ``width = 999999`` is refused here, not after
    gigabytes). Wrong types in the config become a :class:`BundleError`."""
    from .bundle import BundleError

    try:
        with torch.device("meta"):
            probe = cls(**cfg)
    except BundleError:
        raise
    except Exception as exc:  # noqa: BLE001 - any failure to build means the config is bad
        msg = " ".join(str(exc).split())[:200]
        raise BundleError(f"metadata field 'config' does not describe a {cls.kind} model "
                          f"({type(exc).__name__}: {msg})") from None
    expected = probe.state_dict()
    for name, t in expected.items():
        if name in state and tuple(state[name].shape) != tuple(t.shape):
            raise BundleError(f"metadata field 'config' implies tensor {name} of shape {tuple(t.shape)}, "
                              f"the file holds {tuple(state[name].shape)}")
    wanted = sum(t.numel() for t in expected.values())
    wanted += sum(b.numel() for n, b in probe.named_buffers() if n not in expected)
    stored = sum(int(v.numel()) for v in state.values())
    if wanted > stored + MAX_DERIVED_ELEMENTS:
        raise BundleError(f"metadata field 'config' asks for {wanted:,} parameters, the file holds {stored:,}; "
                          "refused (a damaged or crafted bundle)")


def load_model(path, device="cpu", kind: str | None = None) -> EncodingModel:
    """Load any model bundle onto ``device`` ("cpu", "cuda", "cuda:1", ...), in eval mode."""
    from .bundle import BundleError

    discover_kinds()
    meta = read_metadata(path)
    from napari_nrf.features import BACKBONES

    bb = (meta.get("backbone") or {}).get("name")
    if bb not in BACKBONES:
        raise BundleError(f"{Path(path).name}: metadata field 'backbone.name' is {bb!r}; known: {sorted(BACKBONES)}")
    k = meta["kind"]
    if kind is not None and k != kind:
        raise BundleError(f"{Path(path).name}: metadata field 'kind' is {k!r}, expected {kind!r}")
    if k not in MODEL_KINDS:
        raise BundleError(f"{Path(path).name}: metadata field 'kind' is {k!r}; known kinds: {sorted(MODEL_KINDS)}")
    tensors, meta = load_bundle(path, verify=False)
    bad = [n for n, t in tensors.items() if t.is_floating_point() and not bool(torch.isfinite(t).all())]
    if bad:  # NaN weights would give all-NaN volumes "successfully"
        raise BundleError(f"{Path(path).name}: tensor(s) {', '.join(sorted(bad)[:5])} hold NaN or infinite values "
                          "(a damaged file or a diverged training); refused")
    from .bundle import check_integrity

    check_integrity(Path(path), tensors, meta)  # a flipped bit, a relabelled dtype, a changed shape
    try:
        cal = {n: t for n, t in tensors.items() if n.startswith(_calibration.TENSOR_PREFIX)}
        model = MODEL_KINDS[k].from_bundle({n: t for n, t in tensors.items() if n not in cal}, meta)
        model.calibration = _calibration.Calibration.from_bundle(cal, meta.get("calibration"))
    except _calibration.CalibrationError as exc:
        raise BundleError(f"{Path(path).name}: {exc}") from None
    except BundleError as exc:
        msg = str(exc)
        raise BundleError(msg if Path(path).name in msg else f"{Path(path).name}: {msg}") from None
    except (TypeError, KeyError, AttributeError, IndexError, RuntimeError, ValueError) as exc:
        # metadata of the wrong types or shapes that the checks above did not name
        raise BundleError(f"{Path(path).name}: metadata do not match the tensors "
                          f"({type(exc).__name__}: {' '.join(str(exc).split())[:200]})") from None
    return model.to(device).eval()
