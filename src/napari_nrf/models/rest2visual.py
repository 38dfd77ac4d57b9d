"""Rest2Visual (arXiv 2509.13612): a subject's rest map + an image -> evoked volume.

``f(z, v) = D(E_vol(z), E_img(v))`` (paper eq. 5):

``E_img``
    The frozen backbone's pooled ``embedding`` (B, D) -> a small MLP -> a condition
    vector (B, cond_dim).
``E_vol``
    A multiscale 3D convolutional encoder over the subject's seed-based rest map
    (1, X, Y, Z) on the model's grid: per scale two 3x3x3 convolutions with GroupNorm and
    SiLU, a stride-2 convolution between scales (features at every scale are kept as
    skips). It runs once per subject, not per image.
``D``
    A 3D decoder from the coarsest scale up, with the encoder's skip at each scale and
    **adaptive group normalisation** at every scale, ``(1 + gamma(e)) GroupNorm(h) +
    beta(e)`` with ``gamma, beta`` linear in the condition vector (zero-initialised, so
    training starts from the plain network), and a 1x1x1 output convolution: one
    response volume per image on the model's grid.

Loss: plain MSE over the subject's brain voxels (eq. 6). The paper gives neither
channels, scales, the AdaGN form nor the grid; ours are in :data:`PRESETS`.

The contract: the model is a field in the sense of the query engine (``continuous``):
``predict(coords=, subject=)`` computes the subject's volume on the model grid and reads
it at any MNI points by trilinear interpolation; ``voxels=`` are the subject's training
voxels. It is ``conditioned`` on the subject (each subject's rest map, kept in the model
and in its bundle): :meth:`add_subject` adds a new person from a rest map alone, with no
training. The paper's ablations are a config switch: ``ablate="stimulus"`` (ns-stim)
or ``"rest"`` (ns-fmri) feed Gaussian noise in place of that input.
"""

from __future__ import annotations

from contextlib import contextmanager

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from napari_nrf import space
from napari_nrf.errors import NapariNRFError

from .base import EncodingModel, register


#: The pseudo-subject whose rest map is the mean of the model's subjects' maps: the model's
#: stimulus-only reference (what it predicts for a person with the population's connectivity).
POPULATION = "population (mean rest map)"


class Rest2VisualError(NapariNRFError):
    """Bad input to a Rest2Visual model (unknown subject, rest map on no grid, ...)."""


#: Sizes: model grid resolution (mm) and channels per scale (the number of scales).
PRESETS = {
    "tiny": {"resolution": 8.0, "channels": [4, 8, 16], "cond_dim": 16, "groups": 2, "coord_channels": True},
    "demo": {"resolution": 4.0, "channels": [8, 16, 32, 32], "cond_dim": 64, "groups": 4, "coord_channels": True},
    "paper": {"resolution": 2.0, "channels": [32, 64, 128, 256], "cond_dim": 256, "groups": 8,
              "coord_channels": True},
}


def _gn(c: int, groups: int) -> nn.GroupNorm:
    return nn.GroupNorm(min(groups, c), c)


class _Block(nn.Module):
    """conv-GN-SiLU-conv-GN-SiLU (encoder)."""

    def __init__(self, cin: int, cout: int, groups: int):
        super().__init__()
        self.c1, self.n1 = nn.Conv3d(cin, cout, 3, padding=1), _gn(cout, groups)
        self.c2, self.n2 = nn.Conv3d(cout, cout, 3, padding=1), _gn(cout, groups)

    def forward(self, x):
        x = F.silu(self.n1(self.c1(x)))
        return F.silu(self.n2(self.c2(x)))


class _AdaBlock(nn.Module):
    """conv-AdaGN-SiLU (decoder): ``(1 + gamma(e)) GN(h) + beta(e)``."""

    def __init__(self, cin: int, cout: int, cond_dim: int, groups: int):
        super().__init__()
        self.conv = nn.Conv3d(cin, cout, 3, padding=1)
        self.norm = nn.GroupNorm(min(groups, cout), cout, affine=False)
        self.film = nn.Linear(cond_dim, 2 * cout)
        nn.init.zeros_(self.film.weight)
        nn.init.zeros_(self.film.bias)

    def forward(self, x, e):
        h = self.norm(self.conv(x))
        g, b = self.film(e).chunk(2, dim=1)
        return F.silu(h * (1 + g[:, :, None, None, None]) + b[:, :, None, None, None])


