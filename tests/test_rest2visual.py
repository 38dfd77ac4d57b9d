"""Rest2Visual (issue 16): rest maps from resting BOLD, virtual subjects with resting runs,
the model kind's own behaviour (the contract battery covers the rest), its recipe and CLI."""

import json

import nibabel as nib
import numpy as np
import pytest
import torch

from napari_nrf import space
from napari_nrf.data.restmap import PCC_SEED_MNI, RestMapError, load_rest_map, rest_map
from napari_nrf.simulate.rest import rest_maps_for, resting_run
from napari_nrf.simulate.subjects import VirtualSubject

G6 = space.Grid.mni(6.0)


@pytest.fixture(autouse=True)
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _write_run(path, data, grid, tr=2.0):
    img = space.to_nifti(data.astype(np.float32), grid)
    img.header.set_xyzt_units("mm", "sec")
    z = list(img.header.get_zooms())
    img.header.set_zooms(z[:3] + [tr])
    nib.save(img, str(path))
    return path


@pytest.fixture(scope="module")
def run6():
    return resting_run(VirtualSubject(index=0, seed=0, displacement_mm=5.0), G6, n_volumes=120)


# ---- rest maps ------------------------------------------------------------------------------
def test_rest_map_finds_the_default_mode_network_and_is_z_scored(run6):
    rm = rest_map(run6, 2.0, grid=G6)
    v = rm.volume[rm.mask]
    assert rm.volume.shape == G6.shape and rm.volume.dtype == np.float32
    assert abs(v.mean()) < 1e-4 and abs(v.std() - 1) < 1e-3 and (rm.volume[~rm.mask] == 0).all()
    # the seed's own neighbourhood and the other default-mode nodes are the map's top
    near = lambda c: space.sphere_mask(G6, c, 8) & rm.mask  # noqa: E731
    assert rm.volume[near(PCC_SEED_MNI)].mean() > 2.5
    assert rm.volume[near((0, 52, -6))].mean() > 1.5
    assert rm.info["n_seed_voxels"] > 0 and "nilearn" in rm.info["seed"]
    # streaming in small chunks gives the same map
    small = rest_map(run6, 2.0, grid=G6, chunk_voxels=700, chunk_volumes=7)
    np.testing.assert_allclose(small.volume, rm.volume, atol=1e-5)


def test_rest_map_from_a_file_reads_the_tr_and_takes_confounds(run6, tmp_path):
    p = _write_run(tmp_path / "bold.nii.gz", run6, G6, tr=2.0)
    a = rest_map(p)
    assert a.info["t_r"] == 2.0
    conf = tmp_path / "conf.tsv"
    rng = np.random.default_rng(0)
    rows = [("n/a" if i == 0 else f"{rng.normal():.4f}") + f"\t{rng.normal():.4f}" for i in range(run6.shape[3])]
    conf.write_text("a\tb\n" + "\n".join(rows))
    b = rest_map(p, confounds=conf)
    assert b.info["n_confounds"] == 2
    assert np.corrcoef(a.volume[a.mask], b.volume[b.mask])[0, 1] > 0.95
    h = rest_map(p, hrf=True)
    assert h.info["hrf"] == "spm" and not np.allclose(h.volume, a.volume)


def test_rest_map_bad_inputs_are_clear(run6, tmp_path):
    p3 = tmp_path / "one.nii.gz"
    nib.save(space.to_nifti(run6[..., 0], G6), str(p3))
    with pytest.raises(RestMapError, match="3D"):
        rest_map(p3, 2.0)
    with pytest.raises(RestMapError, match="at least"):
        rest_map(run6[..., :10], 2.0, grid=G6)
    img = space.to_nifti(run6, G6)  # zooms[3] left at 1.0 with no time unit ... clear it
    img.header.set_zooms(list(img.header.get_zooms()[:3]) + [0.0])
    p0 = tmp_path / "notr.nii.gz"
    nib.save(img, str(p0))
    with pytest.raises(RestMapError, match="--tr"):
        rest_map(p0)
    with pytest.raises(RestMapError, match="seed"):
        rest_map(run6, 2.0, grid=G6, seed=("sphere", (0, 0, 200), 5))
    with pytest.raises(RestMapError, match="rows of confounds"):
        rest_map(run6, 2.0, grid=G6, confounds=np.zeros((5, 2)))


