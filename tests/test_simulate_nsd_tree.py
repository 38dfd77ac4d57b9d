"""The simulator's NSD-like file tree reads back through the NSD importer."""

import numpy as np
import pytest

from napari_nrf.data.responseset import ResponseSet
from napari_nrf.simulate import SimulationError, simulate
from napari_nrf.simulate.nsd_tree import BETAS, EXPDESIGN, ROI, STIMULI, write_nsd_tree


def test_nsd_tree_roundtrip(tmp_path):
    rs = simulate(n_subjects=2, n_images=12, n_shared=3, n_reps=2, seed=1, max_voxels=120, return_trials=True)
    root = write_nsd_tree(rs, tmp_path / "nsd", max_trials_per_session=12)
    for rel in (EXPDESIGN, STIMULI, ROI.format(subj="subj02") + "/nsdgeneral.nii.gz",
                BETAS.format(subj="subj01") + "/betas_session02.nii"):
        assert (root / rel).exists(), rel
    from napari_nrf.data.nsd import import_nsd_subject

    out = import_nsd_subject(root, 1, tmp_path / "sub-01.h5")
    imp = ResponseSet.load(out)
    r = rs[0]
    assert imp.n_voxels == r.n_voxels and imp.n_images == r.n_images
    # same voxels (order may differ) and the same images by id
    o_imp = np.lexsort(imp.coords.T)
    o_sim = np.lexsort(r.coords.T)
    np.testing.assert_allclose(imp.coords[o_imp], r.coords[o_sim], atol=1e-3)
    assert set(imp.image_ids) == set(r.image_ids)
    rows = np.array([list(r.image_ids).index(i) for i in imp.image_ids])
    a = imp.responses[:, o_imp]
    b = r.responses[rows][:, o_sim]
    corr = [np.corrcoef(a[:, v], b[:, v])[0, 1] for v in range(r.n_voxels)]
    assert np.median(corr) > 0.9  # per-session z-scoring and int16 rounding only
    np.testing.assert_array_equal(np.sort(imp.image_ids[imp.split == 2]), np.sort(r.image_ids[r.split == 2]))


def test_nsd_tree_needs_trials(tmp_path):
    rs = simulate(n_subjects=1, n_images=4, n_shared=1, n_reps=2, max_voxels=20)
    with pytest.raises(SimulationError):
        write_nsd_tree(rs, tmp_path)
