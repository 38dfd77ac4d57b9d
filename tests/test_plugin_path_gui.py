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


def test_napari_dash_w_opens_the_whole_plugin(monkeypatch, qtbot):
    """``napari -w napari-nrf``: napari's command line docks the plugin's first widget
    contribution; that entry holds every widget of the plugin."""
    import napari.__main__ as napari_main

    from napari_nrf.widgets import widget_commands

    monkeypatch.setattr(sys, "argv", ["napari", "-w", PLUGIN])
    viewer = napari_main._build_viewer()
    try:
        docks = dict(viewer.window.dock_widgets)
        assert len(docks) == 1
        (container,) = docks.values()
        names = {name for name, _ in widget_commands()}
        assert set(container.widgets) == names and len(names) == 5
        model = BlobModel()
        container.widgets["Encoding model"].set_model(model)
        assert container.widgets["Response volume"].state.model is model
        assert container.widgets["Response volume"].subject.count() > 0
    finally:
        viewer.close()
