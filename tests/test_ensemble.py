"""The voxelwise least-squares ensemble (seed 000 eq. 1-2): fit, predict, interpolate, bundle."""

import numpy as np
import pytest
import torch

from napari_nrf.models import load_model, register
from napari_nrf.models.base import EncodingModel
from napari_nrf.models.ensemble import EnsembleError, EnsembleModel, fit_voxelwise


@register
class ToyField(EncodingModel):
    """A tiny continuous kind for tests: r(img, x) = (f @ A) . [x/50, y/50, z/50, 1]."""

    kind = "toyfield-test"
    continuous = True

    def __init__(self, dim: int = 4, seed: int = 0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.dim = dim
        self.A = torch.nn.Parameter(torch.randn(dim, 4, generator=g))
        self.backbone_name = "efficientnet-lite0"

    def config(self):
        return {"dim": self.dim}

    def predict(self, features, coords=None, voxels=None, subject=None):
        xyz = torch.as_tensor(np.asarray(coords, np.float32)) / 50.0
        phi = torch.cat([xyz, torch.ones(len(xyz), 1)], 1)  # (N, 4)
        return (features["embedding"] @ self.A) @ phi.T


def _setup(n_img=30, v=50, k=3, seed=0):
    rng = np.random.default_rng(seed)
    coords = rng.uniform(-40, 40, (v, 3)).astype(np.float32)
    feats = {"embedding": torch.as_tensor(rng.normal(size=(n_img, 4)).astype(np.float32))}
    bases = [ToyField(seed=s) for s in range(k)]
    return coords, feats, bases


def test_fit_voxelwise_recovers_weights(rng):
    k, n, v = 3, 40, 25
    preds = rng.normal(size=(k, n, v))
    w = rng.normal(size=(v, k))
    b = rng.normal(size=v)
    r = np.einsum("knv,vk->nv", preds, w) + b
    w_hat, b_hat = fit_voxelwise(preds, r)
    np.testing.assert_allclose(w_hat, w, atol=1e-4)
    np.testing.assert_allclose(b_hat, b, atol=1e-4)
    with pytest.raises(EnsembleError, match="responses must be"):
        fit_voxelwise(preds, r[:, :3])


def test_ensemble_fit_predict_and_interpolate():
    coords, feats, bases = _setup()
    ens = EnsembleModel(bases, "sub-new", coords)
    assert ens.continuous
    true_w = np.tile([0.5, -1.0, 2.0], (len(coords), 1)).astype(np.float32)
    preds = ens.base_predictions(feats).numpy()
    resp = np.einsum("kbn,nk->bn", preds, true_w) + 0.3
    ens.fit(feats, resp)
    np.testing.assert_allclose(ens.weights.numpy(), true_w, atol=1e-3)
    out = ens.predict(feats).numpy()
    np.testing.assert_allclose(out, resp, atol=1e-3)
    # Voxel subsets and queries at the voxel centres give the same numbers.
    sub = ens.predict(feats, voxels=[3, 7]).numpy()
    np.testing.assert_allclose(sub, resp[:, [3, 7]], atol=1e-3)
    at = ens.predict(feats, coords=coords[[3, 7]]).numpy()
    np.testing.assert_allclose(at, sub, atol=1e-4)
    # Between voxels: a convex combination of neighbours; far away: the voxel average.
    w_mid, _ = ens.weights_at(coords[[0]] + 0.5)
    np.testing.assert_allclose(w_mid[0], true_w[0], atol=1e-3)
    w_far, b_far = ens.weights_at(np.array([[500.0, 0, 0]]))
    np.testing.assert_allclose(w_far[0], ens.weights.numpy().mean(0), atol=1e-6)
    with pytest.raises(EnsembleError, match="predicts subject"):
        ens.predict(feats, voxels=[0], subject="sub-other")


def test_ensemble_bundle_roundtrip(tmp_path):
    coords, feats, bases = _setup(v=20)
    ens = EnsembleModel(bases, "sub-new", coords, weights=np.random.default_rng(1).normal(size=(20, 3)),
                        bias=np.arange(20, dtype=np.float32))
    path = ens.save(tmp_path / "ens.safetensors")
    back = load_model(path)
    assert back.kind == "ensemble" and len(back.bases) == 3 and back.subject == "sub-new"
    torch.testing.assert_close(back.predict(feats), ens.predict(feats))
    q = np.array([[1.0, 2.0, 3.0], [60.0, 0.0, 0.0]])
    torch.testing.assert_close(back.predict(feats, coords=q), ens.predict(feats, coords=q))
