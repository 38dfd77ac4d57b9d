"""Virtual subjects: determinism, retinotopy, category selectivity, smoothness, noise ceiling."""

import numpy as np
import pytest

from napari_nrf.data.responseset import ResponseSet
from napari_nrf.simulate import (
    CATEGORIES,
    SimulationError,
    VirtualSubject,
    describe,
    make_parametric,
    make_stimuli,
    make_stimulus_set,
    simulate,
    stimulus_descriptors,
    subject_from_meta,
    truth_at,
)
from napari_nrf.simulate.stimuli import make_stimulus


@pytest.fixture(scope="module")
def sim(tmp_path_factory):
    out = tmp_path_factory.mktemp("sim")
    rs = simulate(n_subjects=2, n_images=60, seed=0, out=out, max_voxels=1500, snr=[0.7, 0.5],
                  return_trials=True)
    return out, rs


@pytest.fixture(scope="module")
def subject():
    return VirtualSubject(index=0, seed=0, resolution=2.0, snr=0.7)


def test_stimuli_deterministic_and_prefix_stable():
    a, la = make_stimuli(12, seed=3, return_labels=True)
    b = make_stimuli(12, seed=3)
    c = make_stimuli(5, seed=3, start=7)
    assert a.shape == (12, 96, 96, 3) and a.dtype == np.uint8
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(a[7:], c)
    assert set(la) <= set(CATEGORIES)
    assert not np.array_equal(a, make_stimuli(12, seed=4))
    st = make_stimulus_set([0, 5], seed=3, size=64)
    assert st.images.shape == (2, 64, 64, 3) and st.content.shape == (2, 5)


def test_same_seed_same_data():
    kw = dict(n_subjects=1, n_images=8, seed=5, max_voxels=200, n_shared=2)
    a, b = simulate(**kw)[0], simulate(**kw)[0]
    np.testing.assert_array_equal(a.responses, b.responses)
    np.testing.assert_array_equal(a.coords, b.coords)
    np.testing.assert_array_equal(a.images, b.images)
    c = simulate(**{**kw, "seed": 6})[0]
    assert not np.array_equal(a.responses[:, :50], c.responses[:, :50])


def test_response_set_contents_and_roundtrip(sim):
    out, rs = sim
    r = rs[0]
    assert r.responses.shape == r.truth.shape == (60, r.n_voxels) and r.n_voxels == 1500
    assert r.noise_ceiling.shape == (1500,) and 0 <= r.noise_ceiling.min() and r.noise_ceiling.max() <= 100
    assert set(np.unique(r.split)) == {0, 1, 2}
    # the test split is the same shared images for every subject
    np.testing.assert_array_equal(rs[0].image_ids[rs[0].indices("test")], rs[1].image_ids[rs[1].indices("test")])
    assert not set(rs[0].image_ids[rs[0].indices("train")]) & set(rs[1].image_ids[rs[1].indices("train")])
    names = set(r.roi_names.values())
    assert {"V1-L", "V1-R", "FFA-L", "FFA-R", "PPA-R", "VWFA-L"} <= names
    loaded = ResponseSet.load(out / "sub-01.h5")
    np.testing.assert_array_equal(loaded.responses, r.responses)
    np.testing.assert_array_equal(loaded.truth, r.truth)
    assert loaded.meta["simulator"]["index"] == 0
    # subjects have their own grids: 2.0 and 1.8 mm by default
    assert rs[0].meta["grid_zooms"][0] == 2.0 and abs(rs[1].meta["grid_zooms"][0] - 1.8) < 1e-9


def test_truth_at_voxel_centres_equals_noiseless_data(sim):
    _, rs = sim
    r = rs[1]
    subj = subject_from_meta(r.meta)
    t = subj.truth(stimulus_descriptors(r), r.coords)
    np.testing.assert_allclose(t, r.truth, atol=2e-4, rtol=1e-4)
    rows = np.array([5, 1])
    np.testing.assert_allclose(truth_at(r, r.coords[:50], rows=rows), r.truth[rows][:, :50], atol=2e-4, rtol=1e-4)


