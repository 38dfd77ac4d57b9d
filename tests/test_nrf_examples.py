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
    res = sci.run(tiny=True, cache_dir=tmp_path / "cache", log=lambda s: None)
    sizes = {r["n_train"] for r in res["runs"]}
    assert sizes == {20}
    for r in res["runs"]:
        for m in ("nrf", "ridge"):
            assert -1 <= r[m]["r_noisy"] <= 1 and -1 <= r[m]["r_truth"] <= 1
    assert "nrf_shuffled" in [r for r in res["runs"] if r["n_train"] == 20][0]
    assert set(res["resolution"]) >= {"nrf_1mm", "upsampled_2mm"}
    assert "nrf.r_truth" in res["summary"]["20"]


def test_field_is_smooth_and_descriptor_driven():
    sci = _load(ROOT / "benchmarks" / "nrf_vs_ridge.py")
    images, face = sci.make_images(12, seed=1)
    assert images.shape == (12, 64, 64, 3) and images.dtype == np.uint8
    d = sci.descriptors(images, face)
    f = sci.Field(d.shape[1], seed=0)
    xyz = np.array([[0.0, -80.0, 10.0], [0.5, -80.0, 10.0], [0.0, 40.0, 10.0]])
    t = f(d, xyz)
    assert np.corrcoef(t[:, 0], t[:, 1])[0, 1] > 0.99  # neighbours 0.5 mm apart respond alike


@pytest.mark.parametrize("script", ["query_volume.py", "train_nrf.py"])
def test_examples_tiny(script, tmp_path, monkeypatch):
    monkeypatch.setenv("NRF_EXAMPLE_TINY", "1")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", [script])
    with pytest.raises(SystemExit) as exc:
        runpy.run_path(str(ROOT / "examples" / script), run_name="__main__")
    assert exc.value.code == 0
    out = list(tmp_path.rglob("*.nii.gz")) + list(tmp_path.glob("*.safetensors"))
    assert out
