"""The one model interface every model kind implements.

A model maps images to voxel responses in two steps::

    feats = model.encode_images(images)              # backbone + caches, per image
    resp  = model.predict(feats, coords=xyz)         # (B, N) at MNI points (continuous kinds)
    resp  = model.predict(feats, voxels=idx, subject="sub-01")   # at a subject's voxels

``feats`` is a dict of tensors with a leading batch dimension (the backbone's named
features, see :mod:`napari_nrf.features`). The query engine, training loop, evaluation
and widgets only use this interface, so a new kind is one new file in ``models/`` that
subclasses :class:`EncodingModel` and registers itself with :func:`register`.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

from .bundle import load_bundle, read_metadata, save_bundle

MODEL_KINDS: dict[str, type] = {}


def register(cls):
    """Class decorator: make ``cls`` loadable from bundles of ``cls.kind``."""
    MODEL_KINDS[cls.kind] = cls
    return cls


class EncodingModel(nn.Module):
    """Base class. Subclasses set ``kind`` and implement the methods below.

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

    def __init__(self):
        super().__init__()
        self.subjects: dict[str, np.ndarray] = {}
        self.backbone_name: str = ""
        self.backbone_config: dict = {}
        self.metrics: dict = {}
        self.provenance: dict = {}
        self._backbone = None

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
        """Save as a ``.safetensors`` bundle (atomic)."""
        return save_bundle(path, self.bundle_tensors(), self.bundle_metadata())

    @classmethod
    def from_bundle(cls, tensors: dict, meta: dict) -> "EncodingModel":
        model = cls(**meta["config"])
        state = {k: v for k, v in tensors.items() if not k.startswith("subjects.")}
        missing, unexpected = model.load_state_dict(state, strict=False)
        if missing:
            from .bundle import BundleError

            raise BundleError(f"missing tensor(s) {', '.join(sorted(missing)[:8])}")
        model.backbone_name = meta["backbone"]["name"]
        model.backbone_config = meta["backbone"].get("config", {})
        model.subjects = {s: tensors[info["tensor"]].numpy() for s, info in meta.get("subjects", {}).items()}
        model.metrics = meta.get("metrics", {})
        model.provenance = meta.get("provenance", {})
        return model


def load_model(path, device="cpu", kind: str | None = None) -> EncodingModel:
    """Load any model bundle onto ``device`` ("cpu", "cuda", "cuda:1", ...), in eval mode."""
    from .bundle import BundleError

    # Import the kinds so they register themselves.
    from . import _kinds  # noqa: F401

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
    tensors, meta = load_bundle(path)
    model = MODEL_KINDS[k].from_bundle(tensors, meta)
    return model.to(device).eval()