def test_cli_rest_map_writes_atomically_and_fails_without_partial_files(run6, tmp_path, capsys):
    from napari_nrf.cli import main

    p = _write_run(tmp_path / "sub-01_task-rest_bold.nii.gz", run6, G6, tr=2.0)
    out = tmp_path / "map.nii.gz"
    assert main(["rest-map", str(p), "--out", str(out)]) == 0
    vol, g = load_rest_map(out)
    assert g == G6 and np.isfinite(vol).all()
    side = json.loads(space.sidecar_path(out).read_text())
    assert side["kind"] == "rest-map" and side["t_r"] == 2.0
    # refuses to replace, then a bad seed: a clear error and nothing written
    assert main(["rest-map", str(p), "--out", str(out)]) == 2
    assert "--overwrite" in capsys.readouterr().err
    bad = tmp_path / "bad.nii.gz"
    seedf = tmp_path / "seed.nii.gz"
    far = space.Grid.from_extent(6.0, [-30, -30, 120], [30, 30, 150])
    nib.save(space.to_nifti(np.ones(far.shape, np.uint8), far), str(seedf))
    assert main(["rest-map", str(p), "--seed", str(seedf), "--out", str(bad)]) == 2
    assert "seed" in capsys.readouterr().err
    assert not bad.exists() and not list(tmp_path.glob(".bad*"))
    assert main(["rest-map", str(p), "--tr", "2", "--band", "0.1,0.01", "--out", str(bad)]) == 2
    assert not bad.exists()


def test_cli_attach_rest_from_bids_bold_runs(run6, tmp_path):
    from napari_nrf.cli import main
    from napari_nrf.data.responseset import ResponseSet

    from _nrf_data import synth_set

    rs, _ = synth_set(n=8, max_n=20, n_val=2, n_test=2)
    data = rs.save(tmp_path / "sub-01.h5")
    runs = [_write_run(tmp_path / f"sub-01_ses-{s}_task-rest_bold.nii.gz", run6[..., k * 10:], G6)
            for k, s in enumerate(("a1", "b2"))]
    assert main(["attach-rest", str(data), *map(str, runs)]) == 0
    back = ResponseSet.load(data)
    assert back.rest_sessions == ["ses-a1", "ses-b2"] and back.rest_maps.shape == (2,) + G6.shape
    assert np.corrcoef(back.rest_maps[0].ravel(), back.rest_maps[1].ravel())[0, 1] > 0.8
    assert main(["attach-rest", str(data), str(runs[0]), "--sessions", "x", "y"]) == 2


# ---- virtual subjects with resting state -------------------------------------------------
def test_rest_maps_carry_each_subjects_layout_and_controls_do_not():
    g = space.Grid.mni(6.0)
    vis = space.sphere_mask(g, (0, -80, 0), 35) & space.brain_mask(g)
    subs = [VirtualSubject(index=i, seed=0, displacement_mm=5.0) for i in range(3)]

    def within_between(control):
        maps = [rest_maps_for(s, g, n_sessions=2, n_volumes=150, control=control) for s in subs]
        r = np.array([[np.corrcoef(maps[i][0][vis], maps[j][1][vis])[0, 1] for j in range(3)] for i in range(3)])
        return r[np.eye(3, dtype=bool)].mean(), r[~np.eye(3, dtype=bool)].mean(), r

    w, b, r = within_between(False)
    assert w > b + 0.2 and (r.argmax(1) == np.arange(3)).all()
    wc, bc, _ = within_between(True)
    assert wc - bc < 0.1


def test_response_set_keeps_rest_maps_and_old_files_read(tmp_path):
    from napari_nrf.data.responseset import ResponseSet

    from _nrf_data import synth_set

    rs, _ = synth_set(n=12, max_n=30, n_val=2, n_test=2)
    old = rs.save(tmp_path / "old.h5")
    assert ResponseSet.load(old).rest_maps is None
    maps = np.random.default_rng(0).standard_normal((2,) + G6.shape).astype(np.float32)
    rs.set_rest_maps(maps, G6, ["ses-01", "ses-02"])
    back = ResponseSet.load(rs.save(tmp_path / "new.h5"))
    assert back.rest_grid == G6 and back.rest_sessions == ["ses-01", "ses-02"]
    np.testing.assert_array_equal(back.rest_maps, maps)
    assert back.subset(rows=[0, 1]).rest_maps is not None
    with pytest.raises(ValueError, match="rest maps must be"):
        rs.set_rest_maps(maps[:, :3], G6)


