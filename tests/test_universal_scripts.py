"""Tiny runs of the Universal encoder's benchmark and science scripts (so neither rots)."""

import importlib.util
import json
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"


def _load(name):
    spec = importlib.util.spec_from_file_location(name, BENCH / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(autouse=True)
def _one_thread():
    import torch

    n = torch.get_num_threads()
    yield
    torch.set_num_threads(n)


def test_science_tiny(tmp_path):
    out = tmp_path / "sci.json"
    assert _load("universal_science").main(["--tiny", "--out", str(out), "--cache", str(tmp_path / "c")]) == 0
    r = json.loads(out.read_text())
    assert set(r["A_joint_vs_single"]["joint"]) == {"sub-01", "sub-02", "sub-03", "sub-04"}
    assert r["B_transfer"]["n_transfer_images"] == 6
    assert {"transfer_random", "transfer_nearest", "scratch_all"} <= set(r["B_transfer"])
    c = r["C_kmeans"]["embeddings"]["all_areas"]
    assert -1 <= c["ari"] <= 1 and c["k"] >= 2
    assert "truth_profiles_reference" in r["C_kmeans"]
    assert len(r["D_face_cluster"]["top8_categories"]) == 8


def test_bench_tiny(tmp_path):
    out = tmp_path / "bench.json"
    assert _load("bench_universal").main(["--tiny", "--out", str(out)]) == 0
    r = json.loads(out.read_text())
    assert r["inference_dinov2-vitl14-shapes"]["ms_per_image_median"] > 0
    assert r["kmeans_planted"]["k"] == 20
