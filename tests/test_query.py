"""The query engine: grids, masks, chunking, caches, cancel, voxel-indexed models."""

import numpy as np
import pytest
import torch

from napari_nrf import space
from napari_nrf.models.base import EncodingModel
from napari_nrf.models.nrf import build_nrf
from napari_nrf.query import QueryCancelled, QueryEngine, QueryError

from _nrf_data import fake_features


@pytest.fixture(scope="module")
def model():
    return build_nrf("efficientnet-lite0", "tiny", seed=3).eval()


@pytest.fixture(scope="module")
def feats():
    return {k: torch.from_numpy(v) for k, v in fake_features(2, seed=4).items()}


GRID = space.Grid.from_extent(6.0, [-60, -90, -30], [60, 40, 60])


def test_volume_matches_model_predictions_and_mask(model, feats):
    eng = QueryEngine(model, device="cpu")
    mask = np.zeros(GRID.shape, bool)
    mask[2:9, 3:12, 1:10] = True
    vol = eng.volume(feats, GRID, mask=mask)
    assert vol.shape == (2,) + GRID.shape and vol.dtype == np.float32
    assert np.isnan(vol[:, ~mask]).all() and np.isfinite(vol[:, mask]).all()
    with torch.no_grad():
        ref = model.predict_reference(feats, GRID.coords(mask)).numpy()
    np.testing.assert_allclose(vol[:, mask], ref, atol=1e-5)


def test_small_chunks_give_the_same_volume_and_report_progress(model, feats):
    full = QueryEngine(model, device="cpu").volume(feats, GRID)
    calls = []
    eng = QueryEngine(model, device="cpu", chunk_bytes=1, coord_cache_bytes=0)
    vol = eng.volume(feats, GRID, progress=lambda d, t: calls.append((d, t)))
    np.testing.assert_allclose(vol, full, atol=1e-6)
    assert eng.last_chunk == 256 and len(calls) == -(-GRID.n_points // 256)
    assert calls[-1] == (GRID.n_points, GRID.n_points)


def test_coordinate_half_is_cached_per_grid_and_mask(model, feats):
    eng = QueryEngine(model, device="cpu")
    eng.volume(feats, GRID, mask="brain")
    eng.volume(feats, GRID, mask="brain")
    assert len(eng._coord_cache) == 1
    eng.volume(feats, space.Grid.from_extent(8.0, [-60, -90, -30], [60, 40, 60]), mask="brain")
    assert len(eng._coord_cache) == 2


def test_points_and_cancel(model, feats):
    eng = QueryEngine(model, device="cpu", chunk_bytes=1)
    xyz = np.random.default_rng(0).uniform(-60, 60, (700, 3)).astype(np.float32)
    with torch.no_grad():
        ref = model.predict(feats, coords=xyz).numpy()
    np.testing.assert_allclose(eng.points(feats, xyz), ref, atol=1e-5)
    n = {"k": 0}

    def cancel():
        n["k"] += 1
        return n["k"] > 1

    with pytest.raises(QueryCancelled):
        eng.volume(feats, GRID, cancel=cancel)
    with pytest.raises(QueryError, match=r"\(N, 3\)"):
        eng.points(feats, xyz[:, :2])


def test_image_features_are_cached_per_image(model, effnet):
    model._backbone = effnet
    eng = QueryEngine(model, device="cpu")
    img = (np.random.default_rng(0).random((32, 32, 3)) * 255).astype(np.uint8)
    f1 = eng.image_features([img])
    calls = []
    model.encode_images = lambda *a, **k: calls.append(1)  # a second pass would fail loudly
    f2 = eng.image_features([img, img])
    del model.encode_images
    assert not calls and f2["embedding"].shape == (2, 1280)
    torch.testing.assert_close(f2["embedding"][1], f1["embedding"][0])
    vol = eng.volume([img], GRID, mask="brain")
    assert vol.shape == (1,) + GRID.shape


class _VoxelModel(EncodingModel):
    """A voxel-indexed model: the response of voxel v is v (for any image)."""

    kind = "test-voxels"
    continuous = False

    def __init__(self, xyz):
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(1))
        self.subjects = {"sub-a": np.asarray(xyz, np.float32)}

    def predict(self, features, coords=None, voxels=None, subject=None):
        b = next(iter(features.values())).shape[0]
        return torch.as_tensor(voxels, dtype=torch.float32)[None].repeat(b, 1) + self.w


