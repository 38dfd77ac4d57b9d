"""Atlases and ROIs in the Region explorer, opened the user's way (File > Open of NIfTI
files through the plugin's reader, widgets from the Plugins menu): a 4D probabilistic
atlas (a volume and a threshold), a continuous stat map (a threshold), one label of a
label atlas; the explorer names the region it scores, and the legend lists the names."""

import numpy as np
import pytest

from napari_nrf import space

from _plugin import open_widgets
from _standin_model import BLOB, BlobModel, colour_image

pytestmark = pytest.mark.gui


@pytest.fixture
def explorer(make_napari_viewer):
    from napari_nrf.library import ImageLibrary

    viewer = make_napari_viewer()
    w = open_widgets(viewer, ["Encoding model", "Region explorer"])
    w["Encoding model"].set_model(BlobModel())
    rx = w["Region explorer"]
    rx.set_library(ImageLibrary(np.stack([colour_image(r, 1 - r) for r in np.linspace(0, 1, 6)]), label="colours"))
    rx.k.setValue(2)
    return viewer, rx


def _grid():
    return space.Grid.from_extent(4.0, [-72, -60, -20], [72, 20, 40])


def test_probabilistic_atlas_volume_and_threshold(explorer, qtbot, tmp_path):
    viewer, rx = explorer
    g = _grid()
    c = g.coords()
    left = np.exp(-((c - BLOB) ** 2).sum(1) / 200).reshape(g.shape)
    right = np.exp(-((c - [40, -20, 10]) ** 2).sum(1) / 200).reshape(g.shape)
    p = space.save_nifti(np.stack([left, right], -1).astype(np.float32), g, tmp_path / "prob.nii.gz")
    (tmp_path / "prob.txt").write_text("Left blob\nRight blob\n")
    layer = viewer.open(str(p), plugin="napari-nrf")[0]
    assert layer.ndim == 4
    rx.source.setCurrentText("prob")
    assert [t for _, t in rx.legend_entries()] == ["0  Left blob", "1  Right blob"]
    rx.map_threshold.setValue(0.5)
    viewer.dims.set_point(1, 10.0)
    with qtbot.waitSignal(rx.explored, timeout=20000):
        region = rx.pick(space.mni_to_world([40.0, -20.0, 10.0]))  # a click: the most probable volume
    assert region.name == "Right blob" and rx.map_volume.value() == 1
    assert np.array_equal(region.mask, right >= 0.5)
    assert "Right blob" in rx.info.text()
    rx.map_volume.setValue(0)  # the other volume, without a click
    with qtbot.waitSignal(rx.explored, timeout=20000):
        region = rx.score_source()
    assert region.name == "Left blob" and abs(region.centre[0] - BLOB[0]) < 2
    assert list(rx.result.top[:1]) == [5]  # the reddest image drives the left blob (BlobModel)


def test_stat_map_threshold_picks_the_cluster_under_the_click(explorer, qtbot, tmp_path):
    viewer, rx = explorer
    g = _grid()
    c = g.coords()
    stat = (3 * np.exp(-((c - BLOB) ** 2).sum(1) / 100)
            - 3 * np.exp(-((c - [40, -20, 10]) ** 2).sum(1) / 100)).reshape(g.shape)  # a negative cluster
    stat += 2.5 * np.exp(-((c - [40, 0, 30]) ** 2).sum(1) / 50).reshape(g.shape)  # a second positive cluster
    p = space.save_nifti(stat.astype(np.float32), g, tmp_path / "tmap.nii")
    viewer.open(str(p), plugin="napari-nrf")
    rx.source.setCurrentText("tmap")
    rx.map_threshold.setValue(1.0)
    with qtbot.waitSignal(rx.explored, timeout=20000):
        region = rx.pick(space.mni_to_world(BLOB))
    assert region.kind == "map" and region.centre[0] < 0  # only the left cluster, not the right one
    assert region.n_voxels < (stat >= 1.0).sum()
    assert rx.pick(space.mni_to_world([0.0, -50.0, -10.0])) is None  # below threshold: nothing


def test_one_label_of_a_label_atlas_with_names(explorer, qtbot, tmp_path):
    viewer, rx = explorer
    g = _grid()
    lab = np.zeros(g.shape, np.uint8)
    lab[space.sphere_mask(g, BLOB, 8)] = 7
    lab[space.sphere_mask(g, [40, -20, 10], 8)] = 9
    p = space.save_nifti(lab, g, tmp_path / "atlas.nii.gz")
    (tmp_path / "atlas.tsv").write_text("index\tname\n7\tLeft FFA\n9\tRight FFA\n")
    viewer.open(str(p), plugin="napari-nrf")
    rx.source.setCurrentText("atlas")
    assert [t for _, t in rx.legend_entries()] == ["7  Left FFA", "9  Right FFA"]
    assert not rx.legend.item(0).icon().isNull()  # a colour swatch per region
    with qtbot.waitSignal(rx.explored, timeout=20000):
        rx._legend_chosen(rx.legend.item(1))  # choosing a legend entry scores that label
    assert rx.region.value == 9 and rx.region.name == "Right FFA"
    assert rx.info.text().startswith("Right FFA: label 9 of atlas")
