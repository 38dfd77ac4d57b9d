"""Qt-free parts behind the plugin widgets: top images of a region, image libraries,
3D picking along the view ray, the MNI status text. Fast: no backbone, no viewer."""

import numpy as np
import pytest

from napari_nrf import space
from napari_nrf.analysis import AnalysisCancelled, AnalysisError, top_images

from _standin_model import BLOB, BlobModel, colour_image


def _library(n=12):
    reds = np.linspace(0, 1, n)
    return np.stack([colour_image(r, 1 - r) for r in reds]), reds


def test_top_images_rank_by_region_response():
    model = BlobModel()
    imgs, reds = _library()
    feats = model.encode_images(list(imgs))
    xyz = space.Grid.from_extent(2.0, BLOB - 4, BLOB + 4).coords()
    res = top_images(model, feats, coords=xyz, k=3, batch_images=5)
    # the reddest images drive the left blob most, the bluest least (negative response)
    assert list(res.top) == [11, 10, 9]
    assert list(res.bottom) == [0, 1, 2]
    assert res.top_scores[0] > 0 > res.bottom_scores[0]
    assert np.all(np.diff(res.top_scores) <= 0) and res.n_points == len(xyz)
    # a region far from the blob has (almost) no response: scores near 0
    far = top_images(model, feats, coords=np.array([[40.0, 40, 40]]), k=2)
    assert np.abs(far.scores).max() < 1e-6


def test_top_images_voxels_progress_cancel_and_errors():
    model = BlobModel()
    imgs, _ = _library(6)
    feats = model.encode_images(list(imgs))
    seen = []
    res = top_images(model, feats, voxels=[0], subject="sub-01", k=10, batch_images=4,
                     progress=lambda d, t: seen.append((d, t)))
    assert len(res.top) == 6 and seen[-1] == (6, 6) and res.top[0] == 5
    with pytest.raises(AnalysisCancelled):
        top_images(model, feats, coords=[BLOB], cancel=lambda: True)
    with pytest.raises(AnalysisError, match="empty"):
        top_images(model, feats, coords=np.zeros((0, 3)))
    with pytest.raises(AnalysisError, match="either"):
        top_images(model, feats)


def test_image_library_folder_thumbnails_and_features(tmp_path):
    from PIL import Image

    from napari_nrf.library import ImageLibrary, LibraryError

    for i, r in enumerate([0.2, 0.9]):
        Image.fromarray(colour_image(r, size=100)).save(tmp_path / f"im{i}.png")
    (tmp_path / "notes.txt").write_text("not an image")
    lib = ImageLibrary.from_folder(tmp_path)
    assert len(lib) == 2 and lib.names == ["im0", "im1"]
    th = lib.thumbnail(1, 40)
    assert th.shape == (40, 40, 3) and th.dtype == np.uint8
    f = lib.features(BlobModel())
    assert f["embedding"].shape == (2, 1) and f["embedding"][1, 0] > f["embedding"][0, 0]
    with pytest.raises(LibraryError):
        ImageLibrary.from_folder(tmp_path / "missing")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(LibraryError, match="no image files"):
        ImageLibrary.from_folder(empty)


def test_ray_entry_point_hits_the_front_of_the_mask():
    from napari_nrf.widgets.region_widget import ray_entry_point

    g = space.Grid.mni(2.0)
    mask = space.sphere_mask(g, [0, 0, 0], 30)
    # looking along +x (world direction (z, y, x) = (0, 0, 1)) through the centre: enters at x = -30
    p = ray_entry_point(space.mni_to_world([0, 0, 0]), [0, 0, 1], mask, g)
    assert p[0] == pytest.approx(-30, abs=1.5) and abs(p[1]) < 1e-6
    assert ray_entry_point(space.mni_to_world([0, 80, 0]), [0, 0, 1], mask, g) is None


def test_cold_hot_is_transparent_below_threshold():
    from napari_nrf.widgets._render import cold_hot, volume_layer_data

    cm = cold_hot(0.4)
    rgba = cm.map(np.array([0.0, 0.45, 0.5, 0.55, 1.0]))
    assert rgba[2, 3] == 0 and rgba[1, 3] == 0 and rgba[3, 3] == 0      # |v| < 0.4 m hidden
    assert rgba[0, 3] == 1 and rgba[-1, 3] == 1
    assert rgba[-1, 0] == 1 and rgba[0, 2] == 1                         # + red/yellow, - blue/cyan
    g = space.Grid.mni(4.0)
    vol = np.full(g.shape, np.nan, np.float32)
    vol[10, 10, 10] = 2.0
    vol[11, 10, 10] = -1.0
    data, kw, kind = volume_layer_data(vol, g, "x")
    lo, hi = kw["contrast_limits"]
    assert kind == "image" and lo == -hi and hi > 0 and np.isfinite(data).all()
    assert np.isnan(kw["metadata"]["napari_nrf"]["volume"]).sum() == vol.size - 2


def test_coverage_mask_follows_the_model_voxels():
    from napari_nrf.query import coverage_mask

    g3 = space.Grid.mni(3.0)
    xyz = g3.coords(space.brain_mask(g3))
    model = BlobModel()
    model.subjects = {"sub-01": xyz[xyz[:, 1] < -40]}
    g = space.Grid.mni(2.0)
    m = coverage_mask(model, g)
    pts = g.coords(m)
    assert pts[:, 1].max() <= -38 and m.sum() > 0.7 * (g.coords(space.brain_mask(g))[:, 1] < -40).sum()