def test_voxel_indexed_models_are_placed_at_the_nearest_grid_cell(feats):
    xyz = np.array([[0.0, 0.0, 0.0], [12.4, -30.0, 6.0], [0.9, 0.0, 0.0]], np.float32)
    eng = QueryEngine(_VoxelModel(xyz), device="cpu")
    g = space.Grid.from_extent(4.0, [-20, -40, -20], [20, 20, 20])
    vol = eng.volume(feats, g)
    ijk, _ = g.nearest_index(xyz)
    assert vol[0][tuple(ijk[1])] == 1.0
    assert vol[1][tuple(ijk[0])] == 1.0  # voxels 0 and 2 share a cell: their mean
    assert np.isfinite(vol[0]).sum() == 2
    with pytest.raises(QueryError, match="unknown subject"):
        eng.volume(feats, g, subject="sub-b")


def test_cuda_out_of_memory_halves_the_chunk_and_goes_on(model, monkeypatch):
    eng = QueryEngine(model, device="cpu")
    eng.device = torch.device("cuda")  # only the OOM branch is exercised; nothing runs on a GPU
    monkeypatch.setattr(torch.cuda, "empty_cache", lambda: None)
    done = []

    def run(s, e):
        if e - s > 300:
            raise torch.OutOfMemoryError("CUDA out of memory (simulated)")
        done.append((s, e))

    eng._stream(1000, 1024, run, None, None)
    assert eng.last_chunk == 256 and done[0] == (0, 256) and done[-1][1] == 1000
    assert sum(e - s for s, e in done) == 1000


def test_cuda_out_of_memory_while_caching_the_point_state_skips_the_cache(model, monkeypatch):
    eng = QueryEngine(model, device="cpu")
    eng.device = torch.device("cuda")  # only the OOM branch is exercised; nothing runs on a GPU
    monkeypatch.setattr(torch.cuda, "empty_cache", lambda: None)

    def xyz_fn(s, e):
        raise torch.OutOfMemoryError("CUDA out of memory (simulated)")

    assert eng._points_cached(("grid",), xyz_fn, 1000, 256) is None
    assert not eng._coord_cache


def test_data_mask_keeps_the_points_near_the_training_voxels(model, feats):
    """mask="data": only where the field rests on training voxels (an NRF answers everywhere)."""
    from napari_nrf.query import coverage_mask

    g = space.Grid.mni(6.0)
    m0 = build_nrf("efficientnet-lite0", "tiny", seed=3).eval()
    m0.subjects = {"sub-01": np.array([[30, -80, 0], [32, -80, 0], [-30, -80, 2]], np.float32)}
    vol = QueryEngine(m0).volume(feats, g, mask="data")
    m = coverage_mask(m0, g)
    assert m.any() and (m <= space.brain_mask(g)).all()
    assert np.array_equal(np.isfinite(vol[0]), m)
    with pytest.raises(space.SpaceError, match="needs the model"):
        space.resolve_mask("data", g)


def test_coverage_mask_is_cancellable_and_the_pointwise_brain_lookup_agrees(model, feats, monkeypatch):
    """The "data" extent's mask: Cancel is heard during it (a 0.5 mm grid spends seconds
    there), and the large-grid path (brain mask looked up at the candidates only) gives
    the same mask as the whole-grid one."""
    from napari_nrf.query import coverage_mask

    monkeypatch.setattr(model, "subjects", {"a": np.array([[-40.0, -20, 10], [-38, -20, 10], [30, -60, 0]],
                                                          np.float32)})
    g = space.Grid.mni(4.0)
    whole = coverage_mask(model, g)
    assert whole.any() and whole.sum() < space.brain_mask(g).sum()
    monkeypatch.setattr(space, "DISK_CACHE_MAX_POINTS", 0)  # every grid "too big": point-wise lookup
    assert np.array_equal(coverage_mask(model, g), whole)
    calls = []

    def cancel():
        calls.append(1)
        return len(calls) > 1

    with pytest.raises(QueryCancelled):
        coverage_mask(model, g, cancel=cancel)
    eng = QueryEngine(model, device="cpu")
    with pytest.raises(QueryCancelled):
        eng.volume(feats, g, mask="data", cancel=lambda: True)