@register
class Rest2Visual(EncodingModel):
    """The conditional 3D encoder-decoder (see the module doc).

    Parameters
    ----------
    grid_shape, grid_origin, grid_zooms : the model grid (MNI mm, RAS+)
    embed_dim : size of the backbone's pooled ``feature`` (1280 for efficientnet-lite0)
    channels : channels per scale (len = number of scales)
    cond_dim, groups : condition vector size, GroupNorm groups
    ablate : "none", "stimulus" (ns-stim) or "rest" (ns-fmri): Gaussian noise in place of that input
    coord_channels : feed the encoder the grid's three coordinates (each in [-1, 1]) next to
        the rest map. A convolution is blind to where it is; a response map is not (retinotopy,
        area tuning), so without them every position must be read off the rest map's own
        pattern. False (the default of bundles saved before the option) is the plain rest map.
    """

    kind = "rest2visual"
    concurrent_fits = False  # dropout / random draws from torch's global generator
    continuous = True
    conditioned = True
    pseudo_subjects = (POPULATION,)  # answers for these too (the stimulus-only reference)

    def __init__(self, grid_shape, grid_origin, grid_zooms, embed_dim: int = 1280, feature: str = "embedding",
                 channels=(8, 16, 32), cond_dim: int = 64, groups: int = 4, ablate: str = "none",
                 coord_channels: bool = False):
        super().__init__()
        if ablate not in ("none", "stimulus", "rest"):
            raise Rest2VisualError(f"ablate must be 'none', 'stimulus' or 'rest', got {ablate!r}")
        self.grid = space.Grid(tuple(int(s) for s in grid_shape), np.asarray(grid_origin, float),
                               np.asarray(grid_zooms, float))
        self.embed_dim, self.feature = int(embed_dim), str(feature)
        self.channels = [int(c) for c in channels]
        self.cond_dim, self.groups, self.ablate = int(cond_dim), int(groups), str(ablate)
        self.coord_channels = bool(coord_channels)
        ch = self.channels
        cin = 4 if self.coord_channels else 1
        self.img_mlp = nn.Sequential(nn.Linear(self.embed_dim, 2 * self.cond_dim), nn.SiLU(),
                                     nn.Linear(2 * self.cond_dim, self.cond_dim), nn.SiLU())
        self.enc = nn.ModuleList([_Block(cin if i == 0 else ch[i], ch[i], self.groups) for i in range(len(ch))])
        self.down = nn.ModuleList([nn.Conv3d(ch[i], ch[i + 1], 3, stride=2, padding=1) for i in range(len(ch) - 1)])
        self.bottom = _AdaBlock(ch[-1], ch[-1], self.cond_dim, self.groups)
        self.up = nn.ModuleList([_AdaBlock(ch[i + 1] + ch[i], ch[i], self.cond_dim, self.groups)
                                 for i in range(len(ch) - 1)])
        self.head = nn.Conv3d(ch[0], 1, 1)
        self.rest_maps: dict[str, torch.Tensor] = {}  # subject -> (S, X, Y, Z) float32 on self.grid
        self._enc_cache: dict = {}

    # ---- construction -------------------------------------------------------------------
    @classmethod
    def example(cls, feature_shapes, subjects, backbone="efficientnet-lite0", seed=0, bases=None):
        """A "tiny" model whose subjects get smooth random rest maps (the battery's input)."""
        model = build_rest2visual(backbone, "tiny", feature_shapes=feature_shapes, seed=seed)
        rng = np.random.default_rng([seed, 4])
        g = model.grid
        for k, (s, xyz) in enumerate(subjects.items()):
            from scipy.ndimage import gaussian_filter

            m = gaussian_filter(rng.standard_normal(g.shape), 1.0).astype(np.float32)
            model.add_subject(s, m / (m.std() + 1e-6), g, coords=xyz)
        return model

    def config(self) -> dict:
        return {"grid_shape": list(self.grid.shape), "grid_origin": [float(v) for v in self.grid.origin],
                "grid_zooms": [float(v) for v in self.grid.zooms], "embed_dim": self.embed_dim,
                "feature": self.feature, "channels": list(self.channels), "cond_dim": self.cond_dim,
                "groups": self.groups, "ablate": self.ablate, "coord_channels": self.coord_channels}

    # The encoder features of the last subject are cached for inference only: any change
    # of mode or weights drops them (fit validates in eval mode between training steps).
    def train(self, mode: bool = True):
        self._enc_cache = {}
        return super().train(mode)

    def load_state_dict(self, *args, **kwargs):
        self._enc_cache = {}
        return super().load_state_dict(*args, **kwargs)

    def query_bytes_per_point(self, n_images: int) -> int:
        return 4 * max(1, n_images)

    # ---- subjects -----------------------------------------------------------------------
    def add_subject(self, name: str, maps, grid: space.Grid, coords=None) -> None:
        """Add (or replace) subject ``name`` by its rest map(s): (X, Y, Z) or (S, X, Y, Z)
        float on MNI ``grid`` (resampled onto the model grid, 0 outside). ``coords``: the
        subject's voxels (V, 3) MNI mm, when it has measured ones (default: none)."""
        maps = np.asarray(maps, np.float32)
        if maps.ndim == 3:
            maps = maps[None]
        if maps.ndim != 4 or maps.shape[1:] != tuple(grid.shape):
            raise Rest2VisualError(f"rest maps of {name!r}: expected (S, {grid.shape}) on its grid, got {maps.shape}")
        maps = np.nan_to_num(maps, nan=0.0, posinf=0.0, neginf=0.0)
        if grid != self.grid:
            maps = np.stack([space.resample(m, grid, self.grid, order=1, cval=0.0) for m in maps])
        self.rest_maps[str(name)] = torch.from_numpy(np.ascontiguousarray(maps, np.float32))
        self.subjects[str(name)] = (np.zeros((0, 3), np.float32) if coords is None
                                    else np.asarray(coords, np.float32).reshape(-1, 3))
        self._enc_cache.clear()

    def _subject(self, subject) -> str:
        if subject == POPULATION and self.rest_maps:
            return subject
        if subject is None:
            if not self.rest_maps:
                raise Rest2VisualError("this Rest2Visual model has no subject: add one with add_subject(name, rest_map, grid)")
            return next(iter(self.rest_maps))
        if subject not in self.rest_maps:
            raise Rest2VisualError(f"unknown subject {subject!r}; the model has rest maps of {sorted(self.rest_maps)} "
                                   "(a new person: add_subject with their rest map)")
        return subject

    def rest_input(self, subject: str, session: int | None = None) -> torch.Tensor:
        """(1, 1, X, Y, Z) rest map of ``subject`` on the model grid: its mean over sessions,
        or one ``session``; noise for the ns-fmri ablation."""
        if subject == POPULATION:
            m = torch.stack([v.mean(0) for v in self.rest_maps.values()]).mean(0)
        else:
            m = self.rest_maps[subject]
            m = m.mean(0) if session is None else m[int(session) % len(m)]
        m = m.to(self.device)[None, None]
        if self.ablate == "rest":
            m = torch.randn_like(m)
        return m

    # ---- the network --------------------------------------------------------------------
    def _pad(self) -> list[int]:
        f = 2 ** (len(self.channels) - 1)
        return [(-s) % f for s in self.grid.shape]

    def encode(self, rest: torch.Tensor) -> list[torch.Tensor]:
        """Multiscale features of a (1, 1, X, Y, Z) rest map (padded to a multiple of 2^scales)."""
        px, py, pz = self._pad()
        if self.coord_channels:
            axes = [torch.linspace(-1, 1, n, device=rest.device) for n in self.grid.shape]
            pos = torch.stack(torch.meshgrid(*axes, indexing="ij"))[None].expand(len(rest), -1, -1, -1, -1)
            rest = torch.cat([rest, pos.to(rest.dtype)], 1)
        h = F.pad(rest, (0, pz, 0, py, 0, px))
        feats = []
        for i, blk in enumerate(self.enc):
            h = blk(h)
            feats.append(h)
            if i < len(self.down):
                h = F.silu(self.down[i](h))
        return feats

    def condition(self, features: dict) -> torch.Tensor:
        e = torch.as_tensor(features[self.feature]).to(self.device, torch.float32)
        e = e.reshape(len(e), -1)
        if e.shape[1] != self.embed_dim:
            raise Rest2VisualError(f"feature {self.feature!r} has {e.shape[1]} values per image; the model expects "
                                   f"{self.embed_dim}")
        if self.ablate == "stimulus":
            e = torch.randn_like(e)
        return self.img_mlp(e)

    def decode(self, feats: list[torch.Tensor], cond: torch.Tensor) -> torch.Tensor:
        """Volumes (B, X, Y, Z) from encoder features (batch 1) and conditions (B, cond_dim)."""
        b = len(cond)
        h = self.bottom(feats[-1].expand(b, -1, -1, -1, -1), cond)
        for i in reversed(range(len(self.up))):
            skip = feats[i]
            h = F.interpolate(h, size=skip.shape[2:], mode="trilinear", align_corners=False)
            h = self.up[i](torch.cat([h, skip.expand(b, -1, -1, -1, -1)], 1), cond)
        out = self.head(h)[:, 0]
        x, y, z = self.grid.shape
        return out[:, :x, :y, :z]

    def volume(self, features: dict, subject: str | None = None, session: int | None = None) -> torch.Tensor:
        """Predicted volumes (B, X, Y, Z) float32 on the model grid for ``subject``."""
        s = self._subject(subject)
        key = (s, session)
        if not self.training and self.ablate != "rest" and key in self._enc_cache:
            feats = self._enc_cache[key]
        else:
            feats = self.encode(self.rest_input(s, session))
            if not self.training and not torch.is_grad_enabled():
                self._enc_cache = {key: feats}  # one subject's features (inference)
        return self.decode(feats, self.condition(features))

    def sample(self, vol: torch.Tensor, coords) -> torch.Tensor:
        """Trilinear samples (B, N) of volumes (B, X, Y, Z) at MNI points (N, 3) mm (0 outside)."""
        return self._sample_normalised(vol, self._normalised(coords))

    def _normalised(self, coords) -> torch.Tensor:
        """MNI points (N, 3) mm -> grid_sample's normalised (N, 3) float32 coordinates, in
        its (W, H, D) = (Z, Y, X) order of our (X, Y, Z) volumes."""
        xyz = torch.as_tensor(np.asarray(coords.cpu() if torch.is_tensor(coords) else coords, np.float32))
        ijk = (xyz.double() - torch.from_numpy(self.grid.origin)) / torch.from_numpy(self.grid.zooms)
        size = torch.tensor(self.grid.shape, dtype=torch.float64)
        return (2 * ijk / (size - 1).clamp_min(1) - 1).float()[:, [2, 1, 0]].contiguous()

    def _sample_normalised(self, vol: torch.Tensor, norm: torch.Tensor) -> torch.Tensor:
        g = norm.to(vol.device).reshape(1, 1, 1, -1, 3).expand(len(vol), -1, -1, -1, -1)
        out = F.grid_sample(vol[:, None], g, mode="bilinear", padding_mode="zeros", align_corners=True)
        return out.reshape(len(vol), -1)

    def _points(self, s: str, coords=None, voxels=None):
        """The MNI points asked for: ``coords``, or subject ``s``'s measured ``voxels``."""
        if coords is not None:
            return coords
        xyz = self.subjects.get(s) if s != POPULATION else None
        if xyz is None or len(xyz) == 0:
            raise self.unsupported(f"voxel indices of subject {s!r}, who has no measured voxels",
                                   "ask at MNI points (predict(coords=)) or for a volume")
        return xyz if voxels is None else xyz[np.asarray(voxels.cpu() if torch.is_tensor(voxels) else voxels)]

    def predict(self, features, coords=None, voxels=None, subject=None):
        s = self._subject(subject)
        return self.sample(self.volume(features, s), self._points(s, coords, voxels))

    def describe_subject(self, subject: str) -> str:
        n = len(self.subjects[subject])
        if subject in self.rest_maps:  # a subject is a rest map (with or without measured voxels)
            return f"rest map ({len(self.rest_maps[subject])} session(s)), {n} voxels"
        return f"{n} voxels"

    def train_predict(self, features, subject, voxels, coords):
        # a random session's map per step (the paper draws (rest, stimulus, response) triplets)
        n = len(self.rest_maps[subject])
        ses = int(torch.randint(n, ()).item()) if (self.training and n > 1) else None
        return self.sample(self.volume(features, subject, session=ses), coords)

    def loss(self, pred, true, alpha):
        """Plain MSE over the sampled brain voxels (paper eq. 6; ``alpha`` unused)."""
        return torch.mean((pred - true) ** 2)

    # ---- fast query: the volume once per query, points by interpolation -------------------
    def query_images(self, features, subject=None):
        with _mkldnn_convs(self):
            return self.volume(features, subject)

    def query_points(self, coords):
        # the per-grid state: normalised sampling coordinates (the engine caches them per grid)
        return self._normalised(coords)

    def query_predict(self, state, points):
        return self._sample_normalised(state, points)

    # ---- bundles ------------------------------------------------------------------------
    def bundle_tensors(self) -> dict:
        t = super().bundle_tensors()
        for s, m in self.rest_maps.items():
            t[f"rest_maps.{s}"] = m.detach().cpu().contiguous()
        return t

    def bundle_metadata(self) -> dict:
        meta = super().bundle_metadata()
        meta["rest_maps"] = {s: {"tensor": f"rest_maps.{s}", "sessions": int(len(m))} for s, m in self.rest_maps.items()}
        return meta

    @classmethod
    def from_bundle(cls, tensors: dict, meta: dict) -> "Rest2Visual":
        from .bundle import BundleError

        rest = {k: v for k, v in tensors.items() if k.startswith("rest_maps.")}
        model = super().from_bundle({k: v for k, v in tensors.items() if k not in rest}, meta)
        info = meta.get("rest_maps") or {}
        if not isinstance(info, dict):
            raise BundleError("metadata field 'rest_maps' is not an object")
        for s, d in info.items():
            key = d.get("tensor") if isinstance(d, dict) else None
            if key not in rest:
                raise BundleError(f"metadata field 'rest_maps.{s}.tensor' names {key!r}, which is not in the file")
            m = rest[key].float()
            if m.ndim != 4 or tuple(m.shape[1:]) != model.grid.shape or not bool(torch.isfinite(m).all()):
                raise BundleError(f"tensor {key}: a rest map stack must be finite (S, {model.grid.shape}), "
                                  f"got {tuple(m.shape)}")
            model.rest_maps[s] = m.contiguous()
            model.subjects.setdefault(s, np.zeros((0, 3), np.float32))
        return model


