"""The toy kind's model: ``r(image, x) = (P e) . (H phi(x))``, with ``e`` the image's
pooled embedding (D,), ``phi(x)`` fixed Fourier features of the MNI point x (mm) and ``P``,
``H`` learned (8 x D, 8 x 2F). A continuous field: it answers at any MNI point."""

import numpy as np
import torch
from torch import nn

from napari_nrf.models import EncodingModel, register


@register
class ToyLinearField(EncodingModel):
    kind = "toy-linear"
    continuous = True

    def __init__(self, dim: int, n_freq: int = 4, rank: int = 8, feature: str = "embedding"):
        super().__init__()
        self.dim, self.n_freq, self.rank, self.feature = int(dim), int(n_freq), int(rank), str(feature)
        self.proj = nn.Linear(self.dim, self.rank)
        self.head = nn.Linear(2 * self.n_freq, self.rank)
        g = torch.Generator().manual_seed(0)
        self.register_buffer("freqs", torch.randn(self.n_freq, 3, generator=g) / 40.0)  # cycles per mm

    def config(self) -> dict:
        return {"dim": self.dim, "n_freq": self.n_freq, "rank": self.rank, "feature": self.feature}

    @classmethod
    def example(cls, feature_shapes, subjects, backbone="efficientnet-lite0", seed=0, bases=None):
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = cls(feature_shapes["embedding"][0])
        model.subjects = {s: np.asarray(x, np.float32) for s, x in subjects.items()}
        model.backbone_name = backbone
        return model

    @property
    def feature_shapes(self) -> dict:
        return {self.feature: (self.dim,)}

    def predict(self, features, coords=None, voxels=None, subject=None):
        if coords is None:
            xyz = self.subjects[subject or next(iter(self.subjects))]
            coords = xyz if voxels is None else xyz[np.asarray(voxels.cpu() if torch.is_tensor(voxels) else voxels)]
        x = torch.as_tensor(np.asarray(coords, np.float32) if not torch.is_tensor(coords) else coords)
        x = x.to(self.freqs.device, torch.float32)
        ang = 2 * np.pi * x @ self.freqs.T
        g = self.head(torch.cat([torch.sin(ang), torch.cos(ang)], 1))  # (N, rank)
        e = self.proj(torch.as_tensor(features[self.feature]).to(self.freqs.device, torch.float32))  # (B, rank)
        return e @ g.T


def build(train_sets, backbone="efficientnet-lite0", feature_shapes=None, seed=0):
    """A new model for these response sets (the generic recipe of napari-nrf fits it)."""
    shapes = feature_shapes or {"embedding": (1280,)}
    return ToyLinearField.example(shapes, {rs.subject: rs.coords for rs in train_sets}, backbone=backbone, seed=seed)
