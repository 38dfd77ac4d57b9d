"""The gain fitted after training (napari_nrf.calibration): in the bundle, applied by every
consumer, and putting a shrunken model's predictions in the data's units."""

import numpy as np
import pytest
import torch

from napari_nrf import space
from napari_nrf.calibration import Calibration, estimate
from napari_nrf.evaluate import calibration_slope, evaluate
from napari_nrf.models import load_model
from napari_nrf.models.nrf import build_nrf
from napari_nrf.query import QueryEngine
from napari_nrf.train import fit, predict_set

from _kinds import data_for, example_kinds, fittable_kinds
from _nrf_data import synth_set

# A short schedule at a low learning rate: the kept state is about 5x too small (shrunken),
# as an early-stopped model is on data it has not reached the units of.
SHRUNK = dict(epochs=3, batch_images=16, batch_voxels=150, lr=5e-4, steps_per_epoch=4, seed=0)


@pytest.fixture(scope="module", params=[0.5, 2.0], ids=["noise0.5", "noise2"])
def trained(request, tmp_path_factory):
    """(loaded model, raw trained model, response set, features, history) on a tiny world
    whose truth has unit amplitude per voxel, at noise sd 0.5 or 2 of the signal."""
    rs, f = synth_set(n=120, max_n=300, noise=request.param, n_val=30, n_test=30)
    m = build_nrf("efficientnet-lite0", "tiny", seed=0)
    hist = fit(m, [rs], features=[f], **SHRUNK)
    path = tmp_path_factory.mktemp("cal") / "m.safetensors"
    m.save(path)
    return load_model(path), m, rs, f, hist


def test_the_gain_puts_a_shrunken_model_in_the_data_units(trained):
    model, _, rs, f, hist = trained
    rep = evaluate(model, rs, features=f, ridge=False, n_repeats=1)
    raw, cal = rep["truth_calibration_slope_uncalibrated"], rep["truth_calibration_slope"]
    assert not 0.8 <= raw <= 1.25  # without the gain: far outside (about 5)
    assert 0.8 <= cal <= 1.25, (raw, cal)
    assert abs(rep["calibration_slope"] - 1) < abs(rep["calibration_slope_uncalibrated"] - 1)
    assert rep["calibration"]["global_gain"] > 2 and "fallback" not in rep["calibration"]
    # A positive per-voxel gain leaves each voxel's r as it was.
    test = rs.indices("test")
    ft = {k: v[test] for k, v in f.items()}
    from napari_nrf.train import voxel_pearson

    np.testing.assert_allclose(voxel_pearson(predict_set(model, ft, rs), rs.get_truth(test)),
                               voxel_pearson(predict_set(model, ft, rs, calibrated=False), rs.get_truth(test)),
                               atol=1e-4)
    assert "calibration" in hist.calibration["message"] and model.metrics["calibration"]["global_gain"] > 2


def test_the_bundle_carries_the_gain_and_every_consumer_applies_it(trained):
    model, trained_model, rs, f, _ = trained
    cal = model.calibration
    assert isinstance(cal, Calibration) and cal.global_gain == pytest.approx(trained_model.calibration.global_gain)
    np.testing.assert_array_equal(cal.voxels["sub-01"], trained_model.calibration.voxels["sub-01"])
    gains = cal.voxels["sub-01"][:, 3]
    assert gains.std() > 0  # per voxel, not one number
    test = rs.indices("test")[:4]
    ft = {k: v[test] for k, v in f.items()}
    raw = predict_set(model, ft, rs, calibrated=False)
    g_vox, c_vox = cal.at_points(rs.coords)  # a field's gain at its voxels: about their own
    assert np.median(np.abs(g_vox - gains)) < 0.01 * np.median(gains)
    want = c_vox + g_vox * (raw - c_vox)
    # predict at voxels
    np.testing.assert_allclose(predict_set(model, ft, rs), want, rtol=1e-5, atol=1e-5)
    eng = QueryEngine(model, device="cpu", mixed_precision=False)
    tf = {k: torch.from_numpy(v) for k, v in ft.items()}
    # predict at points
    np.testing.assert_allclose(eng.points(tf, rs.coords), want, rtol=1e-3, atol=1e-3)
    # a grid query: the raw field times the gain interpolated at each grid point
    grid = space.Grid.from_extent(8.0, [-60, -90, -30], [60, 40, 60])
    vol = eng.volume(tf, grid, mask="brain")
    m = space.brain_mask(grid)
    xyz = grid.coords(m)
    with torch.no_grad():
        field = model.predict(tf, coords=torch.from_numpy(xyz)).numpy()
    g, c = cal.at_points(xyz)
    np.testing.assert_allclose(vol[:, m], c + g * (field - c), rtol=1e-3, atol=1e-3)
    assert not np.allclose(vol[:, m], field, atol=0.1)  # the gain changed the map
    # evaluate: the slope before and after
    rep = evaluate(model, rs, features=f, ridge=False, n_repeats=1)
    assert rep["calibration_slope"] != rep["calibration_slope_uncalibrated"]


