"""Rest2Visual in napari: the Encoding model widget adds a person from a rest map NIfTI
(shown as a layer), the Response volume widget renders that person's prediction next to
the stimulus-only one and their difference."""

import numpy as np
import pytest

from napari_nrf import space

pytestmark = pytest.mark.gui


@pytest.mark.parametrize("kind", ["rest2visual", "rest2visual-field"])
def test_rest_map_person_and_subject_minus_stimulus_only(kind, effnet, make_napari_viewer, qtbot, tmp_path):
    from _nrf_data import SHAPES, brain_coords
    from _plugin import open_widgets
    from napari_nrf.models import MODEL_KINDS, discover_kinds

    discover_kinds()
    Rest2Visual = MODEL_KINDS[kind]  # the U-Net and the field default: the same widget path

    model = Rest2Visual.example(SHAPES, {"sub-01": brain_coords(8.0, 60)}, seed=1).eval()
    object.__setattr__(model, "_backbone", effnet)
    viewer = make_napari_viewer()
    w = open_widgets(viewer, ["Encoding model", "Response volume"])
    mw, vw = w["Encoding model"], w["Response volume"]
    mw.set_model(model)
    assert mw.rest_btn.isVisibleTo(mw) and "rest map (1 session(s))" in mw.card.text()
    g = space.Grid.mni(6.0)
    p = tmp_path / "person.nii.gz"
    space.save_nifti(np.random.default_rng(2).standard_normal(g.shape).astype(np.float32), g, p)
    name = mw.add_rest_map(p)
    assert name == "rest:person" and name in viewer.layers and name in mw.card.text()
    items = [vw.subject.itemText(i) for i in range(vw.subject.count())]
    assert items == ["sub-01", name] and vw.vs_stimulus.isVisibleTo(vw)
    vw.subject.setCurrentText(name)
    vw.resolution.setValue(4.0)
    rendered = []
    vw.on_rendered(rendered.extend)
    img = np.random.default_rng(3).integers(0, 255, (32, 32, 3), dtype=np.uint8)
    vw.render_images([img], ["probe"])
    # step 1: the person's prediction is shown on its own (a first listener call) ...
    qtbot.waitUntil(lambda: bool(rendered) or "failed" in vw.status.text(), timeout=60000)
    assert [ly.name for ly in rendered] == [f"probe ({name})"] and rendered[0].visible
    # ... step 2 adds the hidden stimulus-only prediction and the difference
    qtbot.waitUntil(lambda: len(rendered) == 2 or "failed" in vw.status.text(), timeout=60000)
    assert [ly.name for ly in rendered] == [f"probe ({name})", f"probe ({name}) − probe (stimulus-only)"]
    assert not viewer.layers["probe (stimulus-only)"].visible and "stimulus-only" in vw.status.text()
    qtbot.waitUntil(lambda: not vw.cancel_btn.isEnabled(), timeout=10000)
    assert "probe (stimulus-only)" in viewer.layers
    diff = np.asarray(rendered[1].data)
    assert np.isfinite(diff).sum() > 0 and np.nanmax(np.abs(diff)) > 0
    # a model whose only subjects are rest maps (no measured voxels): the extent is the brain
    from napari_nrf.widgets.volume_widget import BRAIN

    bare = Rest2Visual.example(SHAPES, {}, seed=1)
    bare.add_subject("person", np.zeros(g.shape, np.float32), g)
    mw.set_model(bare)
    assert vw.extent.currentText() == BRAIN and vw.subject.currentText() == "person"
