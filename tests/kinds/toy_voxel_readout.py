"""A toy model kind, defined and registered in this one file: the contract test battery
(tests/test_contract.py) picks up every file in tests/kinds/ with no other edit.

A voxel-only kind: each voxel of each subject reads the image's pooled ``embedding``
(B, D) through its own weights, ``r[b, v] = e[b] . W_s[v] + c_s[v]``. It predicts only at
its subjects' voxels, so queries at MNI points raise the contract's clear error.
"""

import numpy as np
import torch
from torch import nn

from napari_nrf.models.base import EncodingModel, register


@register
class ToyVoxelReadout(EncodingModel):
    """Per-voxel linear readout of the embedding; ``n_voxels``: subject -> V, ``dim``: D."""

    kind = "toy-voxel-readout"
    continuous = False  # and supports_points stays False: voxels only

    def __init__(self, n_voxels: dict, dim: int, feature: str = "embedding"):
        super().__init__()
        self.n_voxels, self.dim, self.feature = {s: int(v) for s, v in n_voxels.items()}, int(dim), str(feature)
        self.weights = nn.ParameterDict({s: nn.Parameter(torch.randn(v, self.dim) * 0.01)
                                         for s, v in self.n_voxels.items()})
        self.offsets = nn.ParameterDict({s: nn.Parameter(torch.zeros(v)) for s, v in self.n_voxels.items()})

    @classmethod
    def example(cls, feature_shapes, subjects, backbone="efficientnet-lite0", seed=0, bases=None):
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = cls({s: len(x) for s, x in subjects.items()}, feature_shapes["embedding"][0])
        model.subjects = {s: np.asarray(x, np.float32) for s, x in subjects.items()}
        model.backbone_name = backbone
        return model

    def config(self) -> dict:
        return {"n_voxels": self.n_voxels, "dim": self.dim, "feature": self.feature}

    def predict(self, features, coords=None, voxels=None, subject=None):
        if coords is not None:
            raise self.unsupported("predictions at MNI points", "it predicts at its subjects' voxels")
        subject = subject or next(iter(self.n_voxels))
        w, c = self.weights[subject], self.offsets[subject]
        if voxels is not None:
            idx = torch.as_tensor(np.asarray(voxels.cpu() if torch.is_tensor(voxels) else voxels), dtype=torch.long)
            w, c = w[idx], c[idx]
        e = torch.as_tensor(features[self.feature]).float()
        return e @ w.T + c