def test_an_old_bundle_without_a_gain_predicts_as_before(trained, tmp_path):
    _, m, rs, f, _ = trained
    old = build_nrf("efficientnet-lite0", "tiny", seed=0)
    old.load_state_dict(m.state_dict())
    old.subjects = dict(m.subjects)
    assert old.calibration is None
    old.save(tmp_path / "old.safetensors")
    back = load_model(tmp_path / "old.safetensors")
    assert back.calibration is None
    ft = {k: v[:3] for k, v in f.items()}
    np.testing.assert_array_equal(predict_set(back, ft, rs), predict_set(back, ft, rs, calibrated=False))
    rep = evaluate(back, rs, features=f, ridge=False, n_repeats=1)
    assert rep["calibration"] is None and rep["calibration_slope"] == rep["calibration_slope_uncalibrated"]
    eng = QueryEngine(back, device="cpu", mixed_precision=False)
    tf = {k: torch.from_numpy(v) for k, v in ft.items()}
    with torch.no_grad():
        want = back.predict(tf, coords=torch.from_numpy(rs.coords)).numpy()
    np.testing.assert_allclose(eng.points(tf, rs.coords), want, rtol=1e-5, atol=1e-6)


def test_a_small_validation_split_falls_back_to_the_global_gain():
    rs, f = synth_set(n=60, max_n=200, noise=1.0, n_val=6, n_test=10)
    m = build_nrf("efficientnet-lite0", "tiny", seed=0)
    hist = fit(m, [rs], features=[f], **SHRUNK)
    g = m.calibration.voxels["sub-01"][:, 3]
    np.testing.assert_allclose(g, m.calibration.global_gain)
    assert "6 validation images" in hist.calibration["fallback"]["sub-01"]
    assert "global gain only" in hist.calibration["message"]


def test_estimator_shrinks_noisy_voxels_and_interpolates_at_points(rng):
    n, v = 40, 400
    p = rng.standard_normal((n, v))
    true_gain = np.where(np.arange(v) < 200, 1.0, 3.0)
    y = p * true_gain + rng.standard_normal((n, v)) * np.where(np.arange(v) % 2, 0.3, 30.0)
    xyz = np.stack(np.meshgrid(np.arange(20) * 2.0, np.arange(20) * 2.0, [0.0], indexing="ij"), -1).reshape(-1, 3)
    cal, info = estimate([("s", xyz, p, y)])
    gains = cal.voxels["s"][:, 3]
    reliable, noisy = np.arange(v) % 2 == 1, np.arange(v) % 2 == 0
    # reliable voxels keep their own gain, noisy ones stay near the global gain
    assert np.abs(gains[reliable & (np.arange(v) < 200)] - 1).mean() < 0.15
    assert np.abs(gains[reliable & (np.arange(v) >= 200)] - 3).mean() < 0.3
    assert np.abs(gains[noisy] - cal.global_gain).mean() < np.abs(gains[reliable] - cal.global_gain).mean()
    assert info["tau2"] > 0
    g_at, _ = cal.at_points(xyz[:5])
    np.testing.assert_allclose(g_at, gains[:5], rtol=0.05)
    far, _ = cal.at_points(np.array([[500.0, 500.0, 500.0]]))
    assert far[0] == pytest.approx(cal.global_gain)
    none, why = estimate([("s", xyz, p[:1], y[:1])])
    assert none is None and "fewer than 2" in why["reason"]


@pytest.mark.parametrize("kind", fittable_kinds())
def test_every_fittable_kind_gets_a_gain_that_survives_its_bundle(kind, tmp_path):
    cls = example_kinds()[kind]
    rs, f = data_for(kind)
    model = cls.example({k: v.shape[1:] for k, v in f.items()}, {rs.subject: rs.coords}, seed=0)
    hist = fit(model, [rs], features=[f], epochs=1, steps_per_epoch=2, batch_images=8, batch_voxels=30)
    val = rs.indices("val")
    fv = {k: np.asarray(v)[val] for k, v in f.items()}
    if model.own_calibration:  # the kind fits its own gain (whole films): the loop says so and fits none
        assert model.calibration is None and "own gain" in hist.calibration["skipped"]
        return
    if model.calibration is None:  # two steps learnt nothing (the tiny film): it says so, gain 1
        assert "no calibration" in hist.calibration["reason"]
        p = predict_set(model, fv, rs)
        model.calibration, _ = estimate([(rs.subject, rs.coords, p, 2 * p)], min_voxel_images=99)
    else:  # 6 validation images: the global gain, and the history says so
        assert rs.subject in hist.calibration["fallback"]
    model.save(tmp_path / "m.safetensors")
    back = load_model(tmp_path / "m.safetensors")
    assert back.calibration.global_gain == pytest.approx(model.calibration.global_gain)
    np.testing.assert_allclose(predict_set(back, fv, rs), predict_set(model, fv, rs), rtol=1e-4, atol=1e-5)


