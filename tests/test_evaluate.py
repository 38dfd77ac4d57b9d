"""Evaluation metrics, retrieval, ridge baseline, and the train/evaluate/query CLI end to end."""

import json

import numpy as np
import pytest

from napari_nrf import space
from napari_nrf.cli import main
from napari_nrf.evaluate import EvaluationError, RidgeBaseline, evaluate, format_table, metrics, retrieval

from _nrf_data import synth_set


def test_retrieval_perfect_and_chance(rng):
    true = rng.standard_normal((40, 200))
    r = retrieval(true, true, n_candidates=10, n_repeats=3)
    assert r["top1"] == 1.0 and r["top5"] == 1.0 and r["n_candidates"] == 10
    r = retrieval(rng.standard_normal((40, 200)), true, n_candidates=10, n_repeats=20)
    assert 0.0 <= r["top1"] < 0.3 and abs(r["top5"] - 0.5) < 0.2  # chance: 0.1 and 0.5


def test_metrics_roi_noise_ceiling_and_truth(rng):
    true = rng.standard_normal((30, 4))
    pred = true + 0.5 * rng.standard_normal((30, 4))
    m = metrics(pred, true, roi=np.array([1, 1, 2, 0]), roi_names={1: "V1", 2: "FFA"},
                noise_ceiling=np.array([50.0, 50.0, 0.0, 100.0]), truth=true)
    r = [np.corrcoef(pred[:, i], true[:, i])[0, 1] for i in range(4)]
    assert m["pearson_median"] == pytest.approx(np.median(r), abs=1e-5)
    assert m["per_roi"]["V1"]["n_voxels"] == 2 and "FFA" in m["per_roi"]
    assert m["nc_normalised_median"] == pytest.approx(np.median([r[0] ** 2 / .5, r[1] ** 2 / .5, r[3] ** 2]), abs=1e-5)
    assert m["mse"] == pytest.approx(np.mean((pred - true) ** 2), rel=1e-5)
    assert m["truth_pearson_median"] == m["pearson_median"]
    with pytest.raises(EvaluationError):
        metrics(pred[:, :3], true)


def test_ridge_recovers_a_linear_map(rng):
    x = rng.standard_normal((120, 10)).astype(np.float32)
    w = rng.standard_normal((10, 3))
    y = x @ w + 0.01 * rng.standard_normal((120, 3))
    rb = RidgeBaseline().fit({"embedding": x[:100]}, y[:100])
    np.testing.assert_allclose(rb.predict({"embedding": x[100:]}), y[100:], atol=0.1)
    assert rb.alpha_.shape == (3,)


def test_evaluate_reports_model_and_ridge():
    rs, f = synth_set(n=60, max_n=150, n_val=10, n_test=20)
    # predictions = the truth: the model half of the report must be perfect
    rep = evaluate(None, rs, features=f, predictions=rs.get_truth(rs.indices("test")), n_candidates=10)
    assert rep["truth_pearson_median"] == pytest.approx(1.0, abs=1e-5)
    assert rep["retrieval"]["top1"] > 0.5 and rep["ridge"]["retrieval"]["n_candidates"] == 10
    assert set(rep["per_roi"]) == {"anterior", "posterior"}
    assert "ridge" in format_table([rep]) and json.dumps(rep)


@pytest.fixture(scope="module")
def data_file(tmp_path_factory):
    rs, _ = synth_set(n=36, max_n=120, n_val=6, n_test=6, step=8.0)
    return rs.save(tmp_path_factory.mktemp("d") / "sub-01.h5")


def test_cli_train_evaluate_query(data_file, tmp_path, capsys):
    model = tmp_path / "m.safetensors"
    rc = main(["train", str(data_file), "--out", str(model), "--preset", "tiny", "--epochs", "2",
               "--batch-images", "8", "--batch-voxels", "50", "--steps-per-epoch", "2", "--device", "cpu"])
    # a finished run removes its checkpoint (issue 21: resuming it would skip training)
    assert rc == 0 and model.exists() and not (tmp_path / "m.safetensors.ckpt").exists()
    rc = main(["evaluate", str(model), str(data_file), "--json", str(tmp_path / "e.json"), "--candidates", "4"])
    assert rc == 0
    rep = json.loads((tmp_path / "e.json").read_text())["reports"][0]
    assert rep["n_images"] == 6 and "ridge" in rep
    out = capsys.readouterr().out
    assert "r median" in out and "top1/4" in out and "median voxel r per ROI" in out
    img = tmp_path / "cat.png"
    from PIL import Image

    Image.fromarray((np.random.default_rng(0).random((40, 40, 3)) * 255).astype(np.uint8)).save(img)
    rc = main(["query", str(model), str(img), "--resolution", "8", "--out", str(tmp_path / "vols")])
    assert rc == 0
    # Default extent: where the model has data (its training voxels), with a sidecar saying so.
    from napari_nrf.models import load_model
    from napari_nrf.query import coverage_mask

    name = "space-MNI152NLin6Asym_res-8mm_desc-cat_response"  # a BIDS derivative (--names bids)
    vol, grid = space.load_nifti(tmp_path / "vols" / f"{name}.nii.gz")
    cover = coverage_mask(load_model(model, device="cpu"), grid)
    assert grid == space.Grid.mni(8.0) and np.isfinite(vol).sum() == cover.sum() < space.brain_mask(grid).sum()
    side = json.loads((tmp_path / "vols" / f"{name}.json").read_text())
    assert side["SpaceTemplate"] == "MNI152NLin6Asym" and str(img) in side["Sources"]
    desc = json.loads((tmp_path / "vols" / "dataset_description.json").read_text())
    assert desc["DatasetType"] == "derivative" and desc["GeneratedBy"][0]["Name"] == "napari-nrf"
    assert side["mask"] == "data" and not side["extrapolation"] and side["model_sha256"] and side["image"]
    # The whole brain is one flag away, labelled as extrapolation; 0 outside on request.
    rc = main(["query", str(model), str(img), "--resolution", "8", "--mask", "brain", "--outside", "0",
               "--out", str(tmp_path / "whole"), "--names", "plain"])
    assert rc == 0
    vol, _ = space.load_nifti(tmp_path / "whole" / "cat.nii.gz")
    assert np.isfinite(vol).all() and (vol != 0).sum() == space.brain_mask(grid).sum()
    side = json.loads((tmp_path / "whole" / "cat.json").read_text())
    assert side["extrapolation"] and side["outside_mask"] == "0" and "extrapolation" in capsys.readouterr().err
    assert main(["query", str(model), str(img), "--resolution", "0.1", "--out", str(tmp_path)]) == 2
