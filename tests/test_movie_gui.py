"""The Movie response widget, opened through napari's plugin path (Plugins > napari-nrf)."""

import numpy as np
import pytest
import torch

pytestmark = pytest.mark.gui


@pytest.fixture(scope="module")
def movie_files(tmp_path_factory):
    from napari_nrf.models.movie import MovieEncoderDecoder
    from napari_nrf.movie.video import write_video
    from napari_nrf.simulate.movies import make_film, simulate_movies

    d = tmp_path_factory.mktemp("moviegui")
    ds = simulate_movies(d, n_subjects=2, n_films=2, n_trs=20, frames_per_tr=4, size=32, max_voxels=60, seed=3)
    g = ds["group"]
    torch.manual_seed(0)
    m = MovieEncoderDecoder(g.n_voxels, frames_per_tr=4, frame_size=32, size="tiny", delay=2, perceptual="none")
    m.subjects = {"group": g.coords}
    m.backbone_name = "efficientnet-lite0"
    m.save(d / "m.safetensors")
    film = write_video(d / "film.mp4", make_film(10, tr=1.3, frames_per_tr=4, size=32, seed=9).frames, fps=4 / 1.3)
    return d, g


def test_movie_widget_predicts_a_film_and_a_dataset_film(movie_files, make_napari_viewer, qtbot, tmp_path):
    import nibabel as nib

    from _plugin import open_widgets

    d, g = movie_files
    viewer = make_napari_viewer()
    w = open_widgets(viewer, ["Movie response"])["Movie response"]
    w.load_model(d / "m.safetensors")
    qtbot.waitUntil(lambda: w.state.model is not None, timeout=30000)
    assert w.run_btn.isEnabled() and "delay 2 TR" in w.model_label.text()

    # a dropped video
    w.set_source(d / "film.mp4")
    got = []
    w.done.connect(got.append)
    w.predict()
    qtbot.waitUntil(lambda: bool(got) or "failed" in w.info.text(), timeout=60000)
    assert got, w.info.text()
    layer = viewer.layers["movie prediction"]
    assert layer.data.shape[0] == 10 and layer.ndim == 4 and layer.scale[0] == pytest.approx(1.3)
    frames = viewer.layers["movie frames"]
    assert frames.rgb and frames.data.shape[0] == 10 and "movie reconstruction" in viewer.layers
    # the time slider in seconds: the label names the delay
    viewer.dims.set_point(0, 5 * 1.3)
    assert w.current_volume() == 5 and "2 TR" in w.delay_label.text() and "3.9 s" in w.delay_label.text()
    assert viewer.window._qt_viewer.dims.slider_widgets[0].axis_label.text() == "t 6.5 s"  # seconds, not steps
    w.lead.setChecked(True)
    assert frames.translate[0] == pytest.approx(2 * 1.3)
    assert w.show_time_course(g.coords[3]) and w.plot.measured is None
    out = w.export(tmp_path / "pred.nii.gz")
    img = nib.load(str(out))
    assert img.shape[3] == 10 and float(img.header.get_zooms()[3]) == pytest.approx(1.3)
    assert np.isnan(np.asarray(img.dataobj)[..., :2]).all()

    # a film of a data set: the measured responses come along
    w.open_dataset(d / "group.h5")
    w.film.setCurrentText("film-02")
    got.clear()
    w.predict()
    qtbot.waitUntil(lambda: bool(got) or "failed" in w.info.text(), timeout=60000)
    assert got and viewer.layers["movie prediction"].data.shape[0] == 20
    assert w.show_time_course(g.coords[0])
    np.testing.assert_allclose(w.plot.measured, g.films["film-02"]["responses"][:, 0])
    w.dataset.close()


def test_a_clip_shorter_than_the_delay_says_so(movie_files, make_napari_viewer, qtbot, monkeypatch):
    """A clip whose volumes all fall inside the model's haemodynamic delay: a clear message
    naming the minimum length, not an empty result."""
    import napari.utils.notifications as notes

    from napari_nrf.movie.video import write_video
    from napari_nrf.simulate.movies import make_film

    from _plugin import open_widgets

    d, _g = movie_files
    shown = []
    monkeypatch.setattr(notes, "show_warning", shown.append)
    short = write_video(d / "short.mp4", make_film(2, tr=1.3, frames_per_tr=4, size=32, seed=4).frames,
                        fps=4 / 1.3)
    viewer = make_napari_viewer()
    w = open_widgets(viewer, ["Movie response"])["Movie response"]
    w.load_model(d / "m.safetensors")
    qtbot.waitUntil(lambda: w.state.model is not None, timeout=30000)
    w.set_source(short)
    w.predict()
    qtbot.waitUntil(lambda: bool(shown) or "failed" in w.info.text(), timeout=60000)
    assert shown and "delay of 2 TR" in shown[0] and "longer than 3.9 s" in shown[0], (shown, w.info.text())
    assert "movie prediction" not in viewer.layers
