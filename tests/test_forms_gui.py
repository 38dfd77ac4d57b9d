"""The parameter forms are magicgui forms (widgets/_forms.py), opened the user's way
(Plugins > napari-nrf > ...): their values drive what the widget computes."""

import numpy as np
import pytest

from napari_nrf import space

from _plugin import open_widgets
from _standin_model import BlobModel

pytestmark = pytest.mark.gui


def test_response_volume_settings_are_a_magicgui_form(make_napari_viewer, tmp_path):
    from magicgui.widgets import Container, FileEdit

    viewer = make_napari_viewer()
    w = open_widgets(viewer, ["Encoding model", "Response volume"])
    vw = w["Response volume"]
    form = vw.settings
    assert isinstance(form, Container) and isinstance(form.roi_file, FileEdit)
    assert [x.name for x in form] == ["resolution", "extent", "roi_layer", "roi_file", "box", "subject",
                                      "outside"]
    assert form.subject.choices == ()                      # no model yet
    w["Encoding model"].set_model(BlobModel())
    assert form.extent.value.startswith("where the model has data")  # the honest default
    assert form.subject.value == "(field: any point)" and "sub-01" in form.subject.choices

    form.resolution.value = 4.0
    form.extent.value = "box"
    assert form.box.enabled and not form.roi_layer.enabled and not form.roi_file.enabled
    form.box.value = "-20, -40, 0, 20, 0, 20"
    grid, mask = vw.region_spec()
    assert mask == "brain" and grid.resolution == 4.0        # a box shows no values outside the brain
    assert np.allclose(grid.origin, (-20, -40, 0)) and grid.shape == (11, 11, 6)

    # a Labels layer added to the viewer becomes a choice of the ROI layer field
    g = space.Grid.mni(4.0)
    roi = np.zeros(g.shape, np.int32)
    roi[10:14, 10:14, 10:14] = 1
    data, kw = space.layer_data(roi, g)
    viewer.add_labels(data, name="my roi", **kw)
    assert "my roi" in form.roi_layer.choices
    form.extent.value = "ROI from a Labels layer"
    form.roi_layer.value = "my roi"
    grid, mask = vw.region_spec()
    assert mask.sum() == 64

    # an ROI file through the FileEdit
    form.extent.value = "ROI from a NIfTI file"
    with pytest.raises(ValueError, match="choose an ROI"):
        vw.region_spec()                                   # an empty file field is no file
    p = space.save_nifti(roi.astype(np.uint8), g, tmp_path / "roi.nii.gz")
    form.roi_file.value = p
    grid, mask = vw.region_spec()
    assert mask.sum() == 64

    form.outside.value = "0"
    assert vw._volume_meta(vw.state.model)["outside"] == "0"


def test_cluster_settings_are_a_magicgui_form(make_napari_viewer):
    from magicgui.widgets import Container

    viewer = make_napari_viewer()
    cw = open_widgets(viewer, ["Voxel clusters"])["Voxel clusters"]
    assert isinstance(cw.settings, Container)
    assert cw.settings.k.value == 20 and cw.settings.resolution.value == "2"
    cw.resolution.setCurrentText("4")                      # the Qt widget a user clicks
    assert cw.settings.resolution.value == "4"
