"""DINOv2 backbone: the real timm loading path with a tiny config and a local weights file."""

import numpy as np
import pytest
import torch

from napari_nrf._compat import ensure_torchvision
from napari_nrf.features import BackboneError, extract_features, get_backbone

TINY = {"embed_dim": 32, "depth": 4, "num_heads": 2}


def _tiny_weights(tmp_path):
    ensure_torchvision()
    import timm
    from safetensors.torch import save_file

    torch.manual_seed(0)
    # Saved at DINOv2's native 518 px: loading must resample the position embedding to 224.
    ref = timm.create_model("vit_large_patch14_reg4_dinov2.lvd142m", pretrained=False, img_size=518, **TINY).eval()
    path = tmp_path / "tiny-dinov2.safetensors"
    save_file({k: v.contiguous() for k, v in ref.state_dict().items()}, str(path))
    return ref, path


def test_dinov2_local_weights_and_universal_model(tmp_path, monkeypatch):
    ref, path = _tiny_weights(tmp_path)
    monkeypatch.setenv("NAPARI_NRF_DINOV2_WEIGHTS", str(path))
    bb = get_backbone("dinov2-vitl14-reg", layers=(1, 2, 4), model_kwargs=TINY)
    assert bb.feature_shapes == {"block1": (256, 32), "block2": (256, 32), "block4": (256, 32), "embedding": (32,)}
    assert torch.equal(bb.net.blocks[3].mlp.fc1.weight, ref.blocks[3].mlp.fc1.weight)
    imgs = np.random.default_rng(0).integers(0, 255, (2, 80, 60, 3), dtype=np.uint8)
    f = extract_features(bb, imgs)
    assert f["block2"].shape == (2, 256, 32) and f["embedding"].shape == (2, 32)
    assert not np.allclose(f["block1"], f["block4"])
    x = bb.preprocess(list(imgs))
    assert x.shape == (2, 3, 224, 224)

    from napari_nrf.models.universal import build_universal

    m = build_universal("dinov2-vitl14-reg", {"s": np.zeros((5, 3))}, backbone_config=bb.config(),
                        embed_dim=8, channels=4).eval()
    feats = m.encode_images(imgs)
    with torch.no_grad():
        assert m.predict(feats).shape == (2, 5)


def test_dinov2_without_weights_says_how(monkeypatch, tmp_path):
    monkeypatch.delenv("NAPARI_NRF_DINOV2_WEIGHTS", raising=False)
    with pytest.raises(BackboneError, match="NAPARI_NRF_DINOV2_WEIGHTS"):
        get_backbone("dinov2-vitl14-reg")
    with pytest.raises(BackboneError, match="not found"):
        get_backbone("dinov2-vitl14-reg", weights=str(tmp_path / "nope.safetensors"), model_kwargs=TINY)


def test_nrf_on_dinov2(tmp_path, monkeypatch):
    """The NRF works with every backbone of the features interface, DINOv2 included."""
    from napari_nrf.models.nrf import build_nrf

    m = build_nrf("dinov2-vitl14-reg", "tiny")  # the real ViT-L's shapes, no weights needed
    assert list(m.merger) == ["block6", "block12"]
    _, path = _tiny_weights(tmp_path)
    monkeypatch.setenv("NAPARI_NRF_DINOV2_WEIGHTS", str(path))
    bb = get_backbone("dinov2-vitl14-reg", layers=(1, 2, 4), model_kwargs=TINY)
    m = build_nrf("dinov2-vitl14-reg", "tiny", feature_shapes=bb.feature_shapes, token_maps={"block2": 64},
                  backbone_config=bb.config()).eval()
    imgs = np.random.default_rng(1).integers(0, 255, (3, 64, 64, 3), dtype=np.uint8)
    feats = m.encode_images(imgs)
    with torch.no_grad():
        out = m.predict(feats, coords=torch.tensor([[30.0, -80.0, 0.0], [-30.0, -80.0, 0.0]]))
    assert out.shape == (3, 2) and torch.isfinite(out).all()
