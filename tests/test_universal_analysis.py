"""k-means cluster maps of voxel embeddings (analysis.py, the Universal encoder's functions)."""

import numpy as np
import pytest
import torch
from sklearn.metrics import adjusted_rand_score

from napari_nrf.analysis import (AnalysisError, cluster_embeddings, cluster_labels_volume, cluster_table,
                                 cluster_top_images)
from napari_nrf.space import Grid


def _planted(rng, n=(400, 300), k=4, e=16, noise=0.15):
    """Embeddings of two subjects drawn around k shared directions (scale differs per voxel)."""
    centers = rng.normal(size=(k, e))
    out, truth = {}, {}
    for i, v in enumerate(n):
        lab = rng.integers(0, k, v)
        scale = rng.uniform(0.5, 3.0, (v, 1))  # L2 normalisation must remove this
        out[f"sub-0{i + 1}"] = (centers[lab] + noise * rng.normal(size=(v, e))) * scale
        truth[f"sub-0{i + 1}"] = lab
    return out, truth


@pytest.mark.parametrize("method", ["sklearn", "torch"])
def test_kmeans_recovers_planted_clusters_across_subjects(method, rng):
    emb, truth = _planted(rng)
    res = cluster_embeddings(emb, k=4, method=method, seed=0)
    assert set(res.labels) == {"sub-01", "sub-02"} and res.k == 4
    assert res.labels["sub-01"].shape == (400,) and res.labels["sub-01"].dtype == np.int32
    pred = np.concatenate([res.labels[s] for s in emb])
    assert adjusted_rand_score(np.concatenate([truth[s] for s in emb]), pred) > 0.95
    np.testing.assert_allclose(np.linalg.norm(res.centers, axis=1), 1, atol=1e-5)


def test_kmeans_bad_input(rng):
    with pytest.raises(AnalysisError, match="k must be"):
        cluster_embeddings(rng.normal(size=(10, 4)), k=11)
    with pytest.raises(AnalysisError, match="different sizes"):
        cluster_embeddings({"a": np.ones((5, 4)), "b": np.ones((5, 3))}, k=2)
    with pytest.raises(AnalysisError, match="method"):
        cluster_embeddings(rng.normal(size=(10, 4)), k=2, method="gmm")


def test_labels_volume_places_clusters_in_mni():
    g2 = Grid.mni(2)
    # A subject with 2 mm voxels: left hemisphere cluster 0, right hemisphere cluster 1.
    xyz = np.array([[x, y, z] for x in range(-40, 41, 2) if x != 0 for y in (-80, -78) for z in (0, 2)], float)
    lab = (xyz[:, 0] > 0).astype(int)
    vol = cluster_labels_volume(xyz, lab, g2)
    assert vol.shape == g2.shape and vol.dtype == np.int32
    assert set(np.unique(vol)) == {0, 1, 2}
    ijk, _ = g2.nearest_index(np.array([[-20.0, -80, 0], [20.0, -80, 0], [0.0, 0, 40]]))
    assert [vol[tuple(i)] for i in ijk] == [1, 2, 0]  # x < 0 -> cluster 0 -> label 1
    assert (vol > 0).sum() == len(xyz)
    # A finer display grid is filled without holes: 8 1-mm voxels per 2-mm voxel.
    g1 = Grid.from_extent(1.0, (-45, -85, -5), (45, -70, 5))
    vol1 = cluster_labels_volume(xyz, lab, g1)
    assert (vol1 > 0).sum() >= 8 * len(xyz) * 0.9
    ijk1, _ = g1.nearest_index(np.array([[-21.0, -79, 1]]))
    assert vol1[tuple(ijk1[0])] == 1


def test_cluster_table(rng):
    emb, _ = _planted(rng, n=(60, 40), k=3)
    res = cluster_embeddings(emb, k=3, method="sklearn")
    coords = {s: rng.uniform(-50, 50, (len(e), 3)) for s, e in emb.items()}
    t = cluster_table(res, coords)
    assert list(t["label"]) == [1, 2, 3]
    assert t["size"].sum() == 100
    assert np.array_equal(t["size_sub-01"] + t["size_sub-02"], t["size"])
    c0 = np.concatenate([coords[s][res.labels[s] == 0] for s in emb]).mean(0)
    np.testing.assert_allclose([t["x_mm"][0], t["y_mm"][0], t["z_mm"][0]], c0)
    assert all(n == 2 for n in t["n_subjects"]) and t["subjects"][0] == "sub-01,sub-02"


def test_top_images_per_cluster_follow_the_model():
    from napari_nrf.models.universal import UniversalEncoder

    shapes = {"embedding": (8,)}
    m = UniversalEncoder.for_features(shapes, {"s": np.zeros((6, 3))}, embed_dim=4, channels=4, dropout=0.0).eval()
    feats = {"embedding": torch.randn(10, 8, generator=torch.Generator().manual_seed(0))}
    res = cluster_embeddings({"s": m.embeddings("s")}, k=2, method="sklearn")
    top = cluster_top_images(m, feats, res, top=3)
    with torch.no_grad():
        y = m.predict(feats, subject="s").numpy()
    for c in range(2):
        mean = y[:, res.labels["s"] == c].mean(1)
        idx, val = top[c]
        assert list(idx) == list(np.argsort(-mean)[:3])
        np.testing.assert_allclose(val, mean[idx], rtol=1e-5)
