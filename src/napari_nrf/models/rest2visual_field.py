"""Rest2Visual as a shared image field plus an individual term read from the rest map.

Kind ``rest2visual-field``, the default of ``train-rest2visual``. Measured on virtual
subjects, the paper's U-Net (:mod:`napari_nrf.models.rest2visual`, kind ``rest2visual``)
scored below the image-only NRF; this design starts from the NRF and adds the person on top:

``f_s(image, x) = NRF_head( W_img g(image) + W_xyz gamma(x) + W_rest rho_s(x) )``

``NRF``
    The image-only Neural Response Function (:class:`napari_nrf.models.nrf.NRF`, any of
    its presets) as the trunk: image code ``g``, Fourier features ``gamma(x)`` of the
    MNI point, an MLP. Alone (``rho = 0``) the model *is* that NRF.
``rho_s(x)``
    Local rest features of subject ``s`` at the query point, at two scales: the
    subject's rest map (mean over sessions) minus the population's reference map (the
    mean of the training subjects' maps, kept in the model), read by trilinear
    interpolation at ``x`` and at its six neighbours ``x +- r e_i``, once unsmoothed with
    ``r = stencil_mm[0]`` and once smoothed (Gaussian, sd ``smooth_mm``) with
    ``r = stencil_mm[1]``: 14 values per point. ``rho`` is 0 for the population, so the
    population pseudo-subject is the shared field itself.
``W_rest``
    A linear map of ``rho`` into the first layer's pre-activation, **zero-initialised**:
    training starts exactly at the image-only field (plus a small ``displacement`` head,
    also zero-initialised, that moves the field's coordinates ``x -> x - dx_s(x)``
    with ``dx`` an MLP of ``rho`` and ``gamma(x)``).

A new person needs only a rest map (:meth:`add_subject`, no training): their features
are interpolated from it. The model is continuous (any MNI point, any resolution) and
``conditioned`` on the subject through the model contract (``predict(coords=,
subject=)``, ``query_images(features, subject=)``). Rest maps, subjects and bundles are
handled as for the U-Net kind (this class reuses its storage).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from napari_nrf import space

from .base import EncodingModel, register
from .nrf import NRF, build_nrf
from .rest2visual import POPULATION, Rest2Visual, Rest2VisualError, model_grid

#: Sizes: the trunk's NRF preset, the model grid of the rest maps (mm), the displacement head's width.
FIELD_PRESETS = {
    "field-tiny": {"trunk": "tiny", "resolution": 8.0, "disp_width": 16},
    "field": {"trunk": "demo", "resolution": 4.0, "disp_width": 32},
    "field-paper": {"trunk": "paper", "resolution": 2.0, "disp_width": 64},
}
N_DISP_FOURIER = 8  # low-frequency position features of the displacement head


@register
class Rest2VisualField(Rest2Visual):
    """The shared NRF field with an individual rest-map term (see the module doc).

    Parameters
    ----------
    trunk : dict, the NRF's config (:meth:`NRF.config`)
    grid_shape, grid_origin, grid_zooms : the grid of the stored rest maps (MNI mm)
    stencil_mm : (2,) neighbour distances (mm) of the raw and the smoothed rest features
    smooth_mm : Gaussian sd (mm) of the smoothed rest map
    displacement : add the coordinate-displacement head
    disp_width : its hidden width
    rest_lr_scale : learning-rate multiplier of the individual term (rest_proj, disp)
    rest_input : add ``W_rest rho`` to the first layer (False: the displacement alone)
    """

    kind = "rest2visual-field"
    concurrent_fits = True  # no random draws in training

    def __init__(self, trunk: dict, grid_shape, grid_origin, grid_zooms, stencil_mm=(6.0, 12.0),
                 smooth_mm: float = 6.0, displacement: bool = True, disp_width: int = 32,
                 rest_lr_scale: float = 10.0, rest_input: bool = True):
        EncodingModel.__init__(self)  # not the U-Net's layers: only its rest-map storage is shared
        self.grid = space.Grid(tuple(int(s) for s in grid_shape), np.asarray(grid_origin, float),
                               np.asarray(grid_zooms, float))
        self.trunk_config = dict(trunk)
        self.field = NRF(**self.trunk_config)
        self.stencil_mm = [float(v) for v in stencil_mm]
        self.smooth_mm = float(smooth_mm)
        self.displacement, self.disp_width = bool(displacement), int(disp_width)
        self.rest_lr_scale, self.rest_input = float(rest_lr_scale), bool(rest_input)
        self.ablate, self.embed_dim = "none", 0
        self.n_rest = 14
        self.rest_proj = nn.Linear(self.n_rest, self.field.width, bias=False)
        nn.init.zeros_(self.rest_proj.weight)
        if self.displacement:
            gen = torch.Generator().manual_seed(7)
            self.register_buffer("disp_B", torch.randn(3, N_DISP_FOURIER, generator=gen) * 3.0)
            self.disp = nn.Sequential(nn.Linear(self.n_rest + 2 * N_DISP_FOURIER, self.disp_width), nn.SiLU(),
                                      nn.Linear(self.disp_width, 3))
            nn.init.zeros_(self.disp[2].weight)
            nn.init.zeros_(self.disp[2].bias)
        # the population's reference rest map on self.grid (set by set_reference from the training subjects)
        self.register_buffer("rest_reference", torch.zeros(self.grid.shape))
        offs = [[0.0, 0.0, 0.0]] + [[s * (1 if k % 2 == 0 else -1) if i == k // 2 else 0.0 for i in range(3)]
                                    for k in range(6) for s in [1.0]]
        self.register_buffer("_unit_stencil", torch.tensor(offs, dtype=torch.float32), persistent=False)
        self.rest_maps: dict[str, torch.Tensor] = {}
        self._enc_cache: dict = {}  # subject -> (2, X, Y, Z) rest-feature volumes (rest map minus reference)

    # ---- construction -------------------------------------------------------------------
    @classmethod
    def example(cls, feature_shapes, subjects, backbone="efficientnet-lite0", seed=0, bases=None):
        """A "field-tiny" model whose subjects get smooth random rest maps (the battery's input)."""
        from scipy.ndimage import gaussian_filter

        model = build_rest2visual_field(backbone, "field-tiny", feature_shapes=feature_shapes, seed=seed)
        rng = np.random.default_rng([seed, 4])
        g = model.grid
        maps = {}
        for s, xyz in subjects.items():
            m = gaussian_filter(rng.standard_normal(g.shape), 1.0).astype(np.float32)
            maps[s] = m / (m.std() + 1e-6)
        model.set_reference([(m, g) for m in maps.values()])
        for s, xyz in subjects.items():
            model.add_subject(s, maps[s], g, coords=xyz)
        with torch.no_grad():  # the battery wants subjects to differ
            model.rest_proj.weight.normal_(0, 0.3, generator=torch.Generator().manual_seed(seed))
        return model

    def config(self) -> dict:
        return {"trunk": self.trunk_config, "grid_shape": list(self.grid.shape),
                "grid_origin": [float(v) for v in self.grid.origin], "grid_zooms": [float(v) for v in self.grid.zooms],
                "stencil_mm": self.stencil_mm, "smooth_mm": self.smooth_mm, "displacement": self.displacement,
                "disp_width": self.disp_width, "rest_lr_scale": self.rest_lr_scale,
                "rest_input": self.rest_input}

    @property
    def feature_shapes(self) -> dict:
        return self.field.feature_shapes

    @property
    def width(self) -> int:
        return self.field.width

    def query_bytes_per_point(self, n_images: int) -> int:
        return 4 * max(1, n_images) * self.field.width

    def lr_scale(self, param_name: str) -> float:
        # the individual term starts at zero and must grow within the trunk's schedule
        return self.rest_lr_scale if param_name.startswith(("rest_proj.", "disp.")) else 1.0

    def set_reference(self, maps) -> None:
        """The population's reference rest map: the mean of ``maps``, a list of ``(map,
        grid)`` (one per subject; a map (X, Y, Z) or (S, X, Y, Z) float on MNI ``grid``), on
        the model grid."""
        vols = []
        for m, grid in maps:
            m = np.nan_to_num(np.asarray(m, np.float32))
            m = m.mean(0) if m.ndim == 4 else m
            vols.append(m if grid == self.grid else space.resample(m, grid, self.grid, order=1, cval=0.0))
        if not vols:  # no subjects yet: the reference stays 0 (the rest map itself is the feature)
            return
        with torch.no_grad():
            self.rest_reference.copy_(torch.from_numpy(np.mean(vols, 0).astype(np.float32)))
        self._enc_cache = {}

    def copy_trunk(self, nrf: NRF) -> None:
        """Start from a trained image-only NRF of the same configuration."""
        a, b = nrf.config(), self.field.config()
        diff = sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))
        if diff or nrf.backbone_name != self.backbone_name:
            what = ", ".join(diff) if diff else f"backbone {nrf.backbone_name!r} vs {self.backbone_name!r}"
            raise Rest2VisualError(f"the base NRF differs from the field's trunk in {what}: train it with the "
                                   "same backbone and size (demo for the preset field)")
        self.field.load_state_dict(nrf.state_dict())

    # ---- the individual term --------------------------------------------------------------
    def rest_volumes(self, subject: str) -> torch.Tensor:
        """(2, X, Y, Z) float32: the subject's rest map minus the reference, raw and smoothed."""
        s = self._subject(subject)
        if s in self._enc_cache:
            return self._enc_cache[s]
        if s == POPULATION:
            vol = torch.zeros((2,) + self.grid.shape)
        else:
            from scipy.ndimage import gaussian_filter

            d = (self.rest_maps[s].mean(0) - self.rest_reference.cpu()).numpy()
            sm = gaussian_filter(d, self.smooth_mm / self.grid.zooms, mode="constant")
            vol = torch.from_numpy(np.stack([d, sm]).astype(np.float32))
        vol = vol.to(self.rest_reference.device)
        self._enc_cache[s] = vol
        return vol

    def rest_features(self, subject: str, coords) -> torch.Tensor:
        """rho_s at MNI points ``coords`` (N, 3) mm: (N, 14) float32 (0 for the population)."""
        xyz = torch.as_tensor(np.asarray(coords.cpu() if torch.is_tensor(coords) else coords, np.float32))
        xyz = xyz.to(self.rest_reference.device)
        vol = self.rest_volumes(subject)
        out = []
        for c, r in enumerate(self.stencil_mm):
            pts = (xyz[:, None, :] + r * self._unit_stencil[None]).reshape(-1, 3)  # (N * 7, 3)
            norm = self._normalised(pts.cpu()).to(vol.device)
            out.append(self._sample_normalised(vol[c:c + 1], norm).reshape(len(xyz), -1))
        return torch.cat(out, 1)

    def _disp_in(self, rho, xyz):
        proj = ((xyz + self.field.coord_offset) / self.field.coord_size) @ self.disp_B
        return torch.cat([rho, torch.sin(proj), torch.cos(proj)], 1)

    def coord_state(self, coords) -> torch.Tensor:
        """(N, 3) float32 MNI points as a tensor on the model's device."""
        return torch.as_tensor(np.asarray(coords.cpu() if torch.is_tensor(coords) else coords, np.float32),
                               device=self.rest_reference.device)

    def point_half(self, subject: str, xyz: torch.Tensor) -> torch.Tensor:
        """The first layer's pre-activation from the point and the person: (N, width)."""
        rho = self.rest_features(subject, xyz)
        if self.displacement:  # minus the head at rho = 0: no displacement for the population, exactly
            xyz = xyz - (self.disp(self._disp_in(rho, xyz)) - self.disp(self._disp_in(torch.zeros_like(rho), xyz)))
        h = self.field.coord_half(xyz)
        return h + self.rest_proj(rho) if self.rest_input else h

    # ---- the contract -------------------------------------------------------------------------
    def predict(self, features, coords=None, voxels=None, subject=None):
        s = self._subject(subject)
        h_img = self.field.image_half(self.field.image_code(features))
        return self.field.head(h_img, self.point_half(s, self.coord_state(self._points(s, coords, voxels))))

    def train_predict(self, features, subject, voxels, coords):
        return self.predict(features, coords=coords, subject=subject)

    def loss(self, pred, true, alpha):
        return EncodingModel.loss(self, pred, true, alpha)

    def query_images(self, features, subject=None):
        return {"h_img": self.field.image_half(self.field.image_code(features)), "subject": self._subject(subject)}

    def query_points(self, coords):
        return self.coord_state(coords)

    def query_predict(self, state, points):
        return self.field.head(state["h_img"], self.point_half(state["subject"], points)).float()

    def describe_subject(self, subject: str) -> str:
        return Rest2Visual.describe_subject(self, subject)


