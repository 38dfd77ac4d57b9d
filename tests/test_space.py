"""MNI space: grids, masks, NIfTI in/out and napari placement."""

import nibabel as nib
import numpy as np
import pytest

from napari_nrf import space
from napari_nrf.space import Grid, SpaceError

FSL_2MM = np.array([[-2.0, 0, 0, 90], [0, 2, 0, -126], [0, 0, 2, -72], [0, 0, 0, 1]])
NILEARN_2MM = np.array([[2.0, 0, 0, -98], [0, 2, 0, -134], [0, 0, 2, -72], [0, 0, 0, 1]])


def blob_image(affine, shape, center=(-40.0, -20.0, 10.0), sigma=4.0, code=4):
    """A Gaussian blob at MNI ``center`` on the grid of ``affine`` (any orientation)."""
    ijk = np.stack(np.meshgrid(*[np.arange(s) for s in shape], indexing="ij"), -1)
    xyz = ijk @ affine[:3, :3].T + affine[:3, 3]
    d2 = ((xyz - np.asarray(center)) ** 2).sum(-1)
    img = nib.Nifti1Image(np.exp(-d2 / (2 * sigma**2)).astype(np.float32), affine)
    img.set_sform(affine, code=code)
    img.set_qform(affine, code=code)
    return img


def peak_mni(volume, grid):
    return grid.index_to_world(np.unravel_index(np.nanargmax(volume), grid.shape))


@pytest.mark.parametrize("res", [0.5, 1.0, 1.5, 2.0, 3.7, 8.0])
def test_grid_any_resolution(res):
    g = Grid.mni(res)
    lo, hi = g.extent
    assert np.allclose(g.zooms, res)
    assert np.all(lo >= space.MNI_BOX_MIN - res) and np.all(hi <= space.MNI_BOX_MAX + res)
    ijk = np.array([[0, 0, 0], [3, 4, 5]])
    assert np.allclose(g.world_to_index(g.index_to_world(ijk)), ijk)
    assert np.allclose(g.affine[:3, :3], np.diag([res] * 3))


def test_grid_rejects_bad_resolution():
    with pytest.raises(SpaceError, match="resolution"):
        Grid.mni(0.2)
    with pytest.raises(SpaceError, match="resolution"):
        Grid.mni(10)


def test_iter_points_covers_mask_in_chunks():
    g = Grid.mni(4.0)
    mask = space.brain_mask(g)
    seen = []
    for idx, xyz in g.iter_points(1000, mask):
        assert len(idx) <= 1000 and xyz.shape == (len(idx), 3) and xyz.dtype == np.float32
        seen.append(idx)
    seen = np.concatenate(seen)
    assert np.array_equal(seen, np.flatnonzero(mask))
    assert np.allclose(g.coords(mask), g.index_to_world(np.argwhere(mask)))


def test_masks_sizes_and_sphere():
    g = Grid.from_affine((99, 117, 95), NILEARN_2MM)
    n = int(space.brain_mask(g).sum())
    assert 200_000 < n < 260_000  # about 235k at 2 mm
    gm = space.gm_mask(Grid.mni(2.0))
    assert 0 < gm.sum() < space.brain_mask(Grid.mni(2.0)).sum()
    s = space.sphere_mask(Grid.mni(1.0), (-40, -20, 10), 6.0)
    xyz = Grid.mni(1.0).coords(s)
    assert np.all(np.linalg.norm(xyz - [-40, -20, 10], axis=1) <= 6.0)
    assert abs(s.sum() - 4 / 3 * np.pi * 6**3) / (4 / 3 * np.pi * 6**3) < 0.1


def test_roi_mask_nearest_neighbour(tmp_path):
    labels = np.zeros((91, 109, 91), np.int16)
    labels[60:70, 50:56, 38:44] = 3  # FSL grid indices; x = 90 - 2 i < 0 => left
    labels[20:30, 50:56, 38:44] = 7
    img = nib.Nifti1Image(labels, FSL_2MM)
    img.set_sform(FSL_2MM, code=4)
    p = tmp_path / "atlas.nii.gz"
    nib.save(img, p)
    g = Grid.mni(1.0)
    m3 = space.roi_mask(g, p, values=3)
    assert m3.any() and np.all(g.coords(m3)[:, 0] < 0)
    both = space.resolve_mask(str(p), g)
    assert both.sum() > m3.sum()


