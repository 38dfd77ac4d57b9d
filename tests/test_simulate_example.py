"""The virtual-subjects example runs on tiny settings and writes its figures."""

import importlib.util
from pathlib import Path


def test_plot_virtual_subjects_tiny(tmp_path, monkeypatch):
    monkeypatch.setenv("NRF_EXAMPLE_TINY", "1")
    path = Path(__file__).parents[1] / "examples" / "plot_virtual_subjects.py"
    spec = importlib.util.spec_from_file_location("plot_virtual_subjects", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    written = mod.main(["--out", str(tmp_path), "--subjects", "1"])
    assert len(written) == 6
    for w in written:
        assert Path(w).stat().st_size > 1000


def test_sim_validation_tiny():
    path = Path(__file__).parents[1] / "benchmarks" / "sim_validation.py"
    spec = importlib.util.spec_from_file_location("sim_validation", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    (row,) = mod.main(["--tiny", "--subjects", "1"])
    assert row["V1R_left_minus_right"] > 0 > row["V1L_left_minus_right"]
    assert row["corr_neighbours"] > row["corr_far_40mm"]
    assert 0.6 < row["ncsnr_median_ratio"] < 1.6
