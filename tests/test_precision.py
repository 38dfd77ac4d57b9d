"""napari_nrf.precision: CPU feature detection, the cached probe, the setting, the engine's
use of the choice, and the bf16 accuracy guard (run on the fp32 path and, explicitly, in
bf16 at tiny sizes, so the file passes on every CPU)."""

from pathlib import Path

import numpy as np
import pytest
import torch

from napari_nrf import precision
from napari_nrf.models import load_model

DEMO = Path(precision.__file__).parent / "assets" / "demo_nrf.safetensors"

AMX_CPUINFO = """processor\t: 0
model name\t: Intel(R) Xeon(R) Platinum 8480+
flags\t\t: fpu sse2 avx2 fma avx512f avx512_vnni avx512_bf16 avx512_fp16 amx_bf16 amx_tile amx_int8
"""
AVX2_CPUINFO = """processor\t: 0
model name\t: AMD EPYC
flags\t\t: fpu sse2 fma avx2
"""


@pytest.fixture(autouse=True)
def _fresh(monkeypatch):
    monkeypatch.delenv(precision.ENV_VAR, raising=False)
    precision._probe_memo.clear()
    yield
    precision._probe_memo.clear()


def _fake_cpu(monkeypatch, tmp_path, text):
    f = tmp_path / "cpuinfo"
    f.write_text(text)
    real = precision.cpu_info
    monkeypatch.setattr(precision, "cpu_info", lambda cpuinfo_path=str(f): real(cpuinfo_path))


def test_cpu_info_reads_the_flags_that_matter(tmp_path):
    f = tmp_path / "cpuinfo"
    f.write_text(AMX_CPUINFO)
    info = precision.cpu_info(str(f))
    assert info["model"].startswith("Intel(R) Xeon(R)")
    assert {"amx_bf16", "avx512_bf16", "amx_int8"} <= set(info["flags"]) and info["fast_bf16_hardware"]
    f.write_text(AVX2_CPUINFO)
    info = precision.cpu_info(str(f))
    assert info["flags"] == ["avx2", "fma"] and not info["fast_bf16_hardware"]
    assert info["torch_capability"] in ("DEFAULT", "AVX2", "AVX512", "ZVECTOR", "VSX", "NEON", "SVE256", "unknown") \
        or isinstance(info["torch_capability"], str)
    assert precision.cpu_info(str(tmp_path / "missing"))["flags"] == []  # no /proc: no flags, no crash


def test_setting_from_argument_or_environment(monkeypatch):
    assert precision.setting() == "auto"
    monkeypatch.setenv(precision.ENV_VAR, "BF16")
    assert precision.setting() == "bf16"
    assert precision.setting("float32") == "fp32"
    monkeypatch.setenv(precision.ENV_VAR, "half")
    with pytest.raises(precision.PrecisionError, match="auto, fp32, bf16"):
        precision.setting()


def test_auto_never_probes_a_cpu_without_bf16_units(monkeypatch, tmp_path):
    _fake_cpu(monkeypatch, tmp_path, AVX2_CPUINFO)
    monkeypatch.setattr(precision, "probe", lambda **kw: pytest.fail("probed an AVX2 CPU"))
    c = precision.choose("cpu")
    assert c["dtype"] == "fp32" and "amx_bf16" in c["reason"]
    assert precision.inference_dtype("cpu") is torch.float32
    assert precision.choose("cuda")["dtype"] == "bf16"  # CUDA keeps its bf16 autocast


@pytest.mark.parametrize("speedup, expect", [(5.3, "bf16"), (1.1, "fp32")])
def test_auto_on_an_amx_cpu_follows_the_probe(monkeypatch, tmp_path, speedup, expect):
    _fake_cpu(monkeypatch, tmp_path, AMX_CPUINFO)
    calls = []
    monkeypatch.setattr(precision, "probe", lambda **kw: calls.append(1) or {"speedup": speedup})
    assert precision.choose("cpu")["dtype"] == expect
    assert precision.choose("cpu")["dtype"] == expect
    assert len(calls) == 1  # once per process (and the probe itself caches on disk)


def test_setting_forces_either_on_every_device(monkeypatch):
    monkeypatch.setenv(precision.ENV_VAR, "bf16")
    assert precision.use_bf16("cpu") and precision.choose("cpu")["reason"].startswith("forced")
    monkeypatch.setenv(precision.ENV_VAR, "fp32")
    assert not precision.use_bf16("cpu") and not precision.use_bf16("cuda")


def test_probe_measures_and_caches_per_cpu_and_torch(tmp_path, monkeypatch):
    monkeypatch.setenv("NAPARI_NRF_CACHE", str(tmp_path))
    a = precision.probe(n=256, k=256, repeats=1)
    assert not a["cached"] and a["fp32_gflops"] > 0 and a["bf16_gflops"] > 0
    assert a["speedup"] == pytest.approx(a["bf16_gflops"] / a["fp32_gflops"])
    files = list((tmp_path / "precision").glob("probe-*.json"))
    assert len(files) == 1
    b = precision.probe(n=256, k=256, repeats=1)
    assert b["cached"] and b["speedup"] == a["speedup"]


