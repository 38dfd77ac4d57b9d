"""Image backbones: real weights (EfficientNet-Lite0), the CLIP loading path with a tiny
config and local weights, the offline error, and the on-disk feature cache."""

import json

import numpy as np
import pytest
import torch
from skimage import data

from napari_nrf.features import BackboneError, FeatureCache, extract_features, get_backbone


def test_efficientnet_weights_are_imagenet(effnet):
    x = effnet.preprocess([data.chelsea(), data.coffee()])
    assert x.shape == (2, 3, 224, 224)
    with torch.no_grad():
        top5 = effnet.classify(x).topk(5).indices.tolist()
    assert {281, 282, 285} & set(top5[0])  # tabby / tiger cat / Egyptian cat
    assert 967 in top5[1]  # espresso


def test_efficientnet_named_multiscale_features(effnet):
    f = extract_features(effnet, [data.astronaut(), data.camera(), np.zeros((40, 60, 4), np.uint8)])
    assert {k: v.shape[1:] for k, v in f.items()} == {k: tuple(s) for k, s in effnet.feature_shapes.items()}
    assert all(v.shape[0] == 3 and v.dtype == np.float32 and np.isfinite(v).all() for v in f.values())


def _tiny_clip(tmp_path):
    """A 7-block open_clip model registered under a test name, and its weights on disk."""
    import open_clip
    from safetensors.torch import save_file

    cfg = {"embed_dim": 16, "quick_gelu": True,
           "vision_cfg": {"image_size": 32, "layers": 7, "width": 64, "patch_size": 8, "head_width": 32},
           "text_cfg": {"context_length": 8, "vocab_size": 64, "width": 32, "heads": 2, "layers": 1}}
    (tmp_path / "nrf-tiny-clip.json").write_text(json.dumps(cfg))
    open_clip.add_model_config(tmp_path / "nrf-tiny-clip.json")
    torch.manual_seed(0)
    model = open_clip.create_model("nrf-tiny-clip").eval()
    path = tmp_path / "tiny-clip.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    return model, path


def test_clip_loading_path_with_local_weights(tmp_path, monkeypatch):
    ref, path = _tiny_clip(tmp_path)
    monkeypatch.setenv("NAPARI_NRF_CLIP_WEIGHTS", str(path))  # the environment-variable route
    bb = get_backbone("clip-vit-b16", model_name="nrf-tiny-clip")
    assert bb.feature_shapes == {"block4": (16, 64), "block7": (16, 64), "embedding": (16,)}
    imgs = [data.chelsea(), data.coffee()]
    f = extract_features(bb, imgs)
    assert f["block4"].shape == (2, 16, 64) and f["embedding"].shape == (2, 16)
    # Same numbers as the reference model: the weights went through the real loading path.
    x = bb.preprocess(imgs)
    with torch.no_grad():
        emb = ref.encode_image(x)
        out = ref.visual.forward_intermediates(x, indices=[3, 6], output_fmt="NLC")
    assert np.allclose(f["embedding"], emb.numpy(), atol=1e-5)
    assert np.allclose(f["block7"], out["image_intermediates"][1].numpy(), atol=1e-5)
    assert not np.allclose(f["block4"], f["block7"])
    # The preprocessing is OpenAI's: resize + centre crop to 32 px, CLIP mean/std.
    assert x.shape == (2, 3, 32, 32) and abs(float(x.mean())) < 2


def test_clip_without_weights_offline_says_how(monkeypatch, tmp_path):
    monkeypatch.delenv("NAPARI_NRF_CLIP_WEIGHTS", raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path))  # an empty hub cache
    with pytest.raises(BackboneError, match="NAPARI_NRF_CLIP_WEIGHTS"):
        get_backbone("clip-vit-b16")
    with pytest.raises(BackboneError, match="not found"):
        get_backbone("clip-vit-b16", weights=str(tmp_path / "missing.bin"))


def test_unknown_backbone():
    with pytest.raises(BackboneError, match="efficientnet-lite0"):
        get_backbone("resnet-9000")


def test_feature_cache_reused_across_runs(effnet, tmp_path, monkeypatch):
    imgs = [data.chelsea(), data.coffee(), data.astronaut()]
    cache = FeatureCache(tmp_path / "c")
    f1 = extract_features(effnet, imgs, cache=cache, batch_size=2)
    assert cache.count(effnet.cache_key) == 3
    # A new cache object on the same folder (a later run) must not call the network.
    calls = []
    orig = type(effnet).forward
    monkeypatch.setattr(type(effnet), "forward", lambda self, x: calls.append(len(x)) or orig(self, x))
    cache2 = FeatureCache(tmp_path / "c")
    f2 = extract_features(effnet, imgs[::-1], cache=cache2)
    assert calls == []
    for k in f1:  # a cold and a warm cache give the very same features
        assert np.array_equal(f1[k][::-1], f2[k])
    # A new image is computed and added; the others still come from the cache.
    extract_features(effnet, [data.rocket()] + imgs, cache=cache2)
    assert calls == [1] and cache2.count(effnet.cache_key) == 4
    # The same cached image twice in one request (identical stimuli) is read once, returned twice.
    f3 = extract_features(effnet, [imgs[1], imgs[0], imgs[1]], cache=FeatureCache(tmp_path / "c"))
    assert calls == [1]
    for k in f1:
        assert np.array_equal(f3[k], f1[k][[1, 0, 1]])


def test_cached_images_encode_without_building_the_backbone(effnet, tmp_path):
    """A later viewer start renders a cached image without importing timm or loading the
    network: Model.encode_images reads the features straight from the cache."""
    from napari_nrf.demo import load_demo_model

    imgs = [data.chelsea(), data.coffee()]
    cache = FeatureCache(tmp_path / "c")
    first, _ = load_demo_model()
    object.__setattr__(first, "_backbone", effnet)  # the session's backbone: no second build
    ref = first.encode_images(imgs, cache=cache)
    later, _ = load_demo_model()
    assert later._backbone is None
    got = later.encode_images(imgs, cache=FeatureCache(tmp_path / "c"))
    assert later._backbone is None  # never built
    assert set(got) == set(ref)
    for k in ref:
        assert torch.allclose(got[k], ref[k], rtol=2e-3, atol=2e-2)  # the cache stores float16
    # one image not cached: the backbone is built and the result is the same as without cache
    mixed = later.encode_images([data.astronaut(), imgs[0]], cache=FeatureCache(tmp_path / "c"))
    assert later._backbone is not None
    assert torch.allclose(mixed["embedding"][1], ref["embedding"][0], rtol=2e-3, atol=2e-2)
