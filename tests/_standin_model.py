"""A tiny analytic stand-in encoding model for the widget tests (no backbone, no training).

Its "features" are an image's mean red minus mean blue (in [-1, 1]); its response at MNI
point x is that amplitude times a Gaussian blob of sigma 10 mm centred at (-40, -20, 10),
a left-hemisphere region. A red image thus lights up x < 0 positively, a blue one
negatively. ``gate`` (a threading.Event) lets a test hold a render in the middle.
"""

import threading

import numpy as np
import torch
from torch import nn

from napari_nrf.models.base import EncodingModel

BLOB = np.array([-40.0, -20.0, 10.0])
SIGMA = 10.0


class BlobModel(EncodingModel):
    kind = "test-blob"
    continuous = True

    def __init__(self):
        super().__init__()
        self.gain = nn.Parameter(torch.ones(()))
        self.backbone_name = "test-colour"
        self.subjects = {"sub-01": np.array([[-40, -20, 10], [40, -20, 10]], np.float32)}
        self.gate = None          # threading.Event: predict waits for it (cancel tests)
        self.started = threading.Event()

    def encode_images(self, images, batch_size=16, cache=None, progress=None):
        from napari_nrf.features import as_image_list

        imgs = as_image_list(images)
        amp = [float(im[..., 0].mean() - im[..., 2].mean()) / 255.0 for im in imgs]
        if progress is not None:
            progress(len(imgs), len(imgs))
        return {"embedding": torch.tensor(amp, dtype=torch.float32)[:, None]}

    # A split first layer as in NRF (h = relu(W0_img g + b0 + W0_xyz gamma(x)), then
    # ``layers[1:]``); the query engine uses the contract's default fast query (predict per
    # chunk). Two hidden units relu(a + b - 1) - relu(-a + b - 1), with a the image
    # amplitude and b the blob, give a * blob-like values: a at the centre, 0 far away,
    # the sign of a in between.
    width = 2

    @property
    def layers(self):
        if not hasattr(self, "_layers"):
            out = nn.Linear(2, 1)
            with torch.no_grad():
                out.weight.copy_(torch.tensor([[1.0, -1.0]]) * self.gain)
                out.bias.zero_()
            object.__setattr__(self, "_layers", [None, out])
        return self._layers

    def image_code(self, features):
        return torch.as_tensor(features["embedding"])[:, :1].float()

    def image_half(self, code):
        return torch.cat([code - 1, -code - 1], dim=1)

    def coord_half(self, coords):
        self.started.set()
        if self.gate is not None:
            self.gate.wait(10)
        xyz = torch.as_tensor(np.asarray(coords, np.float32) if not torch.is_tensor(coords) else coords).float()
        d2 = ((xyz - torch.as_tensor(BLOB, dtype=torch.float32)) ** 2).sum(-1)
        g = torch.exp(-d2 / (2 * SIGMA ** 2))[:, None]
        return torch.cat([g, g], dim=1)

    def head(self, h_img, h_xyz):
        h = torch.relu(h_img[:, None, :] + h_xyz[None, :, :])
        return self.layers[-1](h)[..., 0]

    def predict(self, features, coords=None, voxels=None, subject=None):
        if coords is None:
            coords = self.subjects[subject or "sub-01"][np.asarray(voxels)]
        return self.head(self.image_half(self.image_code(features)), self.coord_half(coords))


def colour_image(red: float, blue: float = 0.0, size: int = 32) -> np.ndarray:
    """(size, size, 3) uint8 image of a flat colour (red, blue in [0, 1])."""
    im = np.zeros((size, size, 3), np.uint8)
    im[..., 0] = round(red * 255)
    im[..., 2] = round(blue * 255)
    im[..., 1] = 40
    return im
