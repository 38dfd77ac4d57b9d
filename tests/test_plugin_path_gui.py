"""The plugin opened the way a napari user opens it: Plugins > napari-nrf > <widget>
(``viewer.window.add_plugin_dock_widget``, which hands each widget napari's
``PublicOnlyProxy`` of the viewer) and ``napari -w napari-nrf`` (napari's own command line
code path). The widgets of one viewer share one state; two viewers stay independent."""

import sys

import pytest

from _standin_model import BlobModel

pytestmark = pytest.mark.gui

PLUGIN = "napari-nrf"


def _open(viewer, name):
    _dock, widget = viewer.window.add_plugin_dock_widget(PLUGIN, name)
    return widget


def test_menu_widgets_share_one_state_in_any_order(make_napari_viewer):
    viewer = make_napari_viewer()
    vw = _open(viewer, "Response volume")          # opened before any model
    mw = _open(viewer, "Encoding model")
    model = BlobModel()
    mw.set_model(model)                            # what a loaded bundle does
    rx = _open(viewer, "Region explorer")          # opened after the model is loaded
    cw = _open(viewer, "Voxel clusters")
    assert vw.state is mw.state is rx.state is cw.state
    assert vw.state.model is model and rx.state.model is model
    assert vw.subject.count() > 0                  # the earlier widget followed the model
    assert "no model loaded" not in mw.card.text()

    # a second viewer has a state of its own
    other = make_napari_viewer()
    vw2 = _open(other, "Response volume")
    assert vw2.state is not vw.state and vw2.state.model is None
    _open(other, "Encoding model").set_model(BlobModel())
    assert vw.state.model is model


def test_state_survives_the_proxy_being_dropped(make_napari_viewer):
    """The state belongs to the viewer, not to the proxy object a widget was given."""
    import gc

    from napari.utils._proxies import PublicOnlyProxy

    from napari_nrf.widgets._state import state_for

    viewer = make_napari_viewer()
    st = state_for(PublicOnlyProxy(viewer))
    st.set_model(BlobModel())
    gc.collect()
    assert state_for(PublicOnlyProxy(viewer)) is st is state_for(viewer)


def test_a_new_user_finds_the_demo_model_in_the_model_list(make_napari_viewer, qtbot, monkeypatch, tmp_path):
    """Plugins > napari-nrf > Encoding model on a fresh machine: the list under Open model…
    offers the demo NRF shipped in the package; choosing it loads it for every widget."""
    from napari_nrf.demo import shipped_model_path
    from napari_nrf.widgets.model_widget import DEMO_ITEM

    if not shipped_model_path().is_file():
        pytest.skip("no shipped demo model in this checkout")
    monkeypatch.setenv("NAPARI_NRF_CACHE", str(tmp_path))  # no recent models yet
    viewer = make_napari_viewer()
    mw = _open(viewer, "Encoding model")
    vw = _open(viewer, "Response volume")
    idx = mw.recent.findText(DEMO_ITEM)
    assert idx > 0 and mw.recent.itemText(0) == "recent models…"
    mw.recent.setCurrentIndex(idx)
    mw.recent.activated.emit(idx)                   # what the user's choice in the list emits
    qtbot.waitUntil(lambda: vw.state.model is not None, timeout=60000)
    assert vw.state.model.kind == "nrf" and vw.state.model_path == shipped_model_path()
    assert "kind: nrf" in mw.card.text()
    assert mw.recent.findText(DEMO_ITEM) == -1      # now listed under its file name, once
    assert mw.recent.findText(shipped_model_path().name) > 0


def test_napari_dash_w_opens_the_whole_plugin(monkeypatch, qtbot, tmp_path):
    """``napari -w napari-nrf``: napari's command line docks the plugin's first widget
    contribution; that entry holds every widget of the plugin. A first launch starts
    somewhere: the MNI template on the canvas, *Load the demo model* visible, the drop zone
    in front; the demo model's card shows at least six lines."""
    import napari.__main__ as napari_main

    from napari_nrf.demo import shipped_model_path
    from napari_nrf.widgets import widget_commands
    from napari_nrf.widgets._render import layer_kind
    from napari_nrf.widgets.model_widget import CARD_LINES

    monkeypatch.setenv("NAPARI_NRF_CACHE", str(tmp_path))  # a fresh machine: no recent models
    monkeypatch.setattr(sys, "argv", ["napari", "-w", PLUGIN])
    viewer = napari_main._build_viewer()
    try:
        docks = dict(viewer.window.dock_widgets)
        assert len(docks) == 1
        (container,) = docks.values()
        names = {name for name, _ in widget_commands()}
        assert set(container.widgets) == names and len(names) >= 6
        viewer.window._qt_window.resize(1366, 728)
        viewer.window._qt_window.show()
        mw, vw = container.widgets["Encoding model"], container.widgets["Response volume"]
        qtbot.waitUntil(lambda: vw.drop_label.isVisible(), timeout=5000)
        assert [layer_kind(x) for x in viewer.layers] == ["template"]          # the MNI template
        assert mw.demo_btn.isVisible() and mw.demo_btn.text() == "Load the demo model"
        assert container.tabs.currentWidget() is vw                             # the drop zone in front
        if shipped_model_path().is_file():
            mw.demo_btn.click()
            qtbot.waitUntil(lambda: vw.state.model is not None, timeout=60000)
            lines = mw.card.text().splitlines()
            assert lines[0] == f"model in use: {shipped_model_path().name}" and lines[1].startswith("kind: nrf")
            assert any(s.startswith("subject ") for s in lines) and len(lines) >= 6
            spacing = mw.card.fontMetrics().lineSpacing()
            assert mw.card.visibleRegion().boundingRect().height() >= CARD_LINES * spacing >= 6 * spacing
        model = BlobModel()
        container.widgets["Encoding model"].set_model(model)
        assert container.widgets["Response volume"].state.model is model
        assert container.widgets["Response volume"].subject.count() > 0
    finally:
        viewer.close()