# ---- the model --------------------------------------------------------------------------
@pytest.fixture(scope="module")
def two_subjects():
    """Two small response sets with random rest maps and fake features (no backbone)."""
    from _nrf_data import synth_set

    sets, feats = [], []
    rng = np.random.default_rng(3)
    for k in range(2):
        rs, f = synth_set(n=20, step=8.0, max_n=80, n_val=4, n_test=2, seed=k, subject=f"sub-0{k + 1}")
        rs.set_rest_maps(rng.standard_normal((2,) + G6.shape).astype(np.float32), G6)
        sets.append(rs)
        feats.append(f)
    return sets, feats


def test_train_through_fit_new_subject_by_rest_map_and_bundle(two_subjects, tmp_path):
    from napari_nrf.models import load_model
    from napari_nrf.query import QueryEngine
    from napari_nrf.recipes import train_rest2visual

    from _nrf_data import SHAPES

    sets, feats = two_subjects
    model, hist = train_rest2visual(sets, preset="tiny", feature_shapes=SHAPES, features=feats, steps=6,
                                    batch_images=4)
    assert model.kind == "rest2visual" and set(model.rest_maps) == {"sub-01", "sub-02"}
    assert np.isfinite(hist.records[-1]["train_loss"])
    f = {k: torch.from_numpy(v[:2]) for k, v in feats[0].items()}
    with torch.no_grad():
        a = model.predict(f, coords=sets[0].coords[:20], subject="sub-01")
        b = model.predict(f, coords=sets[0].coords[:20], subject="sub-02")
    assert not torch.allclose(a, b)  # the prediction depends on whose rest map
    # a new person from a rest map alone (a file on another grid), no training
    p = tmp_path / "new.nii.gz"
    space.save_nifti(np.random.default_rng(9).standard_normal(space.Grid.mni(4.0).shape).astype(np.float32),
                     space.Grid.mni(4.0), p)
    from napari_nrf.models.rest2visual import subject_from_rest_map

    name = subject_from_rest_map(model, p)
    eng = QueryEngine(model, device="cpu")
    vol = eng.volume(f, space.Grid.mni(8.0), mask="brain", subject=name)
    other = eng.volume(f, space.Grid.mni(8.0), mask="brain", subject="sub-01")
    m = space.brain_mask(space.Grid.mni(8.0))
    assert np.isfinite(vol[:, m]).all() and not np.allclose(vol[:, m], other[:, m])
    back = load_model(model.save(tmp_path / "m.safetensors"))
    assert set(back.rest_maps) == {"sub-01", "sub-02", name} and back.subjects[name].shape == (0, 3)
    with torch.no_grad():
        torch.testing.assert_close(back.predict(f, coords=sets[0].coords[:20], subject=name),
                                   model.predict(f, coords=sets[0].coords[:20], subject=name))
    with pytest.raises(ValueError, match="unknown subject"):
        model.predict(f, coords=sets[0].coords[:3], subject="nobody")


def test_training_needs_rest_maps():
    from napari_nrf.recipes import train_rest2visual

    from _nrf_data import SHAPES, synth_set

    rs, f = synth_set(n=10, max_n=20, n_val=2, n_test=2)
    with pytest.raises(ValueError, match="no rest maps"):
        train_rest2visual([rs], preset="tiny", feature_shapes=SHAPES, features=[f], steps=1)


def test_map_metrics():
    from napari_nrf import mapmetrics as mm

    g = space.Grid.from_extent(4.0, [-20, -20, -20], [20, 20, 20])
    xyz = g.coords()
    rng = np.random.default_rng(0)
    true = rng.standard_normal((5, len(xyz)))
    s = mm.score_maps(true, true, xyz)
    assert s["pearson"] == pytest.approx(1) and s["mae"] == pytest.approx(0) and s["ssim"] == pytest.approx(1)
    noisy = mm.score_maps(true + rng.standard_normal(true.shape), true, xyz, window=5, data_range=4.0)
    assert 0.5 < noisy["pearson"] < 0.9 and noisy["ssim"] < 0.9 and noisy["ssim_window"] == 5
    pred = np.stack([true + 0.5 * rng.standard_normal(true.shape) for _ in range(3)])
    idt = mm.identification(pred, np.stack([true, rng.standard_normal(true.shape), rng.standard_normal(true.shape)]))
    assert idt["chance"] == pytest.approx(1 / 3) and 0 <= idt["accuracy"] <= 1