@contextmanager
def _mkldnn_convs(model: nn.Module):
    """Inference only (no grad, eval, CPU float32): the model's Conv3d layers call oneDNN's
    convolution directly. PyTorch's backend choice sends a batch-1 conv3d with few channels
    (8 channels on the demo's 40 x 48 x 40 grid) to its slow im2col kernel, 4x slower there
    than oneDNN's; the result is the same convolution (to float rounding). Anything else
    (training, autograd, GPU, autocast, other dtypes) runs the layers unchanged."""
    if (torch.is_grad_enabled() or model.training or not torch.backends.mkldnn.is_available()
            or next(model.parameters()).device.type != "cpu"):
        yield
        return
    patched = []

    def make(conv):
        def forward(x, weight, bias):
            if (x.dtype != torch.float32 or weight.dtype != torch.float32 or x.device.type != "cpu"
                    or conv.padding_mode != "zeros" or isinstance(conv.padding, str)
                    or torch.is_autocast_enabled("cpu")):
                return F.conv3d(x, weight, bias, conv.stride, conv.padding, conv.dilation, conv.groups)
            return torch.ops.aten.mkldnn_convolution(x.contiguous(), weight, bias, list(conv.padding),
                                                      list(conv.stride), list(conv.dilation), conv.groups)
        return forward

    try:
        for m in model.modules():
            if isinstance(m, nn.Conv3d):
                m._conv_forward = make(m)  # an instance attribute shadows Conv3d._conv_forward
                patched.append(m)
        yield
    finally:
        for m in patched:
            del m._conv_forward