def test_voxel_models_apply_the_gain_in_the_engine():
    from test_query import _VoxelModel

    xyz = np.array([[0.0, 0.0, 0.0], [12.0, -30.0, 6.0]], np.float32)
    m = _VoxelModel(xyz)
    m.calibration = Calibration(2.0, 0.0, {"sub-a": np.array([[0, 0, 0, 3.0, 0.5], [12, -30, 6, 0.5, 0.0]],
                                                             np.float32)})
    feats = {"embedding": torch.zeros(1, 4)}
    eng = QueryEngine(m, device="cpu")
    g = space.Grid.from_extent(4.0, [-20, -40, -20], [20, 20, 20])
    vol = eng.volume(feats, g)
    ijk, _ = g.nearest_index(xyz)
    assert vol[0][tuple(ijk[0])] == pytest.approx(0.5 + 3.0 * (0.0 - 0.5))
    assert vol[0][tuple(ijk[1])] == pytest.approx(0.5 * 1.0)


@pytest.mark.slow
def test_calibration_science_tiny(tmp_path):
    """benchmarks/calibration_science.py end to end on tiny settings: one cell per noise
    level, scored against the truth with and without the gain."""
    import importlib.util
    import json
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "calibration_science.py"
    spec = importlib.util.spec_from_file_location("calibration_science", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    out = tmp_path / "r.json"
    assert mod.main(["--tiny", "--noise", "0.5,2", "--out", str(out), "--cache", str(tmp_path / "c")]) == 0
    cells = json.loads(out.read_text())["cells"]
    assert [c["noise_sd"] for c in cells] == [0.5, 2.0]
    for c in cells:
        assert c["n_val"] == 5 and np.isfinite(c["slope_truth_raw"]) and abs(c["r_truth"] - c["r_truth_raw"]) < 1e-3


def test_the_finetuned_ensemble_gets_its_own_gain(tmp_path):
    """The ensemble is fitted by least squares, not by fit: finetune_ensemble fits its gain
    on the validation images the same way, and the bundle keeps it."""
    from napari_nrf.finetune import finetune_ensemble

    from _adapt_data import make_adaptation_files

    bases, data = make_adaptation_files(tmp_path / "adapt")
    out = tmp_path / "ens.safetensors"
    ens, _ = finetune_ensemble(bases, data, n_images=12, epochs=1, batch_images=4, batch_voxels=40, seed=1,
                               steps_per_epoch=3, out=out, feature_cache=tmp_path / "cache")
    assert "calibration" in ens.metrics and "message" in ens.metrics["calibration"]
    back = load_model(out)
    if ens.calibration is None:  # one step learnt nothing: it says why
        assert "no calibration" in ens.metrics["calibration"]["reason"] and back.calibration is None
    else:
        assert back.calibration.global_gain == pytest.approx(ens.calibration.global_gain)


def test_a_transfer_keeps_the_other_subjects_gains():
    """A new subject's transfer (its own parameters only) fits that subject's gains and keeps
    those of the subjects the model was trained on."""
    from napari_nrf.data.responseset import ResponseSet
    from napari_nrf.recipes import transfer_subject

    cls = example_kinds()["universal"]
    rs, f = data_for("universal")
    model = cls.example({k: v.shape[1:] for k, v in f.items()}, {rs.subject: rs.coords}, seed=0)
    old = np.array([[*c, 1.5, 0.0] for c in rs.coords], np.float32)
    model.calibration = Calibration(1.5, 0.0, {rs.subject: old})
    new = ResponseSet(responses=rs.responses, coords=rs.coords, split=rs.split, images=rs.images,
                      truth=rs.truth, subject="sub-new")
    model, hist = transfer_subject(model, new, features=[f], epochs=1, steps_per_epoch=2, batch_images=8,
                                   batch_voxels=30)
    np.testing.assert_array_equal(model.calibration.voxels[rs.subject], old)
    assert ("sub-new" in model.calibration.voxels) == ("reason" not in hist.calibration)
    assert "message" in model.metrics["calibration_sub-new"]