def test_nifti_open_save_and_drop_through_napari(make_napari_viewer, qtbot, tmp_path):
    """File > Open, File > Save Layers and a drop on the Response volume widget, through
    napari's own reader/writer machinery (npe2 contributions of the manifest)."""
    from _plugin import two_region_atlas

    g, lab = two_region_atlas(tmp_path, "atlas.txt", "1\tLeft thing\n2\tRight thing\n")
    from napari.errors import MultipleReaderError
    from napari.settings import get_settings

    viewer = make_napari_viewer()
    settings = get_settings().plugins
    saved = dict(settings.extension2reader)
    request_cleanup = lambda: setattr(settings, "extension2reader", saved)  # noqa: E731
    settings.extension2reader = {k: v for k, v in saved.items() if k not in ("*.nii", "*.nii.gz")}
    # File > Open before the plugin was ever used: napari's builtins (imageio) also claim
    # .nii, so napari asks which reader to use; ours is offered ...
    with pytest.raises(MultipleReaderError, match="napari-nrf"):
        viewer.open(str(tmp_path / "atlas.nii.gz"), plugin=None)
    # ... and the plugin's first use (any widget from the Plugins menu) makes napari-nrf the
    # preferred NIfTI reader, after which File > Open and a drop on the canvas go straight
    # to napari-nrf, with no dialog.
    viewer.window.add_plugin_dock_widget(PLUGIN, "Voxel clusters")
    assert settings.extension2reader["*.nii.gz"] == settings.extension2reader["*.nii"] == "napari-nrf"
    try:
        _nifti_checks(viewer, qtbot, tmp_path, g, lab)
    finally:
        request_cleanup()


def _nifti_checks(viewer, qtbot, tmp_path, g, lab):
    import numpy as np
    from PIL import Image

    from napari_nrf import space
    from napari_nrf.widgets._render import layer_kind
    from _standin_model import colour_image

    layers = viewer.open(str(tmp_path / "atlas.nii.gz"), plugin=None)
    atlas = layers[0]
    assert type(atlas).__name__ == "Labels"
    ref, kw = space.layer_data(lab, g)
    assert np.array_equal(atlas.data, ref) and np.allclose(atlas.translate, kw["translate"])
    pos = space.mni_to_world([-50.0, -20.0, 10.0])
    assert atlas.get_value(pos, world=True) == 1
    assert "name: Left thing" in atlas._get_properties(pos, world=True)

    widgets = {n: viewer.window.add_plugin_dock_widget(PLUGIN, n)[1] for n in ("Encoding model", "Response volume")}
    widgets["Encoding model"].set_model(BlobModel())
    vw = widgets["Response volume"]
    vw.resolution.setValue(4.0)
    photo = tmp_path / "red.png"
    Image.fromarray(colour_image(0.9, 0.0, 32)).save(photo)
    stat = np.linspace(-1, 1, g.n_points, dtype=np.float32).reshape(g.shape)
    space.save_nifti(stat, g, tmp_path / "stat.nii")
    rendered = []
    vw.on_rendered(rendered.extend)
    worker = vw.add_paths([str(tmp_path / "stat.nii"), str(photo)])  # what a drop of both does
    assert "stat" in viewer.layers and worker is not None            # the NIfTI went to the reader
    qtbot.waitUntil(lambda: bool(rendered), timeout=30000)           # the photo to the widget
    red = viewer.layers["red"]
    assert layer_kind(red) == "response"
    assert red.metadata["napari_nrf"]["mask"] == "data"              # honest default extent

    out = tmp_path / "saved" / "red.nii.gz"
    out.parent.mkdir()
    viewer.layers.selection = {red}
    viewer.layers.save(str(out), selected=True)                     # File > Save Selected Layers
    vol, grid = space.load_nifti(out)
    assert grid == red.metadata["napari_nrf"]["grid"]
    assert np.array_equal(vol, red.metadata["napari_nrf"]["volume"], equal_nan=True)
    assert (out.parent / "red.json").is_file()
    back = viewer.open(str(out), plugin=None)[0]
    assert layer_kind(back) == "response" and np.array_equal(back.data, red.data)
