"""The Universal Brain Encoder (Beliy, Wasserman et al.): one learned embedding per voxel of every subject.

A voxel's response to an image is computed from its embedding ``e`` (E,) and the
image's multi-level backbone features::

    for each level l (a token map (P_l, C_in) or the pooled embedding, P_l = 1):
        f_l  = Linear(LayerNorm(tokens_l))                      (P_l, C)   projected features
        k_l  = Linear_k(f_l) + pos_l                            (P_l, E)   keys (learned per-patch positions)
        q_l  = Linear_q(e)                                      (E,)       query from the voxel embedding
        a_l  = softmax(k_l q_l / sqrt(E))                       (P_l,)     spatial attention
        o_l  = sum_p a_l[p] f_l[p]                              (C,)
        o_l  = o_l + MLP_l(LayerNorm(o_l))                      (C,)       residual C -> 4C -> C
    F = concat_l o_l                                            (L*C,)
    w = K e                                                     (L*C,)     K: learned functional embedding (L*C, E)
    y = F . w + b                                               scalar     predicted response

Everything but the voxel embeddings is shared by all voxels of all subjects, so the model
trains jointly on subjects who saw different images, and a new subject is added by
learning only its embeddings (:meth:`UniversalEncoder.add_subject`, then train with
``trainable=model.embedding_filter(subject)``; the recipes ``train_universal`` and
``transfer_subject`` live in :mod:`napari_nrf.recipes`).

Deviations from the paper, on purpose: the backbone stays frozen (no LoRA on its blocks);
a LayerNorm precedes each level's projection because frozen token maps of different
backbones have very different scales; E and C are configurable (paper: 256 and 128), and
the science runs on this CPU use smaller values (documented in docs/results.md).

The model is not continuous: it predicts at the voxels of known subjects. ``predict(...,
coords=)`` maps each MNI point to the nearest voxel of the subject (points outside every
voxel's cube, or farther than ``max_distance`` mm when given, give NaN).
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn

from napari_nrf.errors import NapariNRFError
from napari_nrf.settings import EMBED_INIT_STD, EMBEDDING_LR_SCALE
from .base import EncodingModel, register


class UniversalModelError(NapariNRFError):
    """Bad input to the universal encoder (unknown subject, missing feature level, ...)."""


class _LevelMLP(nn.Module):
    """Residual MLP on the spatially attended features of one level: x + MLP(LN(x))."""

    def __init__(self, c: int, hidden: int, dropout: float):
        super().__init__()
        self.norm = nn.LayerNorm(c)
        self.fc1 = nn.Linear(c, hidden)
        self.fc2 = nn.Linear(hidden, c)
        self.drop = nn.Dropout(dropout)

    def forward(self, x):
        return x + self.fc2(self.drop(torch.nn.functional.gelu(self.fc1(self.norm(x)))))


class _Level(nn.Module):
    """Projection, keys, query and MLP of one feature level."""

    def __init__(self, n_tokens: int, c_in: int, c: int, e: int, mlp_ratio: int, dropout: float):
        super().__init__()
        self.norm_in = nn.LayerNorm(c_in)
        self.proj = nn.Linear(c_in, c)
        self.key = nn.Linear(c, e)
        self.query = nn.Linear(e, e)
        self.pos = nn.Parameter(torch.randn(n_tokens, e) * 0.02)
        self.mlp = _LevelMLP(c, mlp_ratio * c, dropout)

    def project(self, tokens: torch.Tensor) -> torch.Tensor:
        """(B, P, C_in) -> (B, P, C) projected features (the attention's values)."""
        return self.proj(self.norm_in(tokens))

    def voxel_terms(self, emb: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Image-independent parts of the attention logits for voxel embeddings (N, E).

        ``k_p . q = f_p . (W_k^T q) + b_k . q + pos_p . q``, so the logits are
        ``f @ kq^T + bias`` with ``kq`` (N, C) and ``bias`` (N, P): the per-image cost is
        N*P*C instead of N*P*E.
        """
        q = self.query(emb) / math.sqrt(emb.shape[-1])
        kq = q @ self.key.weight  # (N, C)
        bias = q @ self.pos.T + (q @ self.key.bias)[:, None]  # (N, P)
        return kq, bias

    def attend(self, f: torch.Tensor, kq: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        """Projected features f (B, P, C) -> attended and MLP'd features (B, N, C)."""
        logits = torch.matmul(kq, f.transpose(1, 2)) + bias  # (B, N, P)
        a = torch.softmax(logits, dim=-1)
        return self.mlp(torch.matmul(a, f))


@register
class UniversalEncoder(EncodingModel):
    """Voxel-embedding encoder over multi-level image features.

    Parameters
    ----------
    levels : list of [name, n_tokens, channels]
        Backbone features the model reads, in order: a token map (B, n_tokens, channels)
        or a pooled vector (B, channels) with ``n_tokens = 1``.
    n_voxels : dict subject -> int
        Voxels per subject (one E-dim embedding each). Subjects can be added later.
    embed_dim : int
        E, the voxel-embedding size (paper: 256).
    channels : int
        C, the projected feature size per level (paper: 128).
    mlp_ratio : int
        Hidden width of the per-level MLPs in units of C (paper: 512 / 128 = 4).
    dropout : float
        Dropout in the per-level MLPs.
    embed_init_std : float
        Standard deviation of the random initial voxel embeddings (default 0.01).
    embedding_lr_scale : float
        Learning-rate multiplier (default 10; the paper: 1) of the voxel embeddings in :func:`napari_nrf.train.fit`
        (see :meth:`lr_scale`). An embedding gets a gradient only in the steps that sample
        its voxel, and Adam moves a parameter by about ``lr`` per step, so with few steps
        (a CPU run, a few-image transfer) the embeddings barely leave their random start.
    """

    kind = "universal"
    concurrent_fits = False  # dropout / random draws from torch's global generator
    continuous = False
    supports_points = True  # predict(coords=) takes each point's nearest voxel (NaN outside)
    has_embeddings = True
    per_subject_parameters = True  # a new subject's voxel embeddings (add_subject, subject_filter)

    def __init__(self, levels, n_voxels: dict | None = None, embed_dim: int = 256, channels: int = 128,
                 mlp_ratio: int = 4, dropout: float = 0.1, embed_init_std: float = EMBED_INIT_STD,
                 embedding_lr_scale: float = EMBEDDING_LR_SCALE):
        super().__init__()
        if not levels:
            raise UniversalModelError("the universal encoder needs at least one feature level")
        self.levels = [(str(n), int(p), int(c)) for n, p, c in levels]
        self.embed_dim = int(embed_dim)
        self.channels = int(channels)
        self.mlp_ratio = int(mlp_ratio)
        self.dropout = float(dropout)
        self.embed_init_std = float(embed_init_std)
        self.embedding_lr_scale = float(embedding_lr_scale)
        self.blocks = nn.ModuleDict({n: _Level(p, c, self.channels, self.embed_dim, self.mlp_ratio, self.dropout)
                                     for n, p, c in self.levels})
        lc = len(self.levels) * self.channels
        # Functional embedding K (L*C, E): the readout weights of a voxel are K @ e.
        self.functional = nn.Parameter(torch.randn(lc, self.embed_dim) / math.sqrt(self.embed_dim * lc))
        self.out_bias = nn.Parameter(torch.zeros(()))
        self.voxel_embeddings = nn.ParameterDict()
        for s, v in (n_voxels or {}).items():
            self._new_embedding(s, int(v))

    # ---- construction ---------------------------------------------------------------
    @classmethod
    def for_features(cls, feature_shapes: dict, subjects: dict, names=None, backbone_name: str = "",
                     backbone_config: dict | None = None, seed: int | None = 0, **config) -> "UniversalEncoder":
        """A new model for backbone features of ``feature_shapes`` (name -> shape without batch).

        ``subjects`` maps subject name -> (V, 3) voxel MNI coordinates (mm). ``names``
        picks the levels (default: every feature, token maps and the pooled embedding).
        """
        names = list(feature_shapes) if names is None else list(names)
        levels = []
        for n in names:
            if n not in feature_shapes:
                raise UniversalModelError(f"feature {n!r} not among the backbone's: {', '.join(feature_shapes)}")
            shape = tuple(feature_shapes[n])
            levels.append([n, shape[0], shape[1]] if len(shape) == 2 else [n, 1, shape[0]])
        # A private RNG state: building a model does not reseed the caller's torch RNG.
        with torch.random.fork_rng(devices=[]):
            if seed is not None:
                torch.manual_seed(seed)
            model = cls(levels, **config)
            for s, xyz in subjects.items():
                model.add_subject(s, xyz)
        model.backbone_name = backbone_name
        model.backbone_config = dict(backbone_config or {})
        return model

    @classmethod
    def example(cls, feature_shapes: dict, subjects: dict, backbone: str = "efficientnet-lite0", seed: int = 0,
                bases=None) -> "UniversalEncoder":
        """A tiny encoder (E = C = 8, the two coarsest levels) with ``subjects``' voxels."""
        names = [n for n in ("s32", "embedding") if n in feature_shapes] or list(feature_shapes)[:2]
        return cls.for_features(feature_shapes, subjects, names=names, backbone_name=backbone, seed=seed,
                                embed_dim=8, channels=8, mlp_ratio=2, dropout=0.0)

    def config(self) -> dict:
        return {
            "levels": [list(x) for x in self.levels],
            "n_voxels": {s: int(p.shape[0]) for s, p in self.voxel_embeddings.items()},
            "embed_dim": self.embed_dim, "channels": self.channels, "mlp_ratio": self.mlp_ratio,
            "dropout": self.dropout, "embed_init_std": self.embed_init_std,
            "embedding_lr_scale": self.embedding_lr_scale,
        }

    def lr_scale(self, param_name: str) -> float:
        """Learning-rate multiplier of a parameter in :func:`napari_nrf.train.fit`:
        ``embedding_lr_scale`` for the voxel embeddings, 1 for the shared weights."""
        return self.embedding_lr_scale if param_name.startswith("voxel_embeddings.") else 1.0

    def _new_embedding(self, subject: str, n: int, init: torch.Tensor | None = None):
        if not subject or "." in subject:
            raise UniversalModelError(f"subject names must be non-empty and contain no '.': {subject!r}")
        dev = self.functional.device
        data = init if init is not None else torch.randn(n, self.embed_dim, device=dev) * self.embed_init_std
        self.voxel_embeddings[subject] = nn.Parameter(data.to(dev, torch.float32))

    def add_subject(self, subject: str, coords, init: str = "random") -> None:
        """Add ``subject`` with voxel MNI coordinates ``coords`` (V, 3) mm and fresh embeddings.

        ``init="random"`` (the paper); ``"mean"``: every new voxel starts at the mean
        embedding of the existing subjects plus small noise (starts transfer from the
        average voxel rather than from zero signal); ``"nearest"``: each new voxel starts
        at the mean, over the existing subjects with voxel coordinates, of the embedding of
        that subject's voxel nearest to it in MNI space (an anatomical prior: areas sit at
        similar MNI positions across brains), plus small noise.
        """
        xyz = np.asarray(coords, np.float32)
        if xyz.ndim != 2 or xyz.shape[1] != 3:
            raise UniversalModelError(f"coords must be (V, 3) MNI mm, got shape {xyz.shape}")
        if subject in self.voxel_embeddings:
            raise UniversalModelError(f"subject {subject!r} is already in the model")
        data = None
        if init not in ("random", "mean", "nearest"):
            raise UniversalModelError(f"init must be 'random', 'mean' or 'nearest', got {init!r}")
        known = [s for s in self.voxel_embeddings if s in self.subjects]
        if init == "nearest" and known:
            from scipy.spatial import cKDTree

            with torch.no_grad():
                acc = torch.zeros(len(xyz), self.embed_dim, device=self.functional.device)
                for s in known:
                    idx = cKDTree(self.subjects[s]).query(xyz.astype(np.float64))[1]
                    acc += self.voxel_embeddings[s][torch.as_tensor(idx, dtype=torch.long, device=acc.device)]
                data = acc / len(known)
        elif init in ("mean", "nearest") and len(self.voxel_embeddings):
            with torch.no_grad():
                data = torch.cat([p for p in self.voxel_embeddings.values()]).mean(0).expand(len(xyz), -1)
        if data is not None:
            data = data + torch.randn(len(xyz), self.embed_dim, device=data.device) * self.embed_init_std * 0.1
        self._new_embedding(subject, len(xyz), data)
        self.subjects[subject] = xyz

    @property
    def feature_shapes(self) -> dict:
        return {n: ((c,) if p == 1 else (p, c)) for n, p, c in self.levels}

    def subject_filter(self, subject: str):
        return self.embedding_filter(subject)

    def embedding_filter(self, subject: str):
        """Parameter-name filter for the training loop: only ``subject``'s embeddings train."""
        self._check_subject(subject)
        name = f"voxel_embeddings.{subject}"
        return lambda param_name: param_name == name

    # ---- queries --------------------------------------------------------------------
    def _check_subject(self, subject) -> str:
        if subject is None:
            if len(self.voxel_embeddings) == 1:
                return next(iter(self.voxel_embeddings))
            raise UniversalModelError(f"this model has several subjects; pass subject= one of {sorted(self.voxel_embeddings)}")
        if subject not in self.voxel_embeddings:
            raise UniversalModelError(f"unknown subject {subject!r}; the model has {sorted(self.voxel_embeddings)}")
        return subject

    def embeddings(self, subject: str | None = None) -> np.ndarray:
        """Voxel embeddings (V, E) float32 of ``subject``."""
        return self.voxel_embeddings[self._check_subject(subject)].detach().cpu().numpy().copy()

    def voxel_size(self, subject: str) -> float:
        """Typical voxel size (mm) of ``subject``: the median nearest-neighbour distance."""
        from scipy.spatial import cKDTree

        cache = self.__dict__.setdefault("_voxel_size", {})
        xyz = self.subjects[subject]
        key = (subject, len(xyz))
        if key not in cache:
            if len(xyz) < 2:
                cache[key] = 2.0
            else:
                sample = xyz[np.random.default_rng(0).choice(len(xyz), min(len(xyz), 2000), replace=False)]
                cache[key] = float(np.median(cKDTree(xyz).query(sample, k=2)[0][:, 1]))
        return cache[key]

    def nearest_voxels(self, subject: str, coords, max_distance: float | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Nearest voxel index (N,) int64 of MNI points ``coords`` (N, 3) mm, and a mask of
        the points within ``max_distance`` mm of it (default: half the diagonal of the
        subject's voxel, i.e. points inside the voxel's cube)."""
        from scipy.spatial import cKDTree

        subject = self._check_subject(subject)
        if subject not in self.subjects:
            raise UniversalModelError(f"subject {subject!r} has no voxel coordinates in this model")
        if max_distance is None:
            max_distance = self.voxel_size(subject) * np.sqrt(3) / 2 + 1e-3
        if torch.is_tensor(coords):
            coords = coords.detach().cpu().numpy()
        d, idx = cKDTree(self.subjects[subject]).query(np.asarray(coords, np.float64).reshape(-1, 3))
        return idx.astype(np.int64), d <= max_distance

    def predict(self, features: dict, coords=None, voxels=None, subject: str | None = None,
                max_distance: float | None = None) -> torch.Tensor:
        """Responses (B, N) float32 of B images at N voxels of ``subject``.

        Parameters
        ----------
        features : dict name -> tensor (B, ...)
            Backbone features (``encode_images``); must contain every level of the model.
        voxels : (N,) int array/tensor or None
            Voxel indices of ``subject`` (default: all its voxels).
        coords : (N, 3) MNI mm or None
            Instead of ``voxels``: each point takes the nearest voxel of ``subject``;
            points farther than ``max_distance`` mm from every voxel give NaN (default:
            half the diagonal of the subject's voxel, so points inside a voxel take it).
        subject : str
            Required when the model has several subjects.
        """
        subject = self._check_subject(subject)
        table = self.voxel_embeddings[subject]
        far = None
        if coords is not None:
            if voxels is not None:
                raise UniversalModelError("pass coords or voxels, not both")
            idx, near = self.nearest_voxels(subject, coords, max_distance)
            voxels, far = idx, ~near
        if voxels is None:
            emb = table
        else:
            vox = torch.as_tensor(np.asarray(voxels) if not torch.is_tensor(voxels) else voxels,
                                  dtype=torch.long, device=table.device)
            if vox.numel() and (int(vox.min()) < 0 or int(vox.max()) >= table.shape[0]):
                raise UniversalModelError(f"voxel indices out of range for {subject!r} ({table.shape[0]} voxels)")
            emb = table[vox]
        out = self.forward_embeddings(features, emb)
        if far is not None and far.any():
            out = out.clone()
            out[:, torch.as_tensor(far, device=out.device)] = float("nan")
        return out

    def forward_embeddings(self, features: dict, emb: torch.Tensor, max_elements: int = 1 << 25) -> torch.Tensor:
        """Responses (B, N) for arbitrary voxel embeddings ``emb`` (N, E).

        Without gradients the voxels are processed in chunks so that the (B, n, P)
        attention maps stay under about ``max_elements`` floats.
        """
        fs = self._project(features)
        b = next(iter(fs.values())).shape[0]
        n = emb.shape[0]
        widest = max([p for _, p, _ in self.levels] + [self.mlp_ratio * self.channels])
        if torch.is_grad_enabled() or b * n * widest <= max_elements:
            return self._forward(fs, emb)
        step = max(1, max_elements // (b * widest))
        return torch.cat([self._forward(fs, emb[i:i + step]) for i in range(0, n, step)], dim=1)

    def _project(self, features: dict) -> dict:
        dev = self.functional.device
        out = {}
        for name, p, c in self.levels:
            if name not in features:
                raise UniversalModelError(f"features lack the level {name!r} (have {', '.join(features)}); "
                                          f"were they computed with backbone {self.backbone_name!r}?")
            x = torch.as_tensor(features[name]).to(dev, torch.float32)
            if x.ndim == 2:
                x = x[:, None, :]
            if tuple(x.shape[1:]) != (p, c):
                raise UniversalModelError(f"feature {name!r} has shape {tuple(x.shape[1:])}, the model expects {(p, c)}")
            out[name] = self.blocks[name].project(x)
        return out

    def _forward(self, fs: dict, emb: torch.Tensor) -> torch.Tensor:
        parts = []
        for name, _, _ in self.levels:
            blk = self.blocks[name]
            kq, bias = blk.voxel_terms(emb)
            parts.append(blk.attend(fs[name], kq, bias))
        feat = torch.cat(parts, dim=-1)  # (B, N, L*C)
        w = emb @ self.functional.T  # (N, L*C)
        return torch.einsum("bnk,nk->bn", feat, w) + self.out_bias


def build_universal(backbone: str, subjects: dict, backbone_config: dict | None = None, levels=None,
                    feature_shapes: dict | None = None, seed: int = 0, **config) -> UniversalEncoder:
    """A new Universal encoder for ``backbone`` with ``subjects`` (name -> (V, 3) MNI mm).

    ``levels`` picks backbone features (default: all, pooled embedding included);
    ``feature_shapes`` avoids building the backbone just to read its shapes.
    """
    if feature_shapes is None:
        from napari_nrf.features import get_backbone

        feature_shapes = dict(get_backbone(backbone, **(backbone_config or {})).feature_shapes)
    return UniversalEncoder.for_features(feature_shapes, subjects, names=levels, backbone_name=backbone,
                                         backbone_config=backbone_config, seed=seed, **config)
