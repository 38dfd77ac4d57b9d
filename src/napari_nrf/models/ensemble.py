"""Voxelwise least-squares ensemble over K (finetuned) base models (the NRF paper, eq. 1-2).

For a new subject with V voxels, K base models (each finetuned on the subject's few
images) predict ``r_hat[k, i, v]``. Each voxel ``v`` gets its own weights and bias::

    min_{w_v, b_v}  sum_i ( r[i, v] - sum_k w[v, k] * r_hat[k, i, v] - b[v] )^2      (eq. 1)
    r_v = sum_k w[v, k] * r_hat_v^(k) + b[v]                                           (eq. 2)

fitted by :func:`fit_voxelwise` on the same training images the bases were finetuned on.

The result is one model (kind ``"ensemble"``) that behaves like any other: its bundle
holds every base model (their tensors under ``bases.{k}.`` and their metadata in the
config), the weights ``ensemble.weights`` (V, K) float32, the biases ``ensemble.bias``
(V,) float32 and the subject's voxel coordinates.

Queries at other MNI points (``predict(coords=...)``)
------------------------------------------------------
When every base is continuous (an NRF field), the ensemble is continuous too: the bases
are evaluated at the query points, and the per-voxel weights and bias are interpolated
in space by inverse-distance weighting (power 2) over the ``k_neighbours`` nearest
training voxels (a scipy cKDTree; a point on a voxel centre takes that voxel's weights
exactly). Far from the subject's voxels the fitted weights mean nothing, so beyond
``max_distance`` mm from the nearest voxel the interpolated weights fade linearly into
the voxel-average weights and bias, reached at ``2 * max_distance`` mm. The ensemble
therefore answers everywhere in MNI space, is exact at the training voxels, and is a
plain weighted average of the bases far from them.

When a base is not continuous (a universal encoder), ``coords`` map to the nearest voxel
of the subject and points farther than ``max_distance`` mm give NaN, as for that kind.

The fast query of a continuous ensemble (the contract's ``query_*`` hooks) asks each base
for its own fast-query states and caches the interpolated weights per grid with the
bases' point states, so a 1 mm whole brain costs the bases' queries plus one
nearest-neighbour search per grid. The ensemble is fitted by least squares
(:meth:`EnsembleModel.fit`), not by :func:`napari_nrf.train.fit` (``supports_fit`` False):
finetune the bases, then fit the ensemble (:func:`napari_nrf.finetune.finetune_ensemble`).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from napari_nrf.errors import NapariNRFError
from .base import MODEL_KINDS, EncodingModel, register
from .bundle import BundleError


class EnsembleError(NapariNRFError):
    """Bad input to the ensemble (mismatched shapes, backbones or subjects)."""


def fit_voxelwise(preds, responses, ridge: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """Per-voxel least squares of ``responses`` on the K base predictions plus a bias.

    Parameters
    ----------
    preds : (K, N, V) float array
        Prediction of base ``k`` for training image ``i`` at voxel ``v``.
    responses : (N, V) float array
        Measured responses of the N training images.
    ridge : float
        Tikhonov term on the weights (not the bias), relative to the mean diagonal of
        each voxel's Gram matrix. The default 0 is the paper's ordinary least squares
        (a 1e-9 floor only keeps identical bases from making the system singular).

    Returns
    -------
    weights : (V, K) float32
    bias : (V,) float32
    """
    p = np.asarray(preds, np.float64)
    r = np.asarray(responses, np.float64)
    if p.ndim != 3:
        raise EnsembleError(f"preds must be (K, N, V), got shape {p.shape}")
    k, n, v = p.shape
    if r.shape != (n, v):
        raise EnsembleError(f"responses must be (N, V) = ({n}, {v}), got {r.shape}")
    if n < 2:
        raise EnsembleError(f"the ensemble needs at least 2 training images, got {n}")
    # Centre per voxel: the bias is then the mean residual and the weights solve a
    # K x K system per voxel, batched over voxels.
    pm, rm = p.mean(1, keepdims=True), r.mean(0, keepdims=True)
    pc, rc = p - pm, r - rm
    gram = np.einsum("anv,bnv->vab", pc, pc)  # (V, K, K)
    rhs = np.einsum("anv,nv->va", pc, rc)  # (V, K)
    scale = np.trace(gram, axis1=1, axis2=2) / k
    gram = gram + ((ridge + 1e-9) * scale + 1e-12)[:, None, None] * np.eye(k)[None]
    w = np.linalg.solve(gram, rhs[..., None])[..., 0]  # (V, K)
    b = rm[0] - np.einsum("vk,kv->v", w, pm[:, 0, :])
    return w.astype(np.float32), b.astype(np.float32)


@register
class EnsembleModel(EncodingModel):
    """Weighted per-voxel combination of K base models for one subject.

    Parameters
    ----------
    bases : list of EncodingModel
        The K (finetuned) base models; they must share one image backbone.
    subject : str
        Name of the new subject.
    coords : (V, 3) float array
        The subject's voxel centres, MNI mm.
    weights : (V, K) float array or None
        Per-voxel weights (default: 1/K each, a simple average).
    bias : (V,) float array or None
        Per-voxel bias (default 0).
    k_neighbours : int
        Training voxels used to interpolate weights at other points (inverse distance).
    max_distance : float
        mm from the nearest training voxel beyond which weights fade to their voxel average.
    """

    kind = "ensemble"
    composite = True
    supports_fit = False

    def __init__(self, bases, subject: str, coords, weights=None, bias=None, k_neighbours: int = 8,
                 max_distance: float = 4.0):
        super().__init__()
        if not bases:
            raise EnsembleError("an ensemble needs at least one base model")
        names = {b.backbone_name for b in bases}
        if len(names) != 1:
            raise EnsembleError(f"the base models use different backbones: {sorted(names)}")
        ins = {getattr(b, "inputs", "images") for b in bases}
        if len(ins) != 1:
            raise EnsembleError(f"the base models read different inputs: {sorted(ins)}")
        xyz = np.asarray(coords, np.float32)
        if xyz.ndim != 2 or xyz.shape[1] != 3:
            raise EnsembleError(f"coords must be (V, 3) MNI mm, got shape {xyz.shape}")
        v, k = len(xyz), len(bases)
        w = np.full((v, k), 1.0 / k, np.float32) if weights is None else np.asarray(weights, np.float32)
        b = np.zeros(v, np.float32) if bias is None else np.asarray(bias, np.float32)
        if w.shape != (v, k) or b.shape != (v,):
            raise EnsembleError(f"weights must be (V, K) = ({v}, {k}) and bias (V,), got {w.shape} and {b.shape}")
        self.bases = nn.ModuleList(bases)
        self.register_buffer("weights", torch.as_tensor(w))
        self.register_buffer("bias", torch.as_tensor(b))
        self.subject = str(subject)
        self.subjects = {self.subject: xyz}
        self.k_neighbours = int(k_neighbours)
        self.max_distance = float(max_distance)
        self.continuous = all(m.continuous for m in bases)
        self.backbone_name = bases[0].backbone_name
        self.backbone_config = dict(bases[0].backbone_config)
        self.inputs = getattr(bases[0], "inputs", "images")
        self._tree = None

    def encode_images(self, images, batch_size: int = 16, cache=None, progress=None) -> dict:
        """The bases' inputs: backbone features, or their own (film chunks) for bases that
        read frames (model contract ``inputs``)."""
        if self.inputs != "images":
            return self.bases[0].encode_images(images, batch_size=batch_size, cache=cache, progress=progress)
        return super().encode_images(images, batch_size=batch_size, cache=cache, progress=progress)

    @property
    def supports_points(self) -> bool:
        return all(m.supports_points for m in self.bases)

    @classmethod
    def example(cls, feature_shapes: dict, subjects: dict, backbone: str = "efficientnet-lite0", seed: int = 0,
                bases=None) -> "EnsembleModel":
        """An ensemble of ``bases`` for the first of ``subjects``, with random per-voxel
        weights (so that the interpolation in space matters)."""
        if not bases:
            raise EnsembleError("an example ensemble needs its base models (bases=[...])")
        subject, xyz = next(iter(subjects.items()))
        rng = np.random.default_rng(seed)
        w = rng.uniform(0.2, 1.0, (len(xyz), len(bases))).astype(np.float32)
        b = rng.normal(0.0, 0.1, len(xyz)).astype(np.float32)
        return cls(list(bases), subject, xyz, weights=w, bias=b)

    # ---- fitting ------------------------------------------------------------------------
    @torch.no_grad()
    def base_predictions(self, features: dict, voxels=None, coords=None, subject=None) -> torch.Tensor:
        """Predictions (K, B, N) of every base at the subject's ``voxels`` or at ``coords``."""
        xyz = self.subjects[self.subject]
        out = []
        for m in self.bases:
            if coords is not None:
                out.append(m.predict(features, coords=coords) if m.continuous
                           else m.predict(features, coords=coords, subject=self.subject))
            elif m.continuous:
                sel = xyz if voxels is None else xyz[np.asarray(voxels)]
                out.append(m.predict(features, coords=sel))
            else:
                out.append(m.predict(features, voxels=voxels, subject=self.subject))
        return torch.stack([o.to(self.weights.device, torch.float32) for o in out])

    def fit(self, features: dict, responses, ridge: float = 0.0, batch_images: int = 64) -> "EnsembleModel":
        """Fit the weights and biases (eq. 1) on training ``features`` (dict of (N, ...))
        and measured ``responses`` (N, V) float; returns self."""
        n = len(next(iter(features.values())))
        parts = []
        for s in range(0, n, batch_images):
            parts.append(self.base_predictions({k: v[s:s + batch_images] for k, v in features.items()}).cpu())
        preds = torch.cat(parts, dim=1).numpy()
        w, b = fit_voxelwise(preds, np.asarray(responses), ridge=ridge)
        self.weights.copy_(torch.as_tensor(w))
        self.bias.copy_(torch.as_tensor(b))
        return self

    # ---- spatial interpolation of the weights -------------------------------------------
    def weights_at(self, coords) -> tuple[np.ndarray, np.ndarray]:
        """Interpolated weights (N, K) float32 and bias (N,) float32 at MNI ``coords`` (N, 3) mm.

        Inverse-distance weighting (power 2) over the ``k_neighbours`` nearest voxels,
        fading to the voxel-average weights between ``max_distance`` and twice that.
        """
        from scipy.spatial import cKDTree

        if torch.is_tensor(coords):
            coords = coords.detach().cpu().numpy()
        xyz = np.asarray(coords, np.float64).reshape(-1, 3)
        if self._tree is None:
            self._tree = cKDTree(self.subjects[self.subject])
        kk = min(self.k_neighbours, len(self.subjects[self.subject]))
        d, idx = self._tree.query(xyz, k=kk)
        d, idx = d.reshape(len(xyz), kk), idx.reshape(len(xyz), kk)
        wv = self.weights.cpu().numpy().astype(np.float64)
        bv = self.bias.cpu().numpy().astype(np.float64)
        inv = 1.0 / np.maximum(d, 1e-6) ** 2
        exact = d[:, 0] < 1e-6
        inv[exact] = 0.0
        inv[exact, 0] = 1.0
        inv /= inv.sum(1, keepdims=True)
        w = np.einsum("nj,njk->nk", inv, wv[idx])
        b = np.einsum("nj,nj->n", inv, bv[idx])
        fade = np.clip((d[:, 0] - self.max_distance) / max(self.max_distance, 1e-6), 0.0, 1.0)
        w = (1 - fade)[:, None] * w + fade[:, None] * wv.mean(0)[None]
        b = (1 - fade) * b + fade * bv.mean()
        return w.astype(np.float32), b.astype(np.float32)

    # ---- the fast query (continuous ensembles) --------------------------------------------
    def query_images(self, features: dict) -> list:
        self._need_continuous("queries at arbitrary points (a base is voxel-indexed)")
        return [m.query_images(features) for m in self.bases]

    def query_points(self, coords) -> dict:
        self._need_continuous("queries at arbitrary points (a base is voxel-indexed)")
        w, b = self.weights_at(coords)
        dev = self.weights.device
        return {"bases": [m.query_points(coords) for m in self.bases],
                "w": torch.as_tensor(w, device=dev), "b": torch.as_tensor(b, device=dev)}

    def query_predict(self, states: list, points: dict) -> torch.Tensor:
        preds = torch.stack([m.query_predict(s, p).float() for m, s, p in zip(self.bases, states, points["bases"])])
        return torch.einsum("kbn,nk->bn", preds, points["w"]) + points["b"]

    def query_bytes_per_point(self, n_images: int) -> int:
        return max(m.query_bytes_per_point(n_images) for m in self.bases) + 4 * len(self.bases) * max(1, n_images)

    # ---- the model interface ------------------------------------------------------------
    def predict(self, features: dict, coords=None, voxels=None, subject: str | None = None) -> torch.Tensor:
        """Responses (B, N) float32 at the subject's ``voxels`` (N,) (default: all), or at
        MNI ``coords`` (N, 3) mm (weights interpolated in space, see the module doc)."""
        if subject is not None and subject != self.subject:
            raise EnsembleError(f"this ensemble predicts subject {self.subject!r}, not {subject!r}")
        if coords is not None and voxels is not None:
            raise EnsembleError("pass coords or voxels, not both")
        dev = self.weights.device
        if coords is None:
            vox = slice(None) if voxels is None else torch.as_tensor(np.asarray(voxels), dtype=torch.long, device=dev)
            if voxels is not None and len(vox) and (int(vox.min()) < 0 or int(vox.max()) >= len(self.bias)):
                raise EnsembleError(f"voxel indices out of range for {self.subject!r} ({len(self.bias)} voxels)")
            preds = self.base_predictions(features, voxels=None if voxels is None else np.asarray(voxels))
            w, b = self.weights[vox], self.bias[vox]
        else:
            if not self.supports_points:
                raise self.unsupported("predictions at MNI points",
                                       "a base model predicts only at its subjects' voxels")
            preds = self.base_predictions(features, coords=coords)
            if self.continuous:
                w_np, b_np = self.weights_at(coords)
                w, b = torch.as_tensor(w_np, device=dev), torch.as_tensor(b_np, device=dev)
            else:
                from scipy.spatial import cKDTree

                dd, idx = cKDTree(self.subjects[self.subject]).query(np.asarray(coords, np.float64).reshape(-1, 3))
                w = self.weights[torch.as_tensor(idx, device=dev)]
                b = self.bias[torch.as_tensor(idx, device=dev)]
        return torch.einsum("kbn,nk->bn", preds, w) + b

    # ---- bundles --------------------------------------------------------------------------
    def config(self) -> dict:
        return {"subject": self.subject, "k_neighbours": self.k_neighbours, "max_distance": self.max_distance,
                "n_bases": len(self.bases), "bases": [m.bundle_metadata() for m in self.bases]}

    def bundle_tensors(self) -> dict:
        t = {"ensemble.weights": self.weights, "ensemble.bias": self.bias,
             f"subjects.{self.subject}.coords": torch.as_tensor(self.subjects[self.subject])}
        for i, m in enumerate(self.bases):
            for name, v in m.bundle_tensors().items():
                t[f"bases.{i}.{name}"] = v
        # Copies: bases may share arrays (the subject's coordinates); safetensors refuses
        # tensors that share memory.
        return {k: torch.as_tensor(v).detach().clone() for k, v in t.items()}

    @classmethod
    def from_bundle(cls, tensors: dict, meta: dict) -> "EnsembleModel":
        cfg = meta["config"]
        bases = []
        for i, bmeta in enumerate(cfg["bases"]):
            kind = bmeta.get("kind")
            if kind not in MODEL_KINDS:
                raise BundleError(f"metadata field 'config.bases[{i}].kind' is {kind!r}; known kinds: {sorted(MODEL_KINDS)}")
            pre = f"bases.{i}."
            sub = {k[len(pre):]: v for k, v in tensors.items() if k.startswith(pre)}
            bases.append(MODEL_KINDS[kind].from_bundle(sub, bmeta))
        subject = cfg["subject"]
        for key in ("ensemble.weights", "ensemble.bias", f"subjects.{subject}.coords"):
            if key not in tensors:
                raise BundleError(f"missing tensor {key}")
        model = cls(bases, subject, tensors[f"subjects.{subject}.coords"].numpy(),
                    weights=tensors["ensemble.weights"].numpy(), bias=tensors["ensemble.bias"].numpy(),
                    k_neighbours=cfg.get("k_neighbours", 8), max_distance=cfg.get("max_distance", 4.0))
        model.metrics = meta.get("metrics", {})
        model.provenance = meta.get("provenance", {})
        return model