def test_encoder_cache_never_outlives_the_weights(two_subjects):
    from napari_nrf.models.rest2visual import Rest2Visual

    from _nrf_data import SHAPES

    sets, feats = two_subjects
    model = Rest2Visual.example(SHAPES, {"sub-01": sets[0].coords}, seed=0).eval()
    f = {k: torch.from_numpy(v[:2]) for k, v in feats[0].items()}
    with torch.no_grad():
        a = model.predict(f, coords=sets[0].coords[:10], subject="sub-01")
    model.train()
    with torch.no_grad():
        for p in model.enc.parameters():
            p.add_(0.5)
    model.eval()
    with torch.no_grad():
        b = model.predict(f, coords=sets[0].coords[:10], subject="sub-01")
    assert not torch.allclose(a, b)
    # fit keeps its best epoch with load_state_dict: the cached features must go with the old weights
    state = {k: (v + 0.5 if k.startswith("enc.") and v.is_floating_point() else v.clone())
             for k, v in model.state_dict().items()}
    model.load_state_dict(state)
    with torch.no_grad():
        c = model.predict(f, coords=sets[0].coords[:10], subject="sub-01")
    assert not torch.allclose(b, c)


def test_coordinate_channels_and_bundles_saved_before_them(two_subjects, tmp_path):
    """The presets feed the encoder the grid's coordinates; a bundle written before that
    option (no ``coord_channels`` in its config, a one-channel first convolution) still loads
    as the plain rest-map model and predicts as before."""
    import json as _json

    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    from napari_nrf.models import load_model
    from napari_nrf.models.bundle import META_KEY
    from napari_nrf.models.rest2visual import build_rest2visual

    from _nrf_data import SHAPES

    sets, feats = two_subjects
    new = build_rest2visual(preset="tiny", feature_shapes=SHAPES)
    assert new.coord_channels and new.enc[0].c1.weight.shape[1] == 4
    old = build_rest2visual(preset="tiny", feature_shapes=SHAPES, coord_channels=False)
    assert old.enc[0].c1.weight.shape[1] == 1
    old.add_subject("sub-01", sets[0].rest_maps, sets[0].rest_grid, coords=sets[0].coords)
    p = old.save(tmp_path / "old.safetensors")
    with safe_open(str(p), "pt") as fh:
        meta = _json.loads(fh.metadata()[META_KEY])
    del meta["config"]["coord_channels"]  # as files written before the option
    save_file(load_file(str(p)), str(p), metadata={META_KEY: _json.dumps(meta)})
    back = load_model(p)
    assert back.coord_channels is False
    f = {k: torch.from_numpy(v[:2]) for k, v in feats[0].items()}
    with torch.no_grad():
        torch.testing.assert_close(back.predict(f, coords=sets[0].coords[:20], subject="sub-01"),
                                   old.predict(f, coords=sets[0].coords[:20], subject="sub-01"))


def test_truth_identification_points_and_isc():
    """The common points lie in the visual areas; larger area displacements make subjects'
    noiseless maps more different (the ceiling the science benchmark measures), and the ISC
    report compares predicted with true inter-subject matrices."""
    from napari_nrf import mapmetrics as mm
    from napari_nrf.kinds.rest2visual.evaluate import common_points, isc_report
    from napari_nrf.simulate.subjects import _stimuli_and_descriptors

    xyz = common_points(8.0)
    assert 50 < len(xyz) < 1000 and (xyz[:, 1] < -20).all()
    _, desc = _stimuli_and_descriptors(np.arange(6), 0, 32, None)
    between = {}
    for d in (2.5, 12.0):
        T = np.stack([VirtualSubject(index=i, seed=0, displacement_mm=d).truth(desc, xyz) for i in range(3)])
        idt = mm.identification(T, T)
        assert idt["accuracy"] == 1.0
        between[d] = idt["between"]
    assert between[12.0] < between[2.5] - 0.1
    rep = isc_report(T + 0.1 * np.random.default_rng(0).standard_normal(T.shape), T)
    assert np.shape(rep["predicted"]) == (3, 3) and rep["similarity"] > 0.9