def test_truth_is_continuous(subject):
    desc = describe(make_stimuli(6, seed=1), content=None)
    xyz = subject.voxel_coords(max_voxels=300)
    a = subject.truth(desc, xyz)
    b = subject.truth(desc, xyz + np.float32([0.05, -0.05, 0.05]))
    far = subject.truth(desc, xyz + np.float32([6, 0, 0]))
    assert np.abs(a - b).max() < 0.05 * np.abs(a).max()
    assert np.abs(a - far).mean() > 5 * np.abs(a - b).mean()


def test_left_hemifield_drives_right_v1(subject):
    left = np.stack([make_parametric("checkerboard", side="left", cycles=c) for c in (4, 8)])
    right = np.stack([make_parametric("checkerboard", side="right", cycles=c) for c in (4, 8)])
    xyz = subject.voxel_coords(roi="V1")
    lab = subject.roi_labels(xyz)
    names = subject.roi_names
    r_v1 = lab == [k for k, v in names.items() if v == "V1-R"][0]
    l_v1 = lab == [k for k, v in names.items() if v == "V1-L"][0]
    tl, tr = subject.truth(left, xyz).mean(0), subject.truth(right, xyz).mean(0)
    assert tl[r_v1].mean() > tl[l_v1].mean() + 0.3
    assert tr[l_v1].mean() > tr[r_v1].mean() + 0.3


def test_faces_drive_ffa_more_than_scenes(subject):
    imgs, cont = [], []
    for cat in ("face", "scene"):
        for i in range(12):
            img, c = make_stimulus(1000 + i, seed=0, category=cat, return_content=True)
            imgs.append(img)
            cont.append(c)
    desc = describe(np.stack(imgs), content=np.stack(cont))
    xyz = subject.voxel_coords(roi=["FFA"])
    t = subject.truth(desc, xyz)
    assert t[:12].mean() > t[12:].mean() + 0.3
    # and the place area prefers the scenes
    t = subject.truth(desc, subject.voxel_coords(roi=["PPA"]))
    assert t[12:].mean() > t[:12].mean() + 0.3


def test_neighbours_correlate_more_than_distant_voxels(sim):
    _, rs = sim
    r = rs[0]
    x = r.responses - r.responses.mean(0)
    x /= np.linalg.norm(x, axis=0) + 1e-9
    rng = np.random.default_rng(0)
    i = rng.choice(r.n_voxels, 300, replace=False)
    d = np.linalg.norm(r.coords[i, None] - r.coords[None], axis=-1)  # (300, V)
    c = x[:, i].T @ x  # (300, V)
    near = c[(d > 0) & (d <= 2.1)]
    far = c[d > 40]
    assert near.mean() > far.mean() + 0.15


def test_noise_ceiling_recovers_configured_snr(sim):
    _, rs = sim
    for r in rs:
        subj = subject_from_meta(r.meta)
        want = subj.ncsnr(r.coords)
        got = np.sqrt(r.noise_ceiling / (100 - r.noise_ceiling) / r.meta["n_reps"])  # invert NC(ncsnr)
        ratio = np.median(got) / np.median(want)
        assert 0.8 < ratio < 1.25, ratio
        assert np.corrcoef(got, want)[0, 1] > 0.3
    assert np.median(rs[0].noise_ceiling) > np.median(rs[1].noise_ceiling)  # snr 0.7 vs 0.5


def test_bad_settings_raise():
    with pytest.raises(SimulationError):
        simulate(n_subjects=1, n_images=10, n_reps=1)
    with pytest.raises(SimulationError):
        VirtualSubject(resolution=0.1)
    with pytest.raises(ValueError):
        make_parametric("spiral")


def test_cli_simulate(tmp_path, capsys):
    from napari_nrf.cli import main

    rc = main(["simulate", "--subjects", "1", "--images", "6", "--shared", "2", "--max-voxels", "100",
               "--out", str(tmp_path)])
    assert rc == 0
    r = ResponseSet.load(tmp_path / "sub-01.h5")
    assert r.n_images == 6 and r.n_voxels == 100


def _upsampling_error(subj, desc):
    """Relative MSE of the true 1 mm field vs trilinear upsampling of the true 2 mm field (V1)."""
    from napari_nrf import space

    c = subj.voxel_coords(roi=["V1"])[100]
    g2 = space.Grid((6, 6, 6), c - 5.0, (2.0, 2.0, 2.0))
    g1 = space.Grid((8, 8, 8), c - 3.0, (1.0, 1.0, 1.0))
    t1 = subj.truth(desc, g1.coords())
    t2 = subj.truth(desc, g2.coords()).reshape(len(desc), *g2.shape)
    up = np.stack([space.resample(v, g2, g1, order=1) for v in t2]).reshape(len(desc), -1)
    return float(((up - t1) ** 2).mean() / t1.var())


