"""The virtual-subjects example runs on tiny settings and writes its figures."""

import importlib.util
from pathlib import Path


def test_plot_virtual_subjects_tiny(tmp_path, monkeypatch):
    monkeypatch.setenv("NRF_EXAMPLE_TINY", "1")
    path = Path(__file__).parents[1] / "examples" / "plot_virtual_subjects.py"
    spec = importlib.util.spec_from_file_location("plot_virtual_subjects", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    written = mod.main(["--out", str(tmp_path), "--subjects", "2"])
    assert len(written) == 6
    for w in written:
        assert Path(w).stat().st_size > 1000
