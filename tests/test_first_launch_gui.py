"""A new user's first minutes, on the paths they take (``napari -w napari-nrf``'s first
launch is in tests/test_plugin_path_gui.py, next to the other ``napari -w`` check): one model
is in use across every widget whichever widget opened it (Movie response > Open model…
included), a corrupt file is one notification and the model in use stays; File > Open of a
NIfTI (``viewer.open`` with no plugin named) goes to the plugin without a reader dialog."""

import numpy as np
import pytest

pytestmark = pytest.mark.gui

PLUGIN = "napari-nrf"


@pytest.fixture
def errors(monkeypatch):
    """The lines of napari error notifications shown (what the toast shows)."""
    import napari.utils.notifications as notes

    shown = []
    monkeypatch.setattr(notes, "show_error", shown.append)
    return shown


@pytest.fixture
def movie_model(tmp_path_factory):
    import torch

    from napari_nrf.models.movie import MovieEncoderDecoder

    d = tmp_path_factory.mktemp("firstmovie")
    torch.manual_seed(0)
    coords = np.array([[0.0, -80.0, 0.0], [10.0, -80.0, 0.0], [-10.0, -80.0, 0.0]], np.float32)
    m = MovieEncoderDecoder(len(coords), frames_per_tr=4, frame_size=32, size="tiny", delay=2, perceptual="none")
    m.subjects = {"group": coords}
    m.backbone_name = "efficientnet-lite0"
    m.save(d / "movie.safetensors")
    return d / "movie.safetensors"


def test_movie_open_model_is_the_model_in_use_and_a_corrupt_one_a_notification(
        make_napari_viewer, qtbot, monkeypatch, tmp_path, errors, movie_model):
    from qtpy.QtWidgets import QFileDialog

    from _plugin import open_widgets
    from _standin_model import BlobModel

    viewer = make_napari_viewer()
    widgets = open_widgets(viewer, ["Encoding model", "Movie response"])
    mw, mov = widgets["Encoding model"], widgets["Movie response"]
    mw.set_model(BlobModel(), "/somewhere/blob.safetensors")
    assert "blob.safetensors" in mw.card.text()

    chosen = {"path": str(movie_model)}
    monkeypatch.setattr(QFileDialog, "getOpenFileName", lambda *a, **k: (chosen["path"], ""))
    mov.load_btn.click()                                   # Movie response > Open model…
    qtbot.waitUntil(lambda: getattr(mov.state.model, "inputs", "") == "frames", timeout=30000)
    assert mw.card.text().splitlines()[0] == "model in use: movie.safetensors"
    assert mov.run_btn.isEnabled() and not errors

    bad = tmp_path / "broken.safetensors"
    bad.write_bytes(b"\x00not a model at all" * 10)
    chosen["path"] = str(bad)
    in_use = mov.state.model
    mov.load_btn.click()
    qtbot.waitUntil(lambda: bool(errors), timeout=30000)
    (line,) = errors
    assert "\n" not in line and "broken.safetensors" in line and not line.startswith("napari-nrf: (")
    assert mov.state.model is in_use                       # the model in use stays ...
    qtbot.waitUntil(lambda: mw.card.text().startswith("model in use: movie.safetensors"), timeout=5000)


def test_file_open_of_a_nifti_goes_to_the_plugin_without_a_dialog(make_napari_viewer, tmp_path, monkeypatch):
    """File > Open (napari's ``_qt_open``, plugin None) and ``viewer.open(path, plugin=None)``
    use the reader preference the plugin sets on first use. (``viewer.open(path)`` with no
    ``plugin`` argument at all means napari's builtins in napari 0.9: no preference
    changes that; the guide says so.)"""
    import napari._qt.qt_viewer as qt_viewer
    from napari.settings import get_settings

    from napari_nrf import space

    viewer = make_napari_viewer()  # (napari's fixture gives the test fresh settings)
    settings = get_settings().plugins
    saved = dict(settings.extension2reader)
    try:
        settings.extension2reader = {k: v for k, v in saved.items() if k not in ("*.nii", "*.nii.gz")}
        g = space.Grid.from_extent(4.0, [-60, -80, -30], [60, 40, 50])
        vol = np.linspace(-1, 1, g.n_points, dtype=np.float32).reshape(g.shape)
        space.save_nifti(vol, g, tmp_path / "map.nii.gz")
        viewer.window.add_plugin_dock_widget(PLUGIN, "Encoding model")   # the plugin's first use
        def no_dialog(*a, **k):
            raise AssertionError("napari asked which reader to use")

        monkeypatch.setattr(qt_viewer, "handle_gui_reading", no_dialog)
        viewer.window._qt_viewer._qt_open([str(tmp_path / "map.nii.gz")], stack=False)  # File > Open
        (layer,) = viewer.layers[-1:]
        assert layer.name == "map"
        (again,) = viewer.open(str(tmp_path / "map.nii.gz"), plugin=None)  # no plugin named
        assert again.metadata.get("napari_nrf") is not None
        ref, kw = space.layer_data(vol, g)
        np.testing.assert_allclose(layer.translate, kw["translate"])
        np.testing.assert_allclose(layer.scale, kw["scale"])
        np.testing.assert_allclose(np.asarray(layer.data), ref)

        # a preference the user chose in Preferences stays theirs
        settings.extension2reader = {**saved, "*.nii": "napari", "*.nii.gz": "napari"}
        other = make_napari_viewer()
        other.window.add_plugin_dock_widget(PLUGIN, "Encoding model")
        assert settings.extension2reader["*.nii.gz"] == "napari"
    finally:
        settings.extension2reader = saved