def test_blob_left_hemisphere_in_napari_world_and_nifti(tmp_path):
    from napari.components import ViewerModel

    g = Grid.mni(2.0)
    vol = np.exp(-((g.coords() - [-40, -20, 10]) ** 2).sum(1) / 32).reshape(g.shape)
    data, kw = space.layer_data(vol, g)
    vm = ViewerModel()
    layer = vm.add_image(data, **kw)
    peak_data_idx = np.unravel_index(np.argmax(layer.data), layer.data.shape)
    world = np.asarray(layer.data_to_world(peak_data_idx))
    mni = space.world_to_mni(world)
    assert np.allclose(mni, [-40, -20, 10], atol=1.0)
    assert mni[0] < 0  # left hemisphere
    # The written NIfTI places it at x < 0 too, read with plain nibabel (no helper of ours).
    p = space.save_nifti(vol, g, tmp_path / "blob.nii.gz")
    img = nib.load(p)
    assert int(img.header["sform_code"]) == 4 and int(img.header["qform_code"]) == 4
    ijk = np.unravel_index(np.argmax(img.get_fdata()), img.shape)
    assert nib.affines.apply_affine(img.affine, ijk)[0] == pytest.approx(-40, abs=1.0)


def test_nifti_layer_nifti_round_trip_exact(tmp_path):
    img = blob_image(FSL_2MM, (91, 109, 91))
    vol, grid = space.load_nifti(img)
    data, kw = space.layer_data(vol, grid)
    vol2, grid2 = space.layer_to_volume(data, kw["scale"], kw["translate"])
    assert grid2 == grid and np.array_equal(vol2, vol)
    p = space.save_nifti(vol2, grid2, tmp_path / "rt.nii")
    vol3, grid3 = space.load_nifti(p)
    assert grid3 == grid and np.array_equal(vol3, vol)


def test_fsl_and_nilearn_grids_same_peak():
    a, ga = space.load_nifti(blob_image(FSL_2MM, (91, 109, 91)))
    b, gb = space.load_nifti(blob_image(NILEARN_2MM, (99, 117, 95)))
    assert np.all(ga.zooms > 0)  # the FSL x flip was undone
    assert np.allclose(peak_mni(a, ga), peak_mni(b, gb))
    assert np.allclose(peak_mni(a, ga), [-40, -20, 10])
    # Explicit resampling of one onto the other keeps the peak.
    r = space.resample(a, ga, gb)
    assert np.allclose(peak_mni(r, gb), [-40, -20, 10])


def test_non_mni_and_oblique_inputs_are_refused():
    with pytest.raises(SpaceError, match="scanner"):
        space.load_nifti(blob_image(NILEARN_2MM, (20, 20, 20), code=1))
    th = np.deg2rad(20)
    rot = np.array([[np.cos(th), -np.sin(th), 0, -20], [np.sin(th), np.cos(th), 0, -20], [0, 0, 1, 0], [0, 0, 0, 1]])
    with pytest.raises(SpaceError, match="oblique"):
        space.load_nifti(blob_image(rot @ NILEARN_2MM, (20, 20, 20)))
    # ... unless the user says the header is wrong: then it is accepted.
    vol, g = space.load_nifti(blob_image(NILEARN_2MM, (99, 117, 95), code=1), assume_mni=True)
    assert vol.shape == (99, 117, 95)


def test_points_to_volume_and_sampling():
    g = Grid.mni(4.0)
    xyz = np.array([[-40.0, -20, 10], [40, -20, 10]])
    v = space.points_to_volume(xyz, np.array([1.0, 2.0]), g)
    assert np.nansum(v) == 3 and np.isnan(v).sum() == g.n_points - 2
    dense = np.arange(g.n_points, dtype=np.float32).reshape(g.shape)
    assert np.allclose(space.sample_volume(dense, g, g.coords()[:50], order=1), dense.ravel()[:50])


def test_nrf_normalisation_matches_official_constants():
    u = space.nrf_normalise([[-92.0, -126.0, -72.0], [90.0, 92.0, 110.0]])
    assert np.allclose(u, [[0, 0, 0], [1, 1, 1]])


def test_masks_and_template_are_cached_on_disk(tmp_path, monkeypatch):
    """Resampled masks and the template are stored once under the cache folder and read
    back identical (later viewer starts skip nilearn); a corrupt file is recomputed."""
    monkeypatch.setenv("NAPARI_NRF_CACHE", str(tmp_path))
    g = space.Grid.from_extent(4.0, (-60, -100, -40), (60, 60, 70))
    space._mask_cached.cache_clear()
    first = space.brain_mask(g)
    tmpl = space.template(g)
    files = sorted(p.name for p in (tmp_path / "space").glob("*.npy"))
    assert len(files) == 2 and any(f.startswith("brain-mask") for f in files)
    assert tmpl.dtype == np.float32 and tmpl.shape == g.shape
    space._mask_cached.cache_clear()
    again = space.brain_mask(g)
    assert np.array_equal(first, again) and again.dtype == bool and not again.flags.writeable
    assert np.array_equal(space.template(g), tmpl)
    for p in (tmp_path / "space").glob("brain-mask*.npy"):
        p.write_bytes(b"not a numpy file")
    space._mask_cached.cache_clear()
    assert np.array_equal(space.brain_mask(g), first)
