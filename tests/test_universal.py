"""Universal encoder: shapes, voxel/coordinate queries, bundles, subjects, errors."""

import numpy as np
import pytest
import torch

from napari_nrf.models import load_model
from napari_nrf.models.universal import UniversalEncoder, UniversalModelError

SHAPES = {"s16": (196, 24), "s32": (49, 32), "embedding": (64,)}


def _model(subjects=None, **kw):
    rng = np.random.default_rng(1)
    subjects = subjects or {"sub-01": rng.uniform(-60, 60, (30, 3)), "sub-02": rng.uniform(-60, 60, (20, 3))}
    cfg = dict(embed_dim=16, channels=8, dropout=0.0)
    cfg.update(kw)
    return UniversalEncoder.for_features(SHAPES, subjects, backbone_name="efficientnet-lite0", **cfg).eval()


def _feats(b=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    return {k: torch.randn((b,) + v, generator=g) for k, v in SHAPES.items()}


def test_shapes_and_voxel_queries():
    m = _model()
    f = _feats()
    with torch.no_grad():
        full = m.predict(f, subject="sub-01")
        part = m.predict(f, voxels=np.array([3, 0, 7]), subject="sub-01")
        chunked = m.forward_embeddings(f, m.voxel_embeddings["sub-01"], max_elements=500)
    assert full.shape == (3, 30) and full.dtype == torch.float32
    assert torch.allclose(part, full[:, [3, 0, 7]], atol=1e-6)
    assert torch.allclose(chunked, full, atol=1e-5)
    # Voxels differ by their embeddings only: two voxels given the same embedding agree.
    with torch.no_grad():
        m.voxel_embeddings["sub-01"][5] = m.voxel_embeddings["sub-01"][2]
        y = m.predict(f, voxels=[2, 5], subject="sub-01")
    assert torch.allclose(y[:, 0], y[:, 1])
    assert m.config()["levels"] == [["s16", 196, 24], ["s32", 49, 32], ["embedding", 1, 64]]


def test_coords_map_to_nearest_voxel_or_nan():
    m = _model()
    xyz = m.subjects["sub-02"]
    f = _feats()
    with torch.no_grad():
        at_vox = m.predict(f, voxels=[4, 9], subject="sub-02")
        near = m.predict(f, coords=xyz[[4, 9]] + 0.4, subject="sub-02")
        far = m.predict(f, coords=np.array([[500.0, 0, 0]]), subject="sub-02")
    assert torch.allclose(at_vox, near)
    assert torch.isnan(far).all()
    assert not m.continuous


def test_bundle_round_trip_keeps_subjects_and_predictions(tmp_path):
    m = _model()
    f = _feats()
    path = m.save(tmp_path / "uni.safetensors")
    m2 = load_model(path)
    assert m2.kind == "universal" and isinstance(m2, UniversalEncoder)
    assert set(m2.subjects) == {"sub-01", "sub-02"}
    np.testing.assert_allclose(m2.subjects["sub-01"], m.subjects["sub-01"].astype(np.float32))
    with torch.no_grad():
        for s in ("sub-01", "sub-02"):
            assert torch.equal(m2.predict(f, subject=s), m.predict(f, subject=s))


def test_add_subject_and_embedding_filter():
    m = _model()
    new = np.random.default_rng(3).uniform(-50, 50, (12, 3))
    m.add_subject("sub-new", new)
    assert m.embeddings("sub-new").shape == (12, 16)
    assert m.config()["n_voxels"]["sub-new"] == 12
    keep = m.embedding_filter("sub-new")
    trainable = [n for n, _ in m.named_parameters() if keep(n)]
    assert trainable == ["voxel_embeddings.sub-new"]
    # Gradients of a new subject's predictions reach its embeddings.
    m.train()
    m.predict(_feats(), subject="sub-new").square().mean().backward()
    assert m.voxel_embeddings["sub-new"].grad.abs().sum() > 0
    assert m.voxel_embeddings["sub-01"].grad is None
    m.add_subject("sub-mean", new, init="mean")
    mean = torch.cat([m.voxel_embeddings[s] for s in ("sub-01", "sub-02", "sub-new")]).mean(0)
    assert torch.allclose(m.voxel_embeddings["sub-mean"].mean(0), mean, atol=0.05)


def test_add_subject_nearest_init_averages_the_nearest_voxels():
    m = _model()
    xyz1, xyz2 = m.subjects["sub-01"], m.subjects["sub-02"]
    new = np.stack([xyz1[4], xyz2[7]]) + 0.1  # next to a voxel of each subject
    m.add_subject("sub-nn", new, init="nearest")
    e1, e2 = m.embeddings("sub-01"), m.embeddings("sub-02")
    d1 = np.linalg.norm(xyz1[None] - new[:, None], axis=-1).argmin(1)
    d2 = np.linalg.norm(xyz2[None] - new[:, None], axis=-1).argmin(1)
    assert d1[0] == 4 and d2[1] == 7
    want = (e1[d1] + e2[d2]) / 2
    np.testing.assert_allclose(m.embeddings("sub-nn"), want, atol=0.01 * 5)  # + noise of sd 0.01
    with pytest.raises(UniversalModelError, match="'nearest'"):
        m.add_subject("sub-x", new, init="bogus")


def test_errors_are_clear():
    m = _model()
    f = _feats()
    with pytest.raises(UniversalModelError, match="several subjects"):
        m.predict(f)
    with pytest.raises(UniversalModelError, match="unknown subject"):
        m.predict(f, subject="sub-99")
    with pytest.raises(UniversalModelError, match="level 's32'"):
        m.predict({k: v for k, v in f.items() if k != "s32"}, subject="sub-01")
    with pytest.raises(UniversalModelError, match="out of range"):
        m.predict(f, voxels=[30], subject="sub-01")
    with pytest.raises(UniversalModelError, match="already"):
        m.add_subject("sub-01", np.zeros((2, 3)))
    with pytest.raises(UniversalModelError, match=r"\(V, 3\)"):
        m.add_subject("sub-x", np.zeros((2, 2)))
    one = _model({"only": np.zeros((4, 3))})
    assert one.predict(f).shape == (3, 4)  # a single subject needs no name


def test_query_engine_places_subject_voxels_on_a_grid():
    """What the Response volume widget does with a universal model: predictions at the
    subject's voxels, placed on the chosen MNI grid (NaN where the subject has no voxel)."""
    from napari_nrf import space
    from napari_nrf.query import QueryEngine

    g = space.Grid.mni(4.0)
    xyz = g.coords(space.brain_mask(g))[::50]
    m = _model({"sub-a": xyz})
    f = _feats(2)
    vol = QueryEngine(m, device="cpu").volume(f, g, subject="sub-a")
    with torch.no_grad():
        y = m.predict(f, subject="sub-a").numpy()
    ijk, _ = g.nearest_index(xyz)
    np.testing.assert_allclose(vol[(slice(None),) + tuple(ijk.T)], y, rtol=1e-4, atol=1e-5)
    assert np.isfinite(vol).sum() == 2 * len(xyz)