def model_grid(resolution: float, extent_min=None, extent_max=None) -> space.Grid:
    """The model grid: the MNI152 brain's bounding box (or a given box) at ``resolution`` mm."""
    if extent_min is None:
        extent_min, extent_max = [-72.0, -108.0, -60.0], [72.0, 76.0, 84.0]
    return space.Grid.from_extent(resolution, extent_min, extent_max)


def build_rest2visual(backbone: str = "efficientnet-lite0", preset: str = "demo", feature_shapes: dict | None = None,
                      feature: str = "embedding", extent=None, seed: int | None = 0, **overrides) -> Rest2Visual:
    """A new Rest2Visual model of size ``preset`` ("tiny", "demo", "paper") for ``backbone``.

    ``extent``: (min, max) MNI mm box of the model grid (default: the brain's bounding
    box); ``overrides``: ``resolution``, ``channels``, ``cond_dim``, ``groups``, ``ablate``.
    """
    if preset not in PRESETS:
        raise Rest2VisualError(f"unknown preset {preset!r}; choose one of {sorted(PRESETS)}")
    cfg = {**PRESETS[preset], **overrides}
    if feature_shapes is None:
        from napari_nrf.features import BACKBONES

        feature_shapes = dict(getattr(BACKBONES.get(backbone), "feature_shapes", {}) or {})
    shape = feature_shapes.get(feature)
    if shape is None:
        raise Rest2VisualError(f"backbone {backbone!r} has no pooled feature {feature!r}")
    lo, hi = (None, None) if extent is None else extent
    res = float(cfg.pop("resolution"))
    if not (np.isfinite(res) and res > 0):
        raise Rest2VisualError(f"resolution {res:g} mm: must be a positive number of mm")
    g = model_grid(res, lo, hi)
    from napari_nrf.guards import check_size

    # Activations of the first scale dominate: each channel is a float32 volume on the
    # model grid, kept for the backward pass (x 4: forward, backward, the skip and its norm).
    chans = list(cfg.get("channels") or [8])
    check_size(int(np.prod(g.shape)) * 4 * 4 * (sum(chans) + 4), f"resolution {res:g} mm (a {g.shape} model grid)")
    if seed is not None:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(int(seed))
            model = Rest2Visual(g.shape, g.origin, g.zooms, embed_dim=int(np.prod(shape)), feature=feature, **cfg)
    else:
        model = Rest2Visual(g.shape, g.origin, g.zooms, embed_dim=int(np.prod(shape)), feature=feature, **cfg)
    model.backbone_name = backbone
    model.provenance["preset"] = preset
    return model


def subject_from_rest_map(model, path) -> str:
    """Add the person of rest map NIfTI ``path`` to ``model`` (no training); their name."""
    from napari_nrf.data.restmap import load_rest_map

    if not isinstance(model, Rest2Visual):
        raise Rest2VisualError(f"--rest-map: the model is of kind {model.kind!r}, which takes no "
                               "rest map (a Rest2Visual model does)")
    vol, g = load_rest_map(path)
    name = "rest:" + space.nifti_stem(path)
    model.add_subject(name, vol, g)
    return name