def test_engine_follows_the_choice_and_bf16_stays_close_to_fp32(monkeypatch):
    from napari_nrf.query import QueryEngine
    from napari_nrf.space import Grid

    model = load_model(DEMO)
    feats, _ = precision.guard_inputs(model, n_images=2)
    grid = Grid.mni(8.0)
    default = QueryEngine(model, device="cpu")
    assert default.mixed_precision == precision.use_bf16("cpu")
    monkeypatch.setenv(precision.ENV_VAR, "fp32")
    v32 = QueryEngine(model, device="cpu").volume(feats, grid, mask="brain")
    monkeypatch.setenv(precision.ENV_VAR, "bf16")
    eng16 = QueryEngine(model, device="cpu")
    assert eng16.mixed_precision
    v16 = eng16.volume(feats, grid, mask="brain")
    inside = np.isfinite(v32)
    assert np.array_equal(inside, np.isfinite(v16))
    assert not np.array_equal(v16[inside], v32[inside])  # bf16 really ran
    assert np.corrcoef(v16[inside], v32[inside])[0, 1] > 0.999
    assert np.abs(v16[inside] - v32[inside]).max() <= 0.1 * v32[inside].std()


def test_accuracy_guard_on_fp32_and_bf16():
    model = load_model(DEMO)
    feats, xyz = precision.guard_inputs(model, n_images=8, n_points=400)
    same = precision.accuracy_guard(model, feats, xyz, dtype=torch.float32)  # the fp32 path: identical
    assert same["passed"] and same["min_r"] == pytest.approx(1.0) and same["max_abs_diff"] == 0.0
    g = precision.accuracy_guard(model, feats, xyz)  # bf16, explicitly, tiny size
    assert g["passed"], g
    assert g["min_r"] >= precision.GUARD_MIN_R and g["max_abs_diff"] <= g["tolerance"]
    assert g["tolerance"] == pytest.approx(precision.GUARD_MAX_ABS_DIFF_SD * g["fp32_sd"])
    assert g["n_images"] == 8 and g["n_voxels"] == 400


def test_accuracy_guard_catches_bf16_fourier_phases(monkeypatch):
    """The guard has teeth: with the Fourier phases (up to ~100 rad) computed in bf16, as
    they were before NRF.fourier pinned them to fp32, the demo model fails it."""
    from napari_nrf.models.nrf import NRF

    model = load_model(DEMO)
    feats, xyz = precision.guard_inputs(model, n_images=8, n_points=400)

    def low_fourier(self, coords):
        x = torch.as_tensor(coords, dtype=torch.float32)
        proj = ((x + self.coord_offset) / self.coord_size) @ self.fourier_B  # autocast applies
        return torch.cat([torch.sin(proj), torch.cos(proj)], dim=1)

    monkeypatch.setattr(NRF, "fourier", low_fourier)
    g = precision.accuracy_guard(model, feats, xyz)
    assert not g["passed"] and g["min_r"] < precision.GUARD_MIN_R


def test_accuracy_guard_on_a_voxel_indexed_model():
    from napari_nrf.models.universal import UniversalEncoder

    rng = np.random.default_rng(0)
    m = UniversalEncoder.for_features({"s16": (16, 24), "embedding": (32,)}, {"sub": rng.uniform(-60, 60, (300, 3))})
    g = precision.accuracy_guard(m)
    assert g["n_voxels"] == 300 and g["passed"], g


def test_query_cli_precision_flag(tmp_path, monkeypatch, effnet):
    from PIL import Image

    from napari_nrf.cli import main

    monkeypatch.setenv(precision.ENV_VAR, "auto")  # restored after the test (the flag sets it)
    img = tmp_path / "a.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(img)
    outs = {}
    for p in ("fp32", "bf16"):
        assert main(["query", str(DEMO), str(img), "--resolution", "8", "--device", "cpu", "--precision", p,
                     "--out", str(tmp_path / p), "--names", "plain"]) == 0
        import nibabel as nib

        outs[p] = np.asarray(nib.load(tmp_path / p / "a.nii.gz").dataobj)
        import os

        assert os.environ[precision.ENV_VAR] == p
    inside = np.isfinite(outs["fp32"])
    assert np.corrcoef(outs["fp32"][inside], outs["bf16"][inside])[0, 1] > 0.999
    assert not np.array_equal(outs["fp32"][inside], outs["bf16"][inside])


def test_bench_query_records_cpu_and_precision_next_to_every_number(tmp_path):
    import importlib.util
    import json

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_query.py"
    spec = importlib.util.spec_from_file_location("bench_query", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    out = tmp_path / "q.json"
    assert mod.main(["--repeats", "1", "--demo-points", "2000", "--paper-points", "4", "--out", str(out)]) == 0
    res = json.loads(out.read_text())
    assert res["cpu"]["model"] and "fast_bf16_hardware" in res["cpu"]
    assert res["precision"]["dtype"] in ("fp32", "bf16")
    assert res["matmul_probe"]["fp32_gflops"] > 0 and res["matmul_probe"]["bf16_gflops"] > 0
    for key in ("demo_points", "paper_points", "demo_2mm"):
        r = res[key]
        assert r["engine_precision"] == res["precision"]["dtype"] and r["cpu_model"] == res["cpu"]["model"]
        assert "cpu_flags" in r