def build_rest2visual_field(backbone: str = "efficientnet-lite0", preset: str = "field",
                            feature_shapes: dict | None = None, extent=None, seed: int | None = 0,
                            token_maps: dict | None = None, **overrides) -> Rest2VisualField:
    """A new field Rest2Visual of size ``preset`` (:data:`FIELD_PRESETS`) for ``backbone``.

    The trunk is :func:`napari_nrf.models.nrf.build_nrf` of the preset's NRF size (its
    default token maps, or ``token_maps``; ``{}``: the pooled embedding only); ``extent``
    the (min, max) MNI mm box of the rest maps' grid (default: the brain's bounding box);
    ``overrides``: ``resolution``, ``stencil_mm``, ``smooth_mm``, ``displacement``, ``disp_width``.
    """
    if preset not in FIELD_PRESETS:
        raise Rest2VisualError(f"unknown preset {preset!r}; choose one of {sorted(FIELD_PRESETS)}")
    cfg = {**FIELD_PRESETS[preset], **overrides}
    nrf = build_nrf(backbone, cfg.pop("trunk"), feature_shapes=feature_shapes, token_maps=token_maps, seed=seed)
    lo, hi = (None, None) if extent is None else extent
    res = float(cfg.pop("resolution"))
    if not (np.isfinite(res) and res > 0):
        raise Rest2VisualError(f"resolution {res:g} mm: must be a positive number of mm")
    g = model_grid(res, lo, hi)
    from napari_nrf.guards import check_size

    # Every subject's rest maps, their smoothed copies and the population reference are
    # float32 volumes on this grid: a few per subject (x 8 as a floor for two subjects).
    check_size(int(np.prod(g.shape)) * 4 * 8, f"resolution {res:g} mm (a {g.shape} rest-map grid)")
    if seed is not None:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(int(seed) + 1)
            model = Rest2VisualField(nrf.config(), g.shape, g.origin, g.zooms, **cfg)
    else:
        model = Rest2VisualField(nrf.config(), g.shape, g.origin, g.zooms, **cfg)
    model.field.load_state_dict(nrf.state_dict())
    model.backbone_name = backbone
    model.provenance["preset"] = preset
    return model
