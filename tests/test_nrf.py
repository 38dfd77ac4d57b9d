"""NRF model: merger, Fourier features, split first layer, presets, bundles."""

import json

import numpy as np
import pytest
import torch

from napari_nrf.models import load_model, read_metadata
from napari_nrf.models.nrf import NRF, NRFError, build_nrf
from napari_nrf.space import nrf_normalise

from _nrf_data import fake_features


@pytest.fixture(scope="module")
def feats():
    return {k: torch.from_numpy(v) for k, v in fake_features(3, seed=1).items()}


def test_predict_matches_the_straightforward_concatenation(feats):
    m = build_nrf("efficientnet-lite0", "tiny").eval()
    xyz = np.random.default_rng(0).uniform(-70, 70, (50, 3)).astype(np.float32)
    with torch.no_grad():
        fast = m.predict(feats, coords=xyz)
        ref = m.predict_reference(feats, xyz)
    assert fast.shape == (3, 50)
    torch.testing.assert_close(fast, ref, atol=1e-5, rtol=1e-5)


def test_fourier_features_use_the_stored_matrix_and_normalisation():
    m = build_nrf("efficientnet-lite0", "tiny")
    xyz = np.array([[10.0, -20.0, 30.0], [-90.0, -126.0, -72.0]], np.float32)
    u = nrf_normalise(xyz)
    proj = u @ m.fourier_B.numpy()
    want = np.concatenate([np.sin(proj), np.cos(proj)], 1)
    np.testing.assert_allclose(m.fourier(xyz).numpy(), want, atol=1e-5)
    assert m.fourier_B.shape == (3, 32)
    # seed 42, std 32: the paper's draw, not the weight-init seed
    assert torch.equal(m.fourier_B, build_nrf("efficientnet-lite0", "tiny", seed=5).fourier_B)
    assert 20 < float(m.fourier_B.std()) < 45


def test_paper_configuration_for_clip():
    m = build_nrf("clip-vit-b16", "paper")
    assert m.layers[0].in_features == 1600  # 1024 merged + 512 CLIP embedding + 64 Fourier
    assert len(m.layers) == 8 and m.layers[1].in_features == 4096
    assert [t[:2] for t in m.token_maps] == [["block4", 196], ["block7", 196]]
    assert m.merger["block4"].lin.out_features == 128 and m.merger["block4"].fuse.out_features == 512
    assert abs(m.flops_per_point(engine=False) / 1e9 - 0.21) < 0.01


def test_efficientnet_pools_s8_and_merged_code_is_normalised(feats):
    m = build_nrf("efficientnet-lite0", "demo")
    assert m.merger["s8"].fuse.in_features == 196 * 16  # 28x28 tokens pooled to 14x14
    code = m.image_code(feats)
    merged = code[:, :3 * 128]
    torch.testing.assert_close(merged.norm(dim=1), torch.ones(3), atol=1e-5, rtol=0)


def test_bundle_round_trip_keeps_fourier_and_subjects(tmp_path, feats):
    m = build_nrf("efficientnet-lite0", "tiny")
    xyz = np.random.default_rng(1).uniform(-50, 50, (20, 3)).astype(np.float32)
    m.subjects = {"sub-01": xyz}
    m.metrics = {"val_median_pearson": 0.3}
    p = m.save(tmp_path / "m.safetensors")
    meta = read_metadata(p)
    assert meta["kind"] == "nrf" and meta["fourier"]["tensor"] == "fourier_B"
    assert meta["coord_normalisation"]["offset"] == [92.0, 126.0, 72.0]
    assert meta["config"]["depth"] == 3 and json.dumps(meta)
    m2 = load_model(p)
    assert isinstance(m2, NRF) and m2.continuous
    torch.testing.assert_close(m2.fourier_B, m.fourier_B)
    with torch.no_grad():
        torch.testing.assert_close(m2.predict(feats, coords=xyz), m.predict(feats, coords=xyz))
        torch.testing.assert_close(m2.predict(feats, voxels=[3, 4], subject="sub-01"),
                                   m.predict(feats, coords=xyz[3:5]))
    assert m2.metrics["val_median_pearson"] == 0.3


def test_clear_errors(feats):
    m = build_nrf("efficientnet-lite0", "tiny")
    with pytest.raises(NRFError, match="lack 's8'"):
        m.predict({"embedding": feats["embedding"]}, coords=np.zeros((2, 3)))
    with pytest.raises(NRFError, match=r"\(N, 3\)"):
        m.predict(feats, coords=np.zeros((2, 2)))
    with pytest.raises(NRFError, match="no subject voxels"):
        m.predict(feats)
    with pytest.raises(NRFError, match="preset"):
        build_nrf("efficientnet-lite0", "huge")
    with pytest.raises(NRFError, match="not a token map"):
        build_nrf("efficientnet-lite0", token_maps={"embedding": None})
    assert issubclass(NRFError, ValueError)
