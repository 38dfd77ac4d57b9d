"""The status-bar readout under the cursor, on the user's path (File > Open of an atlas,
a cluster map, a movie prediction): region names, a movie value at the slider's time,
and never "= nan" outside a volume's extent."""

import numpy as np
import pytest

pytestmark = pytest.mark.gui


def test_readout_names_regions_movie_values_and_skips_nan(make_napari_viewer, tmp_path):
    from napari_nrf import space
    from napari_nrf.widgets._render import META, ensure_template, mni_status

    from _plugin import two_region_atlas

    g, _lab = two_region_atlas(tmp_path)
    viewer = make_napari_viewer()
    viewer.window.add_plugin_dock_widget("napari-nrf", "Response volume")  # installs the readout
    ensure_template(viewer)
    viewer.open(str(tmp_path / "atlas.nii.gz"), plugin="napari-nrf")      # File > Open
    left = space.mni_to_world([-50.0, -20.0, 10.0])
    assert "atlas: Left thing (1)" in mni_status(viewer, left)
    viewer.layers["atlas"].visible = False

    # a response volume with NaN outside its extent: the template's value shows, not "nan"
    vol = np.full(g.shape, np.nan, np.float32)
    vol[15:] = 0.5
    data, kw = space.layer_data(vol, g)
    viewer.add_image(data, name="resp", metadata={META: {"kind": "response", "volume": vol, "grid": g}}, **kw)
    text = mni_status(viewer, left)
    assert "nan" not in text and "MNI152 = " in text
    right = space.mni_to_world([50.0, -20.0, 10.0])
    assert "resp = 0.5" in mni_status(viewer, right)

    # a movie prediction (time, z, y, x): its value at the slider's time
    movie = np.zeros((3,) + tuple(data.shape), np.float32)
    movie[2] = 1.25
    viewer.add_image(movie, name="movie prediction", scale=(2.0,) + tuple(kw["scale"]),
                     translate=(0.0,) + tuple(kw["translate"]), metadata={META: {"kind": "movie"}})
    viewer.dims.set_point(0, 4.0)                                         # the time slider at 4 s
    text = mni_status(viewer, np.concatenate([[4.0], right]))
    assert "movie prediction = 1.25 at t = 4.0 s" in text
