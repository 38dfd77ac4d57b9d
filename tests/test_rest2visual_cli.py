"""Rest2Visual through the CLI with its defaults where it can (tiny sizes): simulate-rest,
train-rest2visual, evaluate-rest2visual, query --rest-map; and the science benchmark's
small version."""

import json
import sys
from pathlib import Path

import numpy as np
import pytest

from napari_nrf import space
from napari_nrf.cli import main

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def sim(tmp_path_factory):
    out = tmp_path_factory.mktemp("sim")
    rc = main(["simulate-rest", "--subjects", "3", "--images", "30", "--max-voxels", "200", "--sessions", "1",
               "--volumes", "60", "--image-size", "32", "--out", str(out)])
    assert rc == 0
    return out


def test_simulate_train_evaluate_query(sim, tmp_path, capsys):
    from napari_nrf.data.responseset import ResponseSet

    files = sorted(str(p) for p in sim.glob("sub-*.h5"))
    assert len(files) == 3 and ResponseSet.load(files[0]).rest_maps.shape[0] == 1
    model = tmp_path / "r2v.safetensors"
    rc = main(["train-rest2visual", *files[:2], "--preset", "tiny", "--steps", "3", "--batch-images", "4",
               "--out", str(model), "--device", "cpu", "--cache", str(tmp_path / "cache")])
    assert rc == 0, capsys.readouterr().err
    assert "sub-01, sub-02" in capsys.readouterr().out
    # evaluate on a seen and an unseen subject (added from its rest map)
    rep = tmp_path / "rep.json"
    rc = main(["evaluate-rest2visual", str(model), files[0], files[2], "--json", str(rep), "--cache",
               str(tmp_path / "cache"), "--ssim-window", "5"])
    assert rc == 0, capsys.readouterr().err
    r = json.loads(rep.read_text())
    assert set(r["subjects"]) == {"sub-01", "sub-03"} and "v1_v5" in r["subjects"]["sub-01"]
    assert r["subjects"]["sub-01"]["whole"]["ssim_window"] == 5 and "identification" in r
    assert "identification accuracy" in capsys.readouterr().out
    # a new person's rest map from a NIfTI: the query's prediction is theirs
    rs = ResponseSet.load(files[2])
    rmap = tmp_path / "new_rest.nii.gz"
    space.save_nifti(rs.rest_maps[0], rs.rest_grid, rmap)
    from PIL import Image

    img = tmp_path / "probe.png"
    Image.fromarray(np.asarray(rs.get_images([0])[0])).save(img)
    for sub, extra in (("a", ["--rest-map", str(rmap)]), ("b", ["--subject", "sub-01"])):
        rc = main(["query", str(model), str(img), "--resolution", "8", "--mask", "brain", "--out",
                   str(tmp_path / sub), "--device", "cpu", "--names", "plain", *extra])
        assert rc == 0, capsys.readouterr().err
    a, _ = space.load_nifti(tmp_path / "a" / "probe.nii.gz")
    b, _ = space.load_nifti(tmp_path / "b" / "probe.nii.gz")
    m = np.isfinite(a)
    assert m.sum() > 500 and not np.allclose(a[m], b[m])
    # --rest-map with a model that takes none: one clear line
    from napari_nrf.models.nrf import build_nrf

    nrf = build_nrf("efficientnet-lite0", "tiny").save(tmp_path / "nrf.safetensors")
    rc = main(["query", str(nrf), str(img), "--rest-map", str(rmap), "--out", str(tmp_path / "c")])
    assert rc == 2 and "takes no rest map" in capsys.readouterr().err


def test_science_benchmark_small_version(capsys):
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        import rest2visual_science as bench
    finally:
        sys.path.pop(0)
    rep = bench.main(["--tiny"])
    res = rep["results"]
    assert {"Rest2Visual", "ns-stim", "ns-fmri", "Resting", "Random", "Tavor", "NRF", "control Rest2Visual"} <= set(res)
    for name, r in res.items():
        assert np.isfinite(r["seen"]["whole"]["pearson"]) and "identification" in r["seen"], name
        assert "unseen" in r
    assert abs(res["Random"]["seen"]["whole"]["pearson"]) < 0.1
    assert "| Rest2Visual |" in capsys.readouterr().out


def test_speed_benchmark_small_version(tmp_path):
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        import bench_rest2visual as bench
    finally:
        sys.path.pop(0)
    from napari_nrf.models import load_model

    rep = {}
    bench.bench_rest_map(rep, 30, tmp_path, skip_gz=True)
    assert rep["rest_map_nii"]["peak_rss_gb"] > 0 and rep["rest_map_nii"]["wall_s"] > 0
    p = bench.demo_bundle(tmp_path / "demo.safetensors")
    assert load_model(p).kind == "rest2visual"


def test_simulated_rest_map_niftis_and_the_field_default(sim, tmp_path, capsys):
    """simulate-rest writes each subject's rest maps as MNI NIfTI files; train-rest2visual's
    field presets (the default, here its tiny size) train, and query --rest-map takes one of
    those files for a person the model has not seen."""
    from napari_nrf.data.responseset import ResponseSet
    from napari_nrf.models import load_model
    from napari_nrf.data.restmap import load_rest_map

    nii = sim / "sub-03_ses-01_rest.nii.gz"
    vol, g = load_rest_map(nii)
    rs = ResponseSet.load(sim / "sub-03.h5")
    assert g == rs.rest_grid and np.allclose(vol, rs.rest_maps[0])
    files = sorted(str(p) for p in sim.glob("sub-*.h5"))
    model = tmp_path / "field.safetensors"
    rc = main(["train-rest2visual", *files[:2], "--preset", "field-tiny", "--steps", "3", "--out", str(model),
               "--device", "cpu", "--cache", str(tmp_path / "cache")])
    assert rc == 0, capsys.readouterr().err
    assert load_model(model).kind == "rest2visual-field"
    from PIL import Image

    img = tmp_path / "probe.png"
    Image.fromarray(np.asarray(rs.get_images([0])[0])).save(img)
    rc = main(["query", str(model), str(img), "--resolution", "8", "--mask", "brain", "--out", str(tmp_path / "q"),
               "--device", "cpu", "--names", "plain", "--rest-map", str(nii)])
    assert rc == 0, capsys.readouterr().err
    a, _ = space.load_nifti(tmp_path / "q" / "probe.nii.gz")
    assert np.isfinite(a).any()


def test_field_science_benchmark_small_version(capsys):
    """The issue-31 mode of the science benchmark (NRF vs field vs control, the targets' table)."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        import rest2visual_science as bench
    finally:
        sys.path.pop(0)
    reps = bench.field_main(["--tiny", "--displacements", "12", "--seeds", "0"])
    res = reps["12.0"][0]["results"]
    assert set(res) == {"NRF", "Rest2Visual field", "control"}
    for r in res.values():
        assert {"r_own", "identification", "gap_share", "slope"} <= set(r["seen"]) and "unseen" in r
    assert "| seen: identification (target >= 0.75) |" in capsys.readouterr().out
