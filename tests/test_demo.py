"""The embedded demo, with a tiny untrained NRF in place of the demo model (the real demo
model is checked by benchmarks/bench_gui.py and the screenshots) and a 12-image library."""

import numpy as np
import pytest

from napari_nrf import space

pytestmark = pytest.mark.gui


@pytest.fixture
def tiny_model():
    from napari_nrf.models.nrf import build_nrf

    m = build_nrf("efficientnet-lite0", "tiny")
    m.subjects = {"sub-01": np.array([[-40.0, -80, 0], [40, -80, 0]], np.float32)}
    return m


def test_demo_builds_viewer_with_rendered_volume(make_napari_viewer, qtbot, tiny_model, tmp_path, monkeypatch):
    from napari_nrf import demo
    from napari_nrf.widgets._render import layer_kind
    from napari_nrf.widgets._state import state_for

    monkeypatch.setenv("NRF_EXAMPLE_TINY", "1")
    path = tiny_model.save(tmp_path / "tiny.safetensors")
    viewer = make_napari_viewer()
    ready = []
    from napari_nrf.widgets.demo_app import build_demo

    st = build_demo(viewer, tiny_model, path, on_ready=ready.append, log=lambda m: None)
    qtbot.waitUntil(lambda: bool(ready), timeout=60000)
    assert {"Encoding model", "Response volume", "Region explorer"} <= set(st["widgets"])
    kinds = [layer_kind(ly) for ly in viewer.layers]
    assert kinds[0] == "template" and kinds.count("response") == 1
    layer = st["layers"][0]
    assert layer.name == "astronaut" and viewer.dims.ndisplay == 3
    # placed in MNI world coordinates: the layer's extent is the MNI box (z, y, x order)
    lo, hi = np.asarray(layer.extent.world)
    assert lo[2] < -85 and hi[2] > 85 and lo[1] < -120
    assert len(state_for(viewer).library) == 12
    assert "nrf" in st["widgets"]["Encoding model"].card.text()
    if st.get("library_worker") is not None:
        with qtbot.waitSignal(st["library_worker"].finished, timeout=60000, raising=False):
            pass


def test_demo_model_lookup_order(tmp_path, monkeypatch, tiny_model):
    from napari_nrf import demo

    monkeypatch.setattr(demo, "shipped_model_path", lambda: tmp_path / "none.safetensors")
    with pytest.raises(FileNotFoundError, match="demo model"):
        demo.demo_model_path(train=False)
    tiny_model.save(demo.cached_model_path())
    assert demo.demo_model_path(train=False) == demo.cached_model_path()
    assert demo.sample_image_path().is_file()


def test_fallback_subjects_are_lateralised():
    from napari_nrf.simulate.fallback import _image_descriptors, fallback_subjects

    sets = fallback_subjects(n_subjects=1, n_images=30, max_voxels=3000)
    rs = sets[0]
    assert rs.responses.shape == (30, 3000) and rs.coords[:, 1].max() < -40
    d = _image_descriptors(rs.images)
    occ = rs.coords[:, 1] < -85
    left, right = occ & (rs.coords[:, 0] < -10), occ & (rs.coords[:, 0] > 10)
    corr = lambda a, b: np.corrcoef(a, b)[0, 1]  # noqa: E731
    # the left occipital pole follows the right half-field's contrast, and vice versa
    assert corr(rs.truth[:, left].mean(1), d[:, 1]) > 0.8
    assert corr(rs.truth[:, right].mean(1), d[:, 0]) > 0.8


def test_demo_volume_sample_data(monkeypatch, tiny_model, tmp_path):
    from napari_nrf import demo
    from napari_nrf.widgets._samples import demo_response_volume

    monkeypatch.setattr(demo, "load_demo_model", lambda device="cpu", progress=None: (tiny_model, tmp_path / "m"))
    layers = demo_response_volume()
    (tdata, tkw, tkind), (vdata, vkw, vkind) = layers
    assert tkind == vkind == "image" and tkw["name"] == "MNI152" and vkw["name"] == "astronaut"
    assert vdata.shape == tdata.shape == space.Grid.mni(2.0).shape[::-1]
    assert tuple(vkw["translate"]) == tuple(space.Grid.mni(2.0).origin[::-1])
    # honest extent: computed where the model has data, NaN (shown transparent) elsewhere
    from napari_nrf.query import coverage_mask

    vol = vkw["metadata"]["napari_nrf"]["volume"]
    cover = coverage_mask(tiny_model, space.Grid.mni(2.0))
    assert 0 < np.isfinite(vol).sum() == cover.sum() < space.brain_mask(space.Grid.mni(2.0)).sum()
    assert vkw["metadata"]["napari_nrf"]["mask"] == "data"


def test_demo_view_follows_the_opengl_renderer(make_napari_viewer):
    """3D by default; 2D on Mesa's software rasterisers (a 3D frame takes seconds there);
    an explicit --ndisplay wins. The renderer string is read from the real canvas."""
    from napari_nrf.widgets._render import opengl_renderer
    from napari_nrf.widgets.demo_app import choose_ndisplay

    assert choose_ndisplay(None, "NVIDIA GeForce RTX 4090/PCIe/SSE2") == (3, None)
    nd, why = choose_ndisplay(None, "llvmpipe (LLVM 15.0.6, 256 bits)")
    assert nd == 2 and "software OpenGL" in why and "--ndisplay 3" in why
    assert choose_ndisplay(3, "llvmpipe (LLVM 15.0.6, 256 bits)") == (3, None)
    assert choose_ndisplay(2, "") == (2, None)
    renderer = opengl_renderer(make_napari_viewer())
    assert isinstance(renderer, str) and renderer  # Xvfb: Mesa's llvmpipe
