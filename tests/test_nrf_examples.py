"""The NRF examples and the science experiment run end to end on tiny settings."""

import importlib.util
import runpy
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]


def _load(path):
    spec = importlib.util.spec_from_file_location(path.stem, path)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[path.stem] = mod
    spec.loader.exec_module(mod)
    return mod


def test_science_experiment_tiny(tmp_path):
    sci = _load(ROOT / "benchmarks" / "nrf_vs_ridge.py")
    res = sci.run(tiny=True, cache_dir=tmp_path / "cache", log=lambda s: None, out=tmp_path / "r.json",
                  overrides={"shuffle_kinds": ("global", "roi")})
    assert (tmp_path / "r.json").exists()
    assert {r["n_train"] for r in res["runs"]} == {20}
    assert {r["subject"] for r in res["runs"]} == {"sub-01", "sub-02"}  # simulator subjects
    for r in res["runs"]:
        for m in ("nrf", "ridge", "ridge_pooled", "fwrf", "nrf_shuffled", "ridge_shuffled", "nrf_shuffled_roi",
                  "ridge_shuffled_roi"):
            assert -1 <= r[m]["r_noisy"] <= 1 and -1 <= r[m]["r_truth"] <= 1
            assert {"r2", "slope", "mse"} <= set(r[m])
        # ridge is voxelwise: shuffling the coordinates changes nothing (up to float rounding
        # of the solver's batched per-voxel alphas)
        for k in set(r["ridge"]) - {"seconds"}:  # scores and the chosen alphas, not the fit's wall time
            assert r["ridge_shuffled"][k] == pytest.approx(r["ridge"][k], rel=1e-4, abs=1e-6)
            assert r["ridge_shuffled_roi"][k] == pytest.approx(r["ridge"][k], rel=1e-4, abs=1e-6)
    c = res["resolution"]
    for name in ("single_subject", "multi_subject"):
        assert set(c[name]) >= {"nrf_1mm", "upsampled_2mm"}
    assert c["multi_subject"]["subjects"] == ["sub-01", "sub-02"]
    assert c["n_points_1mm"] > 0 and 0.9 < c["fine_structure"]["upsampled_true_2mm"]["r_truth_median"] <= 1
    assert "nrf.r_truth" in res["summary"]["20"] and "nrf_shuffled_roi.r_truth" in res["summary"]["20"]
    assert "| 20 |" in sci.markdown(res) and "ROI-shuffled" in sci.markdown(res)


def test_resolution_claim_identical_population_tiny(tmp_path):
    sci = _load(ROOT / "benchmarks" / "nrf_vs_ridge.py")
    res = sci.run(tiny=True, cache_dir=tmp_path / "cache", log=lambda s: None, sizes=(),
                  overrides={"identical": True, "res_subjects": (0, 1, 2), "res_variants": ["multi_subject"],
                             "res_detail": True})
    c = res["resolution"]
    assert "single_subject" not in c and c["multi_subject"]["subjects"] == ["sub-01", "sub-02", "sub-03"]
    assert set(c["multi_subject"]) >= {"nrf_1mm", "upsampled_2mm", "nrf_1mm_vs_upsampled"}
    assert 0 <= c["multi_subject"]["nrf_detail_var_share"] < 1
    assert res["config"]["identical"] is True


def test_shuffle_and_train_subset_helpers():
    sci = _load(ROOT / "benchmarks" / "nrf_vs_ridge.py")
    from napari_nrf.data.responseset import ResponseSet

    rng = np.random.default_rng(0)
    y = rng.standard_normal((10, 6)).astype(np.float32)
    split = np.array([0] * 6 + [1, 1, 2, 2], np.uint8)
    rs = ResponseSet(responses=y, coords=np.arange(18.0).reshape(6, 3), split=split,
                     images=np.zeros((10, 4, 4, 3), np.uint8), truth=y * 2)
    sh = sci.shuffled(rs, seed=1)
    np.testing.assert_array_equal(sh.coords, rs.coords)  # same places, responses moved
    perm = [int(np.flatnonzero((y == sh.responses[:, [j]]).all(0))[0]) for j in range(6)]
    assert sorted(perm) == list(range(6)) and perm != list(range(6))
    np.testing.assert_array_equal(sh.truth, y[:, perm] * 2)  # truth moves with its responses
    # ROI-wise: responses move only among voxels of the same label (0 = none: among themselves)
    rs.roi = np.array([1, 1, 1, 2, 2, 0], np.int32)
    sr = sci.roi_shuffled(rs, seed=1)
    perm = [int(np.flatnonzero((y == sr.responses[:, [j]]).all(0))[0]) for j in range(6)]
    assert sorted(perm) == list(range(6)) and perm[5] == 5
    assert sorted(perm[:3]) == [0, 1, 2] and sorted(perm[3:5]) == [3, 4]
    np.testing.assert_array_equal(sr.truth, y[:, perm] * 2)
    np.testing.assert_array_equal(sr.roi, rs.roi)
    rows = sci.train_rows(rs, 3, seed=0)
    sub = sci.with_train(rs, rows)
    assert list(sub.indices("train")) == list(rows) and len(rows) == 3
    assert list(sub.indices("val")) == [6, 7] and list(sub.indices("test")) == [8, 9]
    assert list(sci.train_rows(rs, None, seed=0)) == list(range(6))


@pytest.mark.parametrize("script", ["query_volume.py", "train_nrf.py"])
def test_examples_tiny(script, tmp_path, monkeypatch):
    monkeypatch.setenv("NRF_EXAMPLE_TINY", "1")
    monkeypatch.chdir(tmp_path)
    argv = [script] + (["--plot", "q.png"] if script == "query_volume.py" else [])
    monkeypatch.setattr(sys, "argv", argv)
    with pytest.raises(SystemExit) as exc:
        runpy.run_path(str(ROOT / "examples" / script), run_name="__main__")
    assert exc.value.code == 0
    out = list(tmp_path.rglob("*.nii.gz")) + list(tmp_path.glob("*.safetensors"))
    assert out
    if script == "query_volume.py":
        assert (tmp_path / "q.png").stat().st_size > 1000


def test_science_figure_from_saved_results(tmp_path):
    """benchmarks/plot_nrf_science.py draws docs/images/nrf_vs_ridge.png from the saved JSONs."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        import plot_nrf_science
    finally:
        sys.path.pop(0)
    assert plot_nrf_science.main(["--out", str(tmp_path / "f.png")]) == 0
    assert (tmp_path / "f.png").stat().st_size > 10_000


@pytest.mark.slow
def test_recipe_defaults_tiny(tmp_path):
    """benchmarks/recipe_defaults.py end to end on tiny settings: every recipe's no-flag
    default and one grid schedule run and are scored in the data's units."""
    import json
    import sys

    sys.path.insert(0, str(ROOT / "benchmarks"))
    from recipe_defaults import main

    out = tmp_path / "r.json"
    assert main(["--tiny", "--out", str(out), "--cache", str(tmp_path / "cache")]) == 0
    res = json.loads(out.read_text())
    parts = {(r["part"], r["schedule"]) for r in res["runs"]}
    assert {("universal", "default"), ("transfer", "default"), ("finetune", "default")} <= parts
    assert len(parts) >= 6
    for r in res["runs"]:
        assert -1 <= r["r_truth"] <= 1 and np.isfinite(r["mse"]) and "slope" in r and "r2" in r
    assert res["defaults"]["finetune"]["lr"] > 0
