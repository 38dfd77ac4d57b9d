"""The streamed, threaded rest-map path (issue 16 speed work) equals the plain formula:
scipy's detrend and sosfiltfilt over all voxels, nilearn.signal.clean, beta = r.z / r.r,
z-scored over the brain (the implementation before the speed-up), within float tolerance."""

import numpy as np
import pytest

from napari_nrf import space
from napari_nrf.data.restmap import _bandpass, rest_map, seed_mask

G6 = space.Grid.mni(6.0)


def _reference(run, t_r, grid, confounds=None, band=(0.01, 0.1)):
    """The rest map in one go, float64, no chunks (the unoptimised definition)."""
    from nilearn import signal
    from scipy.signal import detrend, sosfiltfilt

    brain = space.brain_mask(grid)
    x = run[brain].T.astype(np.float64)  # (T, V)
    fin = np.isfinite(x).all(0)
    sd = np.where(fin, np.nan_to_num(x).std(0), 0.0)
    valid = sd > 1e-6 * max(1.0, sd.max())
    sos = _bandpass(t_r, band)

    def clean(v, conf):
        v = detrend(v, axis=0, type="linear")
        v = sosfiltfilt(sos, v, axis=0, padlen=min(3 * (2 * len(sos) + 1), len(v) - 1))
        return signal.clean(v, detrend=False, standardize="zscore_sample", confounds=conf,
                            standardize_confounds=True, filter=False, t_r=t_r)

    conf = None
    if confounds is not None:
        conf = sosfiltfilt(sos, detrend(confounds, axis=0, type="linear"), axis=0,
                           padlen=min(3 * (2 * len(sos) + 1), len(confounds) - 1))
    seed = seed_mask("pcc", grid)[0][brain] & valid
    r = clean(x[:, seed].mean(1)[:, None], conf)[:, 0]
    beta = np.zeros(x.shape[1])
    beta[valid] = (r @ clean(x[:, valid], conf)) / (r @ r)
    b = beta[valid]
    z = (beta - b.mean()) / b.std()
    vol = np.zeros(grid.shape, np.float32)
    m = np.zeros(grid.shape, bool)
    m[brain] = valid
    vol[m] = z[valid]
    return vol, m


@pytest.fixture(scope="module")
def run6():
    from napari_nrf.simulate.rest import resting_run
    from napari_nrf.simulate.subjects import VirtualSubject

    run = resting_run(VirtualSubject(index=0, seed=0, displacement_mm=5.0), G6, n_volumes=90)
    return run


@pytest.mark.parametrize("as_int16", [False, True])
def test_fast_rest_map_equals_the_plain_formula(run6, as_int16):
    run = run6.astype(np.float32)
    if as_int16:  # as scanners write BOLD: int16 around a baseline, constant voxels too
        run = np.round(1000 + 50 * run).astype(np.int16)
        run[20, 20, 15, :] = 1000  # a constant brain voxel: no signal, left out
    ref, ref_mask = _reference(run, 2.0, G6)
    for kw in ({}, {"chunk_voxels": 333, "chunk_volumes": 7, "workers": 3}, {"workers": 1}):
        got = rest_map(run, 2.0, grid=G6, **kw)
        assert (got.mask == ref_mask).all()
        np.testing.assert_allclose(got.volume, ref, atol=2e-5, rtol=0)


def test_fast_rest_map_equals_the_plain_formula_with_confounds_and_nans(run6):
    run = run6.astype(np.float32).copy()
    run[18, 22, 14, 5] = np.nan  # a voxel with a missing value is left out, as before
    conf = np.random.default_rng(1).standard_normal((run.shape[3], 3))
    ref, ref_mask = _reference(run, 2.0, G6, confounds=conf)
    got = rest_map(run, 2.0, grid=G6, confounds=conf, chunk_voxels=500)
    assert (got.mask == ref_mask).all() and not got.mask[18, 22, 14]
    np.testing.assert_allclose(got.volume, ref, atol=2e-5, rtol=0)
