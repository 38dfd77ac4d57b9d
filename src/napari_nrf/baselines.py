"""Baselines a reviewer accepts: a robust voxelwise ridge with spatial features, and fWRF.

:class:`RidgeBaseline`
    Voxelwise ridge regression from frozen backbone features, one penalty per voxel.
    Design: the pooled embedding and every token map averaged over tokens ("pooled"
    columns), plus **spatial** columns: each token map flattened (tokens x channels, the
    map standardised per channel and scaled so every map weighs the same) and reduced by
    PCA fitted on the training images (at most ``n_spatial`` components), so the
    regression can see where in the image something is. Standardisation is **robust**: a
    column whose training standard deviation is below ``1e-3`` x the median column sd is
    dropped (on 200 training images EfficientNet has dozens of near-constant columns that
    vary on test images: standardised by sd + 1e-6 they sit thousands of training sds
    away and the predictions explode); the others are floored at ``0.1`` x the median sd,
    and standardised test values are clipped to twice the largest training value of
    their column. A design it cannot
    fit (fewer than 2 training images, non-finite values, no usable column) is refused
    with :class:`BaselineError`. Engine: scikit-learn ``RidgeCV`` (efficient
    leave-one-out, one alpha per voxel), or himalaya's ``RidgeCV`` (5-fold, GPU back-ends,
    for NSD-sized voxel counts) with ``engine="himalaya"``; ``"auto"`` takes himalaya when
    it is installed and there are more than 20,000 voxels.

:class:`FWRF`
    The feature-weighted receptive field (St-Yves and Naselaris 2018; the NRF paper's
    baseline): per voxel a 2D Gaussian pooling field (centre mu in [-1, 1]^2 image
    coordinates, width sigma) applied to every token map, the pooled channels
    standardised with training statistics, and linear weights plus a bias. It is an
    :class:`~napari_nrf.models.EncodingModel` of one subject's voxels (voxel-indexed) and
    is trained by :func:`napari_nrf.train.fit`, the loop and defaults that train the NRF
    (:func:`fit_fwrf`).
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn

from napari_nrf.errors import NapariNRFError
from napari_nrf.models.base import EncodingModel

RIDGE_ALPHAS = np.logspace(-1, 6, 15)


class BaselineError(NapariNRFError):
    """A baseline cannot be fitted on this design (too few images, non-finite values, ...)."""


# ---- ridge ----------------------------------------------------------------------------------
def ridge_features(feats: dict) -> np.ndarray:
    """(n, D) pooled design: the pooled embedding(s) and every token map averaged over tokens."""
    cols = []
    for k in sorted(feats):
        a = np.asarray(feats[k], np.float32)
        cols.append(a.mean(1) if a.ndim == 3 else a.reshape(len(a), -1))
    return np.concatenate(cols, axis=1)


def _pool_tokens(a: np.ndarray, max_tokens: int) -> np.ndarray:
    """(n, P, C) -> (n, P', C): average-pool a square token grid to at most ``max_tokens``."""
    n, p, c = a.shape
    side = math.isqrt(p)
    if p <= max_tokens or side * side != p:
        return a
    f = int(math.ceil(side / math.isqrt(max_tokens)))
    s2 = side // f
    g = a[:, : s2 * f * side].reshape(n, side, side, c)[:, : s2 * f, : s2 * f]
    return g.reshape(n, s2, f, s2, f, c).mean((2, 4)).reshape(n, s2 * s2, c)


class _RobustScaler:
    """Per-column centring and scaling with near-constant columns dropped and the rest floored."""

    def __init__(self, rel_drop: float = 1e-3, rel_floor: float = 0.1):
        self.rel_drop, self.rel_floor = rel_drop, rel_floor

    def fit(self, x: np.ndarray) -> "_RobustScaler":
        self.mean_ = x.mean(0)
        sd = x.std(0)
        ref = float(np.median(sd[sd > 0])) if np.any(sd > 0) else 0.0
        self.keep_ = sd > self.rel_drop * ref if ref > 0 else np.zeros(len(sd), bool)
        self.scale_ = np.maximum(sd, self.rel_floor * ref)[self.keep_]
        z = (x[:, self.keep_] - self.mean_[self.keep_]) / self.scale_
        self.bound_ = 2.0 * np.abs(z).max(0)
        return self

    def transform(self, x: np.ndarray) -> np.ndarray:
        z = (x[:, self.keep_] - self.mean_[self.keep_]) / self.scale_
        # A test image may extrapolate (twice the training extreme) but no column can
        # reach thousands of training sds.
        return np.clip(z, -self.bound_, self.bound_)


class RidgeBaseline:
    """Voxelwise ridge regression from backbone features, one alpha per voxel.

    Parameters
    ----------
    alphas : array of float
        Candidate penalties (default 1e-1 .. 1e6, log-spaced).
    spatial : bool
        Add the PCA of the flattened token maps (default True); False: pooled columns only
        (the old baseline, kept for comparison).
    n_spatial : int
        At most this many spatial components (also at most n_train - 1).
    max_tokens : int
        Token maps larger than this are average-pooled first (EfficientNet's 28 x 28 s8
        map -> 14 x 14), which bounds the memory of the flattened maps.
    engine : "auto", "sklearn" or "himalaya"
    """

    def __init__(self, alphas=RIDGE_ALPHAS, spatial: bool = True, n_spatial: int = 256, max_tokens: int = 196,
                 engine: str = "auto"):
        if engine not in ("auto", "sklearn", "himalaya"):
            raise BaselineError(f"engine must be auto, sklearn or himalaya, got {engine!r}")
        self.alphas = np.asarray(alphas, float)
        self.spatial, self.n_spatial, self.max_tokens, self.engine = bool(spatial), int(n_spatial), int(max_tokens), engine
        self.model = None

    # design -------------------------------------------------------------------------------
    def _spatial_raw(self, feats: dict) -> np.ndarray | None:
        maps = [k for k in sorted(feats) if np.asarray(feats[k]).ndim == 3]
        if not self.spatial or not maps:
            return None
        parts = []
        for i, k in enumerate(maps):
            a = _pool_tokens(np.asarray(feats[k], np.float32), self.max_tokens)
            if not hasattr(self, "map_stats_"):
                self.map_stats_ = {}
            if k not in self.map_stats_:  # channel statistics of the training images
                mu, sd = a.mean((0, 1)), a.std((0, 1))
                self.map_stats_[k] = (mu, np.maximum(sd, 1e-6), math.sqrt(a.shape[1] * a.shape[2]))
            mu, sd, norm = self.map_stats_[k]
            parts.append(((a - mu) / sd).reshape(len(a), -1) / norm)  # every map weighs the same
        return np.concatenate(parts, axis=1)

    def _design(self, feats: dict, fit: bool) -> np.ndarray:
        x = ridge_features(feats).astype(np.float64)
        if fit:
            self.map_stats_ = {}
        s = self._spatial_raw(feats)
        if s is not None:
            if fit:
                from sklearn.decomposition import PCA

                k = max(1, min(self.n_spatial, len(s) - 1, s.shape[1]))
                self.pca_ = PCA(n_components=k, svd_solver="full" if len(s) <= 1000 else "randomized", random_state=0)
                self.pca_.fit(s)
            x = np.concatenate([x, self.pca_.transform(s).astype(np.float64)], axis=1)
        return x

    # fit / predict --------------------------------------------------------------------------
    def fit(self, feats: dict, y: np.ndarray) -> "RidgeBaseline":
        y = np.asarray(y, np.float64)
        if y.ndim != 2 or len(y) < 2:
            raise BaselineError(f"the ridge baseline needs at least 2 training images, got responses {y.shape}")
        if not np.all(np.isfinite(y)):
            raise BaselineError("the training responses contain NaN or inf")
        x = self._design(feats, fit=True)
        if len(x) != len(y):
            raise BaselineError(f"{len(x)} feature rows for {len(y)} response rows")
        if not np.all(np.isfinite(x)):
            raise BaselineError("the training features contain NaN or inf")
        self.scaler_ = _RobustScaler().fit(x)
        if not self.scaler_.keep_.any():
            raise BaselineError("every feature column is constant over the training images")
        z = self.scaler_.transform(x)
        self.y_mean_ = y.mean(0)
        self.n_dropped_ = int((~self.scaler_.keep_).sum())
        self.engine_ = self._engine(y.shape[1])
        if self.engine_ == "himalaya":
            from himalaya.ridge import RidgeCV as HRidgeCV

            m = HRidgeCV(alphas=self.alphas, cv=5, fit_intercept=True)  # each fold centred on its own
            m.fit(z, y - self.y_mean_)
            self.coef_ = np.asarray(m.coef_, np.float64).reshape(z.shape[1], -1)
            self.intercept_ = np.asarray(m.intercept_, np.float64).reshape(-1)
            self.alpha_values_ = np.asarray(m.best_alphas_, np.float64)
            self.model = m
        else:
            from sklearn.linear_model import RidgeCV

            # fit_intercept=True even though z and y are centred: with fit_intercept=False
            # the efficient leave-one-out sees a centred design whose left-out row still
            # took part in the centring, its error goes to 0 as alpha -> 0, and it picks the
            # smallest alpha, a near-interpolating fit that gets *worse* with more images
            # (median alpha 0.1; r truth 0.55 at 200 images, 0.41 at 800, against 0.75 /
            # 0.85 with the intercept handled by scikit-learn).
            m = RidgeCV(alphas=self.alphas, alpha_per_target=True, fit_intercept=True)
            m.fit(z, y - self.y_mean_)
            self.coef_ = np.asarray(m.coef_, np.float64).reshape(-1, z.shape[1]).T
            self.intercept_ = np.asarray(m.intercept_, np.float64).reshape(-1)
            self.alpha_values_ = np.atleast_1d(m.alpha_).astype(np.float64)
            self.model = m
        return self

    def _engine(self, n_targets: int) -> str:
        if self.engine != "auto":
            return self.engine
        try:
            import himalaya  # noqa: F401
        except ImportError:
            return "sklearn"
        return "himalaya" if n_targets > 20000 else "sklearn"

    def predict(self, feats: dict) -> np.ndarray:
        """(n, V) float32 predictions for the images of ``feats``."""
        if self.model is None:
            raise BaselineError("fit the ridge baseline first")
        z = self.scaler_.transform(self._design(feats, fit=False))
        return (z @ self.coef_ + self.intercept_ + self.y_mean_).astype(np.float32)

    @property
    def alpha_(self) -> np.ndarray:
        return self.alpha_values_


# ---- fWRF -----------------------------------------------------------------------------------
class FWRF(EncodingModel):
    """Feature-weighted receptive fields of one subject's voxels (St-Yves and Naselaris 2018).

    ``y[b, v] = sum_m sum_c w[v, m, c] * (pool_v(x_m[b])_c - mean_mc) / sd_mc + bias_v``,
    with ``pool_v`` a Gaussian over the token grid of map m (normalised to sum 1), centre
    ``mu_v`` (2,) in [-1, 1] image coordinates (x right, y down) and width
    ``sigma_v = exp(log_sigma_v)`` in the same units, shared by all maps.

    Parameters
    ----------
    token_maps : list of [name, n_tokens, channels, pool]
        As for the NRF (square token grids; ``pool`` average-pools to that many tokens).
    n_voxels : int
    subject : str
    channel_mean, channel_sd : list of (channels,) arrays per map or None
        Training statistics of the Gaussian-pooled channels (set by :func:`build_fwrf`).
    """

    kind = "fwrf"
    continuous = False

    def __init__(self, token_maps, n_voxels: int, subject: str = "sub-01", init_sigma: float = 1.0, seed: int = 0):
        super().__init__()
        self.token_maps = [[str(n), int(p), int(c), (int(q) if q else None)] for n, p, c, q in token_maps]
        self.n_voxels, self.subject, self.init_sigma, self.seed = int(n_voxels), str(subject), float(init_sigma), int(seed)
        gen = torch.Generator().manual_seed(self.seed)
        # Every field starts wide and centred (about the token average, what the pooled
        # ridge sees), so the readout weights get a signal from the first step and the
        # gradient then moves and narrows each field; a small jitter breaks ties.
        self.mu = nn.Parameter(0.05 * torch.randn(self.n_voxels, 2, generator=gen))
        self.log_sigma = nn.Parameter(torch.full((self.n_voxels,), math.log(self.init_sigma)))
        c_tot = sum(c for _, _, c, _ in self.token_maps)
        self.weight = nn.Parameter(0.01 * torch.randn(self.n_voxels, c_tot, generator=gen))
        self.bias = nn.Parameter(torch.zeros(self.n_voxels))
        self.register_buffer("channel_mean", torch.zeros(c_tot))
        self.register_buffer("channel_sd", torch.ones(c_tot))

    def config(self) -> dict:
        return {"token_maps": [list(t) for t in self.token_maps], "n_voxels": self.n_voxels, "subject": self.subject,
                "init_sigma": self.init_sigma, "seed": self.seed}

    def lr_scale(self, name: str) -> float:
        # Adam moves each parameter about lr per step: at lr 1e-3 a field centre would need
        # ~1000 steps to cross half the image, so the geometry learns 10x faster.
        return 10.0 if name in ("mu", "log_sigma") else 1.0

    def _grid(self, name, x):
        """Token map of ``name`` as (B, P, C) after the configured pooling, and its side."""
        p = x.shape[1]
        side = math.isqrt(p)
        q = next(t[3] for t in self.token_maps if t[0] == name)
        if q:
            qs = math.isqrt(q)
            g = x.transpose(1, 2).reshape(len(x), -1, side, side)
            x = nn.functional.adaptive_avg_pool2d(g, qs).reshape(len(x), x.shape[2], -1).transpose(1, 2)
            side = qs
        return x, side

    def pooled(self, features: dict, vox: torch.Tensor) -> torch.Tensor:
        """Standardised Gaussian-pooled channels (B, n, C_total) at voxel indices ``vox``."""
        dev = self.mu.device
        mu, sig = self.mu[vox], torch.exp(self.log_sigma[vox]).clamp_min(0.02)
        out = []
        for name, _, _, _ in self.token_maps:
            if name not in features:
                raise BaselineError(f"features lack {name!r} (have {', '.join(features)})")
            x, side = self._grid(name, torch.as_tensor(features[name]).to(dev, torch.float32))
            t = (torch.arange(side, device=dev, dtype=torch.float32) + 0.5) / side * 2 - 1
            gy, gx = torch.meshgrid(t, t, indexing="ij")
            d2 = (gx.reshape(1, -1) - mu[:, :1]) ** 2 + (gy.reshape(1, -1) - mu[:, 1:]) ** 2  # (n, P)
            g = torch.softmax(-d2 / (2 * sig[:, None] ** 2), dim=1)  # a normalised Gaussian
            out.append(torch.einsum("bpc,np->bnc", x, g))
        z = torch.cat(out, dim=2)
        return (z - self.channel_mean) / self.channel_sd

    def predict(self, features: dict, coords=None, voxels=None, subject: str | None = None) -> torch.Tensor:
        """Responses (B, n) at voxel indices ``voxels`` (default: all) of the model's subject."""
        if coords is not None:
            raise BaselineError("fWRF predicts at its subject's voxels only (voxels=), not at MNI coords")
        if subject is not None and subject != self.subject:
            raise BaselineError(f"this fWRF was fitted to {self.subject!r}, not {subject!r}")
        vox = torch.arange(self.n_voxels, device=self.mu.device) if voxels is None else \
            torch.as_tensor(voxels, device=self.mu.device).long()
        z = self.pooled(features, vox)
        return (z * self.weight[vox][None]).sum(2) + self.bias[vox][None]


def build_fwrf(rs, train_features: dict, backbone: str = "efficientnet-lite0", token_maps: dict | None = None,
               seed: int = 0) -> FWRF:
    """An fWRF for the voxels of response set ``rs`` with channel statistics from
    ``train_features`` (features of its training images: name -> (n, P, C))."""
    from napari_nrf.models.nrf import DEFAULT_TOKEN_MAPS

    maps = token_maps or DEFAULT_TOKEN_MAPS.get(backbone)
    if not maps or not set(maps) <= set(train_features):  # every token map the features have
        maps = {k: None for k, v in train_features.items() if np.asarray(v).ndim == 3}
    if not maps:
        raise BaselineError("fWRF needs token maps (features of shape (n, tokens, channels))")
    spec = []
    for name, pool in maps.items():
        p, c = np.asarray(train_features[name]).shape[1:]
        spec.append([name, int(p), int(c), pool if pool and pool < p else None])
    torch.manual_seed(seed)
    model = FWRF(spec, rs.n_voxels, subject=rs.subject, seed=seed)
    model.backbone_name = backbone
    model.subjects = {rs.subject: np.asarray(rs.coords, np.float32)}
    with torch.no_grad():  # statistics of channels pooled by a wide Gaussian at the centre
        f = {k: torch.as_tensor(np.asarray(v), dtype=torch.float32) for k, v in train_features.items()}
        probe = FWRF(spec, 1, subject=rs.subject, init_sigma=1.0)
        probe.mu.zero_()
        z = torch.cat([probe.pooled({k: f[k][i:i + 64] for k in f}, torch.zeros(1, dtype=torch.long))[:, 0]
                       for i in range(0, len(next(iter(f.values()))), 64)])
        model.channel_mean.copy_(z.mean(0))
        model.channel_sd.copy_(z.std(0).clamp_min(1e-3 * float(z.std(0).median()) + 1e-8))
    return model


def fit_fwrf(rs, features: dict, train_rows=None, backbone: str = "efficientnet-lite0", seed: int = 0,
             token_maps: dict | None = None, **fit_kwargs):
    """Build an fWRF for ``rs`` and train it with :func:`napari_nrf.train.fit` (the NRF's
    loop and defaults; ``fit_kwargs`` override them). ``features``: every image of ``rs``.
    Returns (model, history)."""
    from napari_nrf.train import fit

    tr = rs.indices("train") if train_rows is None else np.asarray(train_rows)
    model = build_fwrf(rs, {k: np.asarray(v)[tr] for k, v in features.items()}, backbone=backbone, seed=seed,
                       token_maps=token_maps)
    hist = fit(model, [rs], features=[features], seed=seed, **fit_kwargs)
    return model, hist
