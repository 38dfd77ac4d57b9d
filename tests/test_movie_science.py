"""benchmarks/movie_science.py on tiny settings (the numbers mean nothing there), and one
small real check of the simulation's timing: a single-delay ridge on virtual movies fits
best at the HRF's delay (3-5 TR), not at 1 or 7 (on the SNR-selected voxels: the top 30 %)."""

import importlib.util
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def test_science_script_runs_tiny():
    spec = importlib.util.spec_from_file_location("movie_science", ROOT / "benchmarks" / "movie_science.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    res = mod.run(tiny=True, log=lambda *a: None)
    assert res["simulated_delay_tr"] == 4
    assert set(res["A_delay_sweep"]["median_r"]) == {"3", "4"}
    assert {"selected_top30", "all"} <= set(res["B_snr"]) and {"held_out_film", "segments"} <= set(res["C_heldout"])
    assert "chunk_hMT" in res["D_motion"] and len(res["E_encdec_vs_enc"]["encoder_decoder"]) == 1
    assert {"group", "single_subject"} <= set(res["F_fir_ridge"])
    g = res["G_static"]
    assert g["delay_tr"] == 4 and {"nrf_group", "universal_group", "universal_joint_subjects_on_sub01"} <= set(g)
    assert all(np.isfinite(g[k]["pooled"]) for k in ("nrf_group", "universal_group"))
    import pytest

    with pytest.raises(ValueError, match="unknown parts"):
        mod.run(tiny=True, only="Z")


def test_ridge_delay_sweep_peaks_at_the_hrf_delay():
    from napari_nrf.movie.evaluate import fir_ridge
    from napari_nrf.simulate.movies import simulate_movies

    g = simulate_movies(n_subjects=2, n_films=2, n_trs=60, frames_per_tr=4, size=32, max_voxels=120, seed=0)["group"]
    cache = {}
    top = np.sort(np.argsort(-g.snr, kind="stable")[: int(0.3 * g.n_voxels)])
    r = {d: fir_ridge(g, delays=(d,), features="pixels", feature_cache=cache, voxels=top)["pooled"]["median_r"]
         for d in (1, 2, 3, 4, 5, 6, 7)}
    best = max(r, key=r.get)
    assert 3 <= best <= 5, r
    assert r[best] > r[1] + 0.03 and r[best] > r[7] + 0.03
    assert np.isfinite(list(r.values())).all()