def test_fine_mm_is_opt_in_and_adds_sub_2mm_structure():
    from napari_nrf.simulate import make_subjects
    from napari_nrf.simulate.subjects import _reference_descriptors

    desc = _reference_descriptors()[np.arange(16)]
    plain = VirtualSubject(index=0, seed=0)
    fine = VirtualSubject(index=0, seed=0, fine_mm=1.5)
    # Default: no fine field, config unchanged, same truth as before the option existed.
    assert "fine_mm" not in plain.config() and plain._f_fine is None
    assert set(plain.config()) == {"index", "seed", "resolution", "snr", "displacement_mm", "voxel_threshold",
                                   "gm_threshold", "version"}
    assert all(s._f_fine is None for s in make_subjects(2, seed=0))
    # Opt-in: recorded in the config (rebuilds), and trilinear upsampling of the true 2 mm
    # field misses much more of the 1 mm truth than with the default.
    assert VirtualSubject.from_config(fine.config()).fine_mm == 1.5
    e_plain, e_fine = _upsampling_error(plain, desc), _upsampling_error(fine, desc)
    assert e_plain < 0.02 and e_fine > 0.05 and e_fine > 5 * e_plain
    # The fine field is the population's: at corresponding points (moved by the local area
    # displacement) two subjects read the same values; another population's differ.
    a, b = make_subjects(2, seed=0, fine_mm=1.5)
    other = VirtualSubject(index=1, seed=1, fine_mm=1.5)
    xyz = a.voxel_coords(roi=["V1"])[:300]

    def shift(s, x):
        w = s.membership(x).astype(np.float64) + 1e-6
        return (w @ s._disp) / w.sum(1, keepdims=True)

    fa = a._fine(xyz, a.membership(xyz))
    r = []
    for s in (b, other):
        y = xyz.astype(np.float64)
        for _ in range(4):  # fixed point of y - shift_s(y) = x - shift_a(x)
            y = xyz - shift(a, xyz) + shift(s, y)
        r.append(np.corrcoef(fa.ravel(), s._fine(y, s.membership(y)).ravel())[0, 1])
    assert r[0] > 0.95 and abs(r[1]) < 0.3
    with pytest.raises(SimulationError):
        VirtualSubject(fine_mm=0.0)


def test_identical_population_is_opt_in_and_differs_only_in_grid():
    from napari_nrf.simulate import make_subjects
    from napari_nrf.simulate.subjects import _reference_descriptors

    desc = _reference_descriptors()[np.arange(12)]
    plain = make_subjects(2, seed=0)
    a, b = make_subjects(2, seed=0, identical=True)
    assert all(not s.identical and "identical" not in s.config() for s in plain)
    # Same grids as the default subjects of these indices (offset drawn as before), so the
    # subjects still sample the field at different places; same SNR (the first subject's).
    assert a.grid == plain[0].grid and b.grid == plain[1].grid and a.grid != b.grid
    assert a.snr == b.snr == plain[0].snr
    xyz = a.voxel_coords(roi=["V1", "FFA"])[::7]
    ta, tb = a.truth(desc, xyz), b.truth(desc, xyz)
    np.testing.assert_allclose(ta, tb, rtol=0, atol=1e-6)  # one field for the whole population
    assert np.abs(plain[0].truth(desc, xyz) - plain[1].truth(desc, xyz)).max() > 0.1
    assert 0.5 < ta.std(0).mean() < 1.0  # about unit-variance U scaled by 1 / sqrt(1 + sigma^2)
    # Recorded in the config; subject_from_meta rebuilds it.
    c = subject_from_meta({"simulator": b.config()})
    assert c.config()["identical"] is True and c.grid == b.grid
    np.testing.assert_array_equal(c.truth(desc, xyz), tb)
    # Combines with the fine field: the population's, no displacement to undo.
    fa, fb = make_subjects(2, seed=0, identical=True, fine_mm=1.5)
    np.testing.assert_allclose(fa.truth(desc, xyz), fb.truth(desc, xyz), rtol=0, atol=1e-6)
