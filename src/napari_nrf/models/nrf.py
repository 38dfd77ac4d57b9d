"""NRF, the Neural Response Function: an implicit field over MNI space.

``Phi(image, x) = P(G(image), gamma(x))`` gives the response of the brain at MNI point
``x`` (mm) to ``image``:

``G`` (feature merger)
    For each selected token map (B, P, C) of the frozen backbone: optional average
    pooling of the token grid to ``pool`` tokens, a per-token ``Linear(C, d)``, flatten
    (P*d), ``Linear(P*d, merged_dim)``, tanh. The maps are concatenated and
    L2-normalised together; then the backbone's pooled ``embedding`` is appended
    (L2-normalised as well, see ``normalise_embedding``). With ``clip-vit-b16`` and
    ``block4``/``block7``, d = 128 and merged_dim = 512 this is exactly the paper's merger
    (1024 + 512 = 1536 values per image).
``gamma`` (Fourier features)
    ``[sin(u B), cos(u B)]`` with ``u = (x + offset) / size`` the NRF-normalised
    coordinate (see :func:`napari_nrf.space.nrf_normalise`) and ``B`` a stored (3, F)
    random matrix drawn from N(0, std^2) (paper: F = 32, std = 32, seed 42, no 2 pi).
``P`` (MLP)
    ``depth`` Linear layers (input -> width x (depth - 1) -> 1) with ReLU between, scalar
    output. Paper: depth 8, width 4096 (about 107M parameters).

The first Linear layer splits into an image half (input columns of G) and a coordinate
half (columns of gamma): ``W0 [g; c] + b0 = (W0_g g + b0) + W0_c c``. The model's fast
query (the contract's ``query_images`` / ``query_points`` / ``query_predict``, used by
:mod:`napari_nrf.query`) computes the image half once per image and the coordinate half
once per grid (:meth:`NRF.image_half`, :meth:`NRF.coord_half`), then runs the rest of the
MLP per chunk of points (:meth:`NRF.head`; on the CPU through reused buffers).

Presets (:func:`build_nrf`): ``"paper"`` (d 128, merged 512, 8 x 4096) and ``"demo"``
(d 16, merged 128, 4 x 128; sized so a 2 mm whole brain takes under a second on two
CPU cores) for CPU training and the plugin demo. For
``efficientnet-lite0`` the default token maps are ``s8`` average-pooled from 28x28 to
14x14 tokens (the full 784-token map would make its fuse layer 4x larger for little
gain), ``s16`` (14x14) and ``s32`` (7x7).
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn

from napari_nrf.errors import NapariNRFError
from napari_nrf.space import NRF_COORD_OFFSET, NRF_COORD_SIZE

from .base import EncodingModel, register


class NRFError(NapariNRFError):
    """Bad input to an NRF model (missing features, bad coordinates, bad config)."""


PRESETS = {
    "paper": {"downsample_dim": 128, "merged_dim": 512, "width": 4096, "depth": 8},
    "demo": {"downsample_dim": 16, "merged_dim": 128, "width": 128, "depth": 4},
    "tiny": {"downsample_dim": 4, "merged_dim": 32, "width": 64, "depth": 3},
}

# Token maps the merger reads per backbone: name -> pooled token count (None: keep all).
DEFAULT_TOKEN_MAPS = {
    "clip-vit-b16": {"block4": None, "block7": None},
    "efficientnet-lite0": {"s8": 196, "s16": None, "s32": None},
    # Mid-depth blocks, at about the depths of CLIP's blocks 4 and 7 of 12.
    "dinov2-vitl14-reg": {"block6": None, "block12": None},
}

_DEFAULT_SHAPES = {"clip-vit-b16": {"block4": (196, 768), "block7": (196, 768), "embedding": (512,)},
                   "dinov2-vitl14-reg": {**{f"block{i}": (256, 1024) for i in (1, 6, 12, 18, 24)},
                                         "embedding": (1024,)}}


class _TokenProjection(nn.Module):
    """One token map (B, P, C) -> (B, merged_dim): per-token Linear C->d, flatten, Linear, tanh."""

    def __init__(self, n_tokens: int, channels: int, d: int, merged_dim: int, pool: int | None,
                 activation: str = "tanh"):
        super().__init__()
        self.activation = activation
        self.n_tokens, self.pool = int(n_tokens), (int(pool) if pool else None)
        p = self.pool or self.n_tokens
        if self.pool:
            side, pside = math.isqrt(self.n_tokens), math.isqrt(self.pool)
            if side * side != self.n_tokens or pside * pside != self.pool or self.pool > self.n_tokens:
                raise NRFError(f"pooling {self.n_tokens} tokens to {self.pool} needs two square token grids")
        self.lin = nn.Linear(channels, d)
        self.fuse = nn.Linear(p * d, merged_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.pool:
            b, p, c = x.shape
            side, pside = math.isqrt(p), math.isqrt(self.pool)
            grid = x.transpose(1, 2).reshape(b, c, side, side)
            x = nn.functional.adaptive_avg_pool2d(grid, pside).reshape(b, c, -1).transpose(1, 2)
        y = self.fuse(self.lin(x).flatten(1))
        return torch.tanh(y) if self.activation == "tanh" else y


@register
class NRF(EncodingModel):
    """The Neural Response Function: a continuous encoding model over MNI space.

    Parameters
    ----------
    token_maps : list of [name, n_tokens, channels, pool]
        Backbone token maps the merger reads, (B, n_tokens, channels) each; ``pool`` is
        the number of tokens after average pooling (square grids) or None.
    embedding : [name, dim] or None
        The pooled image embedding appended after the merged features.
    downsample_dim : int
        d, the per-token projection size (paper 128).
    merged_dim : int
        Output size of each map's fuse layer (paper 512).
    normalise_embedding : bool
        L2-normalise the appended embedding (the merged maps always are).
    n_fourier : int
        F, columns of the Fourier matrix B (3, F); gamma has 2F values (paper 32).
    fourier_std : float
        Standard deviation of B's entries (paper 32).
    fourier_seed : int
        Seed of B (paper 42). B is stored with the model, so the seed is only provenance.
    width, depth : int
        MLP hidden width and number of Linear layers (paper 4096 and 8).
    coord_offset, coord_size : 3 floats
        Coordinate normalisation ``u = (x + offset) / size`` (MNI mm), stored with the model.
    merger_activation : "tanh" or "identity"
        Applied after each fuse layer. The paper describes tanh; the public official code
        (haomiao8/NRF, ``Feature_merger.forward``) applies none, so checkpoints converted
        from it (:mod:`napari_nrf.models.official`) use "identity".
    """

    kind = "nrf"
    continuous = True

    def __init__(self, token_maps, embedding=None, downsample_dim: int = 16, merged_dim: int = 128,
                 normalise_embedding: bool = True, n_fourier: int = 32, fourier_std: float = 32.0,
                 fourier_seed: int = 42, width: int = 128, depth: int = 4,
                 coord_offset=tuple(NRF_COORD_OFFSET), coord_size=tuple(NRF_COORD_SIZE),
                 merger_activation: str = "tanh"):
        super().__init__()
        if merger_activation not in ("tanh", "identity"):
            raise NRFError(f"merger_activation must be 'tanh' or 'identity', got {merger_activation!r}")
        self.merger_activation = merger_activation
        if depth < 2:
            raise NRFError(f"depth counts Linear layers and must be >= 2, got {depth}")
        if not token_maps and not embedding:
            raise NRFError("NRF needs at least one token map or an embedding")
        self.token_maps = [[str(n), int(p), int(c), (int(q) if q else None)] for n, p, c, q in (token_maps or [])]
        self.embedding = [str(embedding[0]), int(embedding[1])] if embedding else None
        self.downsample_dim, self.merged_dim = int(downsample_dim), int(merged_dim)
        self.normalise_embedding = bool(normalise_embedding)
        self.n_fourier, self.fourier_std, self.fourier_seed = int(n_fourier), float(fourier_std), int(fourier_seed)
        self.width, self.depth = int(width), int(depth)
        self.merger = nn.ModuleDict({n: _TokenProjection(p, c, self.downsample_dim, self.merged_dim, q,
                                                         merger_activation)
                                     for n, p, c, q in self.token_maps})
        gen = torch.Generator().manual_seed(self.fourier_seed)
        self.register_buffer("fourier_B", torch.randn(3, self.n_fourier, generator=gen) * self.fourier_std)
        self.register_buffer("coord_offset", torch.tensor(coord_offset, dtype=torch.float32).reshape(3))
        self.register_buffer("coord_size", torch.tensor(coord_size, dtype=torch.float32).reshape(3))
        self.image_dim = len(self.token_maps) * self.merged_dim + (self.embedding[1] if self.embedding else 0)
        dims = [self.image_dim + 2 * self.n_fourier] + [self.width] * (self.depth - 1) + [1]
        self.layers = nn.ModuleList([nn.Linear(a, b) for a, b in zip(dims[:-1], dims[1:])])

    # ---- construction ------------------------------------------------------------------
    @property
    def feature_shapes(self) -> dict:
        shapes = {n: (p, c) for n, p, c, _ in self.token_maps}
        if self.embedding:
            shapes[self.embedding[0]] = (self.embedding[1],)
        return shapes

    @classmethod
    def example(cls, feature_shapes: dict, subjects: dict, backbone: str = "efficientnet-lite0", seed: int = 0,
                bases=None) -> "NRF":
        """A "tiny" preset NRF (see :func:`build_nrf`) that records ``subjects``' voxels."""
        model = build_nrf(backbone, "tiny", feature_shapes=feature_shapes, seed=seed)
        model.subjects = {s: np.asarray(x, np.float32) for s, x in subjects.items()}
        return model

    def config(self) -> dict:
        return {
            "token_maps": [list(t) for t in self.token_maps], "embedding": self.embedding,
            "downsample_dim": self.downsample_dim, "merged_dim": self.merged_dim,
            "normalise_embedding": self.normalise_embedding, "n_fourier": self.n_fourier,
            "fourier_std": self.fourier_std, "fourier_seed": self.fourier_seed,
            "width": self.width, "depth": self.depth,
            "coord_offset": [float(v) for v in self.coord_offset.tolist()],
            "coord_size": [float(v) for v in self.coord_size.tolist()],
            "merger_activation": self.merger_activation,
        }

    def bundle_metadata(self) -> dict:
        meta = super().bundle_metadata()
        meta["fourier"] = {"tensor": "fourier_B", "n_features": self.n_fourier, "std": self.fourier_std,
                           "seed": self.fourier_seed}
        meta["coord_normalisation"] = {"formula": "u = (x_mni_mm + offset) / size",
                                       "offset": self.config()["coord_offset"], "size": self.config()["coord_size"]}
        return meta

    @property
    def n_params(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def flops_per_point(self, engine: bool = True) -> float:
        """Floating-point operations per (image, point): 2 x multiply-adds of the MLP.

        ``engine=True`` counts what the query engine does per point (the image half of
        the first layer is paid once per image, not per point).
        """
        first_in = (2 * self.n_fourier) if engine else (self.image_dim + 2 * self.n_fourier)
        macs = first_in * self.width + (self.depth - 2) * self.width ** 2 + self.width
        return 2.0 * macs

    # ---- the field ---------------------------------------------------------------------
    def image_code(self, features: dict) -> torch.Tensor:
        """G(image): (B, image_dim) float32 from backbone ``features`` (dict name -> (B, ...))."""
        dev = self.fourier_B.device
        parts = []
        for name, p, c, _ in self.token_maps:
            x = self._feature(features, name, dev)
            if x.ndim != 3 or tuple(x.shape[1:]) != (p, c):
                raise NRFError(f"feature {name!r} has shape {tuple(x.shape[1:])}, the model expects {(p, c)}")
            parts.append(self.merger[name](x))
        code = []
        if parts:
            code.append(nn.functional.normalize(torch.cat(parts, dim=1), dim=1))
        if self.embedding:
            name, dim = self.embedding
            e = self._feature(features, name, dev)
            if e.ndim != 2 or e.shape[1] != dim:
                raise NRFError(f"feature {name!r} has shape {tuple(e.shape[1:])}, the model expects ({dim},)")
            code.append(nn.functional.normalize(e, dim=1) if self.normalise_embedding else e)
        return torch.cat(code, dim=1)

    def _feature(self, features, name, dev):
        if name not in features:
            raise NRFError(f"features lack {name!r} (have {', '.join(features)}); were they computed with "
                           f"backbone {self.backbone_name!r}?")
        return torch.as_tensor(features[name]).to(dev, torch.float32)

    def fourier(self, coords) -> torch.Tensor:
        """gamma(x): (N, 2F) from MNI points ``coords`` (N, 3) mm (array or tensor)."""
        x = torch.as_tensor(coords, dtype=torch.float32, device=self.fourier_B.device)
        if x.ndim != 2 or x.shape[1] != 3:
            raise NRFError(f"coords must be (N, 3) MNI mm, got shape {tuple(x.shape)}")
        # Always fp32, also under autocast: the phases reach ~100 rad, where bf16's 8-bit
        # mantissa is off by ~0.5 rad (voxelwise r against fp32 fell to 0.98 on the demo model).
        with torch.autocast(x.device.type, enabled=False):
            proj = ((x + self.coord_offset) / self.coord_size) @ self.fourier_B
            return torch.cat([torch.sin(proj), torch.cos(proj)], dim=1)

    def image_half(self, code: torch.Tensor) -> torch.Tensor:
        """First-layer pre-activation from the image: ``W0_g g + b0``, (B, width)."""
        w = self.layers[0].weight
        return nn.functional.linear(code, w[:, :self.image_dim], self.layers[0].bias)

    def coord_half(self, coords) -> torch.Tensor:
        """First-layer pre-activation from the coordinates: ``W0_c gamma(x)``, (N, width)."""
        return self.fourier(coords) @ self.layers[0].weight[:, self.image_dim:].T

    def head(self, h_img: torch.Tensor, h_xyz: torch.Tensor) -> torch.Tensor:
        """Responses (B, N) from the two halves of the first layer (B, W) and (N, W)."""
        h = torch.relu(h_img[:, None, :] + h_xyz[None, :, :])
        for lin in self.layers[1:-1]:
            h = torch.relu(lin(h))
        return self.layers[-1](h)[..., 0]

    def predict(self, features: dict, coords=None, voxels=None, subject: str | None = None) -> torch.Tensor:
        """Responses (B, N) float32 of B images at MNI points ``coords`` (N, 3) mm.

        Instead of ``coords``, ``voxels`` (N,) indexes the stored coordinates of ``subject``
        (the voxels the model was trained on). The field itself is the same for every subject.
        """
        if coords is None:
            coords = self.subject_coords(subject, voxels)
        elif voxels is not None:
            raise NRFError("pass coords or voxels, not both")
        return self.head(self.image_half(self.image_code(features)), self.coord_half(coords))

    # ---- the fast query (see napari_nrf.models.base: query_*) -------------------------
    def query_images(self, features: dict) -> dict:
        """The image half of the first layer (B, width), once per query."""
        return {"h_img": self.image_half(self.image_code(features)), "buffers": []}

    def query_points(self, coords) -> torch.Tensor:
        """The coordinate half of the first layer (n, width), once per grid."""
        return self.coord_half(coords)

    def query_predict(self, state: dict, h_xyz: torch.Tensor) -> torch.Tensor:
        """Responses (B, n) from the two halves of the first layer."""
        # the buffered fp32 path; under CPU bf16 autocast (napari_nrf.precision) use head
        if (h_xyz.device.type == "cpu" and not torch.is_grad_enabled()
                and not torch.is_autocast_enabled("cpu")):
            return self._cpu_head(state["h_img"], h_xyz, state["buffers"])
        return self.head(state["h_img"], h_xyz).float()

    def query_bytes_per_point(self, n_images: int) -> int:
        # the CPU path runs one image at a time through preallocated buffers
        return 4 * self.width * (1 if self.device.type == "cpu" else max(1, n_images))

    def _cpu_head(self, h_img: torch.Tensor, h_xyz: torch.Tensor, bufs: list) -> torch.Tensor:
        """:meth:`head` for the CPU: one image at a time through two reused buffers.

        Same arithmetic as :meth:`head`; avoiding the (B, n, W) temporaries and the
        allocator is worth about 1.4x on a small MLP.
        """
        n, w = h_xyz.shape
        if not bufs or bufs[0].shape[0] < n:
            bufs[:] = [torch.empty(n, w), torch.empty(n, w)]
        a, b = bufs[0][:n], bufs[1][:n]
        out = torch.empty(h_img.shape[0], n)
        wts = [(lin.weight.T, lin.bias) for lin in self.layers[1:-1]]
        w_last, b_last = self.layers[-1].weight[0], self.layers[-1].bias[0]
        for i in range(h_img.shape[0]):
            h = torch.add(h_xyz, h_img[i], out=a).relu_()
            for j, (wt, bias) in enumerate(wts):
                o = b if j % 2 == 0 else a
                torch.addmm(bias, h, wt, out=o).relu_()
                h = o
            torch.mv(h, w_last, out=out[i]).add_(b_last)
        return out

    def predict_reference(self, features: dict, coords) -> torch.Tensor:
        """The straightforward implementation, (B, N): concatenate the image code and the
        Fourier code of every (image, point) pair and run the whole MLP on it.

        Same result as :meth:`predict`; kept as the reference for tests and benchmarks.
        """
        code = self.image_code(features)
        gam = self.fourier(coords)
        b, n = code.shape[0], gam.shape[0]
        x = torch.cat([code[:, None, :].expand(b, n, -1), gam[None].expand(b, n, -1)], dim=-1)
        for lin in self.layers[:-1]:
            x = torch.relu(lin(x))
        return self.layers[-1](x)[..., 0]

    def subject_coords(self, subject: str | None, voxels=None) -> np.ndarray:
        """MNI coordinates (N, 3) float32 of ``voxels`` of a subject the model was trained on."""
        if not self.subjects:
            raise NRFError("this model stores no subject voxels; pass coords=")
        if subject is None:
            if len(self.subjects) > 1:
                raise NRFError(f"several subjects in the model; pass subject= one of {sorted(self.subjects)}")
            subject = next(iter(self.subjects))
        if subject not in self.subjects:
            raise NRFError(f"unknown subject {subject!r}; the model has {sorted(self.subjects)}")
        xyz = np.asarray(self.subjects[subject], np.float32)
        if voxels is None:
            return xyz
        v = voxels.cpu().numpy() if torch.is_tensor(voxels) else np.asarray(voxels)
        return xyz[v]


def he_init(model: NRF, out_gain: float = 0.1) -> None:
    """He-normal initialisation of the MLP ``P`` for its actual inputs (in place).

    PyTorch's default Linear init (uniform, std 1/sqrt(3 fan_in)) shrinks the signal by
    about 0.4 at each ReLU layer and the first layer sees an input whose image half is two
    unit vectors spread over ~1700 entries: a fresh demo NRF outputs ~1e-3, and AdamW at
    lr 1e-3 needs thousands of steps to grow the weights to the units of z-scored
    responses while the scale-free Pearson r already looks good. Here:

    * first layer: std sqrt(2 / E|x|^2), with |x|^2 = |G|^2 + F (the image code's unit
      vectors, one per normalised part, plus F sin^2 + cos^2 pairs), so pre-activations
      have unit variance whatever the image dimension;
    * hidden layers: He-normal (std sqrt(2 / fan_in)), zero biases;
    * last layer: std ``out_gain / sqrt(width)``: outputs start at about 0.1, image- and
      position-dependent but small, so MSE does not first have to unlearn random O(1) maps.
    """
    parts = (1.0 if model.token_maps else 0.0) + (1.0 if model.embedding and model.normalise_embedding else 0.0)
    raw = model.embedding[1] if model.embedding and not model.normalise_embedding else 0
    sq = parts + raw + model.n_fourier  # raw embedding entries counted as O(1) each
    with torch.no_grad():
        first = model.layers[0]
        nn.init.normal_(first.weight, std=math.sqrt(2.0 / sq))
        nn.init.zeros_(first.bias)
        for lin in model.layers[1:-1]:
            nn.init.kaiming_normal_(lin.weight, nonlinearity="relu")
            nn.init.zeros_(lin.bias)
        last = model.layers[-1]
        nn.init.normal_(last.weight, std=out_gain / math.sqrt(last.in_features))
        nn.init.zeros_(last.bias)


def build_nrf(backbone: str = "efficientnet-lite0", preset: str = "demo", feature_shapes: dict | None = None,
              token_maps: dict | None = None, embedding: str | None = "embedding", backbone_config: dict | None = None,
              seed: int | None = 0, init: str = "he", **overrides) -> NRF:
    """A new NRF for ``backbone`` with a size ``preset`` ("paper", "demo", "tiny") and overrides.

    Parameters
    ----------
    backbone : str
        A name of :data:`napari_nrf.features.BACKBONES`.
    feature_shapes : dict or None
        name -> shape without batch (default: the backbone class's ``feature_shapes``).
    token_maps : dict name -> pooled token count or None
        Maps the merger reads (default :data:`DEFAULT_TOKEN_MAPS`, else every 2-D feature).
    embedding : str or None
        The pooled feature appended to the merged code (None: none).
    seed : int or None
        Seed of the weight initialisation (the Fourier matrix has its own ``fourier_seed``).
    init : "he" or "default"
        "he" (default, :func:`he_init`): the MLP starts with outputs of the order of
        z-scored responses; "default": PyTorch's Linear initialisation, whose outputs start
        about 1e-3 and take thousands of steps to reach the data's units.
    overrides
        Any :class:`NRF` argument (width, depth, downsample_dim, merged_dim, n_fourier, ...).
    """
    from napari_nrf.features import BACKBONES

    if preset not in PRESETS:
        raise NRFError(f"unknown preset {preset!r}; choose one of {sorted(PRESETS)}")
    if feature_shapes is None:
        if backbone not in BACKBONES:
            raise NRFError(f"unknown backbone {backbone!r}; available: {', '.join(sorted(BACKBONES))}")
        # Instance-level shapes (CLIP: depend on the config) fall back to the paper's sizes.
        feature_shapes = dict(BACKBONES[backbone].feature_shapes) or dict(_DEFAULT_SHAPES.get(backbone, {}))
    if token_maps is None:
        token_maps = DEFAULT_TOKEN_MAPS.get(backbone) or {n: None for n, s in feature_shapes.items() if len(s) == 2}
    maps = []
    for name, pool in token_maps.items():
        if name not in feature_shapes or len(feature_shapes[name]) != 2:
            raise NRFError(f"{name!r} is not a token map of {backbone!r} (have {', '.join(feature_shapes)})")
        p, c = feature_shapes[name]
        maps.append([name, p, c, pool if pool and pool < p else None])
    emb = None
    if embedding:
        if embedding not in feature_shapes or len(feature_shapes[embedding]) != 1:
            raise NRFError(f"{embedding!r} is not a pooled feature of {backbone!r}")
        emb = [embedding, int(feature_shapes[embedding][0])]
    cfg = dict(PRESETS[preset])
    cfg.update(overrides)
    if init not in ("he", "default"):
        raise NRFError(f"init must be 'he' or 'default', got {init!r}")
    if seed is not None:
        torch.manual_seed(seed)
    model = NRF(maps, emb, **cfg)
    if init == "he":
        he_init(model)
    model.backbone_name = backbone
    model.backbone_config = dict(backbone_config or {})
    return model
