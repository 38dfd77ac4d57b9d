"""The Virtual experiment widget on the user's path (Plugins > napari-nrf > Virtual experiment):
two sets dropped, Run, the t map with its threshold in t, the table, a click to the peak,
export; the localizer; a 380 px dock without horizontal scrolling."""

import numpy as np
import pytest

pytestmark = pytest.mark.gui


@pytest.fixture(scope="module")
def sets(tmp_path_factory):
    from _experiment_data import write_category_sets

    return write_category_sets(tmp_path_factory.mktemp("vexp"), n=4, seed=5, start=200)


def _widget(make_napari_viewer):
    from _plugin import open_widgets

    from napari_nrf.demo import load_demo_model
    from napari_nrf.widgets._state import state_for

    viewer = make_napari_viewer()
    w = open_widgets(viewer, ["Virtual experiment"])["Virtual experiment"]
    model, path = load_demo_model()
    state_for(viewer).set_model(model, path)
    return viewer, w


def test_contrast_run_threshold_table_goto_export(make_napari_viewer, qtbot, sets, tmp_path):
    viewer, w = _widget(make_napari_viewer)
    w.zone_a.add([sets / "face"])
    w.zone_b.add([sets / "scene"])
    assert "4 images" in w.zone_a.text()
    w.resolution.setValue(4.0)
    w.permutations.setValue(100)
    worker = w.run()
    assert worker is not None
    qtbot.waitUntil(lambda: w.result is not None or "failed" in w.status.text(), timeout=120000)
    assert w.result is not None, w.status.text()
    layer = viewer.layers["A - B (t)"]
    assert layer.metadata["napari_nrf"]["units"] == "Welch t"
    assert w.threshold.value() == pytest.approx(w.result.threshold, abs=0.01)
    # a threshold in t: lower it, the table lists clusters above it; a click goes to the peak
    w.threshold.setValue(1.0)
    assert w.rows and w.table.rowCount() == len(w.rows)
    w.table.cellClicked.emit(0, 0)
    from napari_nrf import space

    here = space.world_to_mni(viewer.dims.point[-3:])
    r = w.rows[0]
    assert np.allclose(here, [r["x_mm"], r["y_mm"], r["z_mm"]], atol=2.1)
    files = w.export(tmp_path / "out")
    assert (tmp_path / "out" / "clusters.tsv").exists() and files["thresholded"].exists()
    # region names from any atlas opened with File > Open (a label table beside the NIfTI)
    from napari_nrf import experiments as ex

    atlas = ex.default_atlas(w.result.grid)
    space.save_nifti(atlas.labels.astype(np.int16), atlas.grid, tmp_path / "areas.nii.gz")
    (tmp_path / "areas.tsv").write_text("index\tname\n" + "".join(f"{k}\tmy {v}\n" for k, v in atlas.names.items()))
    viewer.open(str(tmp_path / "areas.nii.gz"), plugin="napari-nrf")
    w.atlas.setCurrentText("areas")
    assert w.current_atlas() is not None
    named = [r["region"] for r in w.rows if r["region"]]
    assert named and all("my " in n for n in named)


def test_localizer_labels_and_categories(make_napari_viewer, qtbot, sets):
    viewer, w = _widget(make_napari_viewer)
    w.set_localizer_folder(sets)
    w.resolution.setValue(4.0)
    w.correction.setCurrentText("none")
    w.run()
    qtbot.waitUntil(lambda: w.localizer_result is not None or "failed" in w.status.text(), timeout=120000)
    assert w.localizer_result is not None, w.status.text()
    labels = viewer.layers["localizer: preferred category"]
    assert list(labels.features["name"]) == ["body", "face", "scene"]
    w.category.setCurrentText("face")
    assert w.result.name == "face - rest" and "face - rest (t)" in viewer.layers


def test_bad_sets_give_one_line_and_the_dock_fits_380_px(make_napari_viewer, qtbot, sets):
    viewer, w = _widget(make_napari_viewer)
    w.zone_a.add([sets / "face" / "0.png"])
    w.zone_b.add([sets / "scene"])
    assert w.run() is None and "at least 2 images" in w.status.text()
    w.mode.setCurrentText("localizer: folder of categories")
    assert w.run() is None and "folder" in w.status.text()
    assert w.minimumSizeHint().width() <= 380
    w.resize(380, 700)
    w.show()
    qtbot.waitExposed(w)
    assert not w.scroll_area.horizontalScrollBar().isVisible()


def test_response_volume_threshold_in_sd_and_table_beside_export(make_napari_viewer, qtbot, tmp_path):
    """Issue 33 item 12: a threshold in the map's own units beside the percentage slider,
    and a peak / cluster table written beside an export."""
    from _plugin import open_widgets
    from _standin_model import BLOB, BlobModel, colour_image
    from PIL import Image

    viewer = make_napari_viewer()
    ws = open_widgets(viewer, ["Encoding model", "Response volume"])
    ws["Encoding model"].set_model(BlobModel())
    vw = ws["Response volume"]
    vw.resolution.setValue(4.0)
    path = tmp_path / "red.png"
    Image.fromarray(colour_image(0.9, 0.0, 48)).save(path)
    got = []
    vw.on_rendered(got.extend)
    vw.add_images([str(path)])
    qtbot.waitUntil(lambda: bool(got), timeout=30000)
    layer = viewer.layers["red"]
    hi = float(layer.contrast_limits[1])
    vw.threshold_units.setValue(0.5 * hi)
    frac = vw.threshold_units.value() / hi  # the spin box keeps two decimals
    assert layer.metadata["napari_nrf"]["threshold"] == pytest.approx(frac, rel=1e-4) and 0.45 < frac < 0.55
    assert layer.colormap.map(np.array([0.7]))[0, 3] == 0  # 0.7 on [0, 1] is +0.4 hi: hidden
    out = vw.export(layer, tmp_path / "red.nii.gz")
    table = (tmp_path / "red_clusters.tsv").read_text().splitlines()
    assert out.exists() and table[0].startswith("cluster\tx_mm") and len(table) >= 2
    x, y, z = (float(v) for v in table[1].split("\t")[1:4])
    assert np.allclose([x, y, z], BLOB, atol=4.1)


def test_cancel_stops_the_experiment_without_a_layer(make_napari_viewer, qtbot, sets):
    viewer, w = _widget(make_napari_viewer)
    w.zone_a.add([sets / "face", sets / "body"])
    w.zone_b.add([sets / "scene"])
    w.resolution.setValue(1.0)  # long enough to cancel
    w.run()
    w.cancel()
    qtbot.waitUntil(lambda: w.run_btn.isEnabled(), timeout=120000)
    assert "cancelled" in w.status.text() and w.result is None
    assert not [ly for ly in viewer.layers if ly.name.endswith("(t)")]
