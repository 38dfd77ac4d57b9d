"""Voxel clusters widget in a real viewer, and the Region explorer on a cluster click."""

import numpy as np
import pytest
import torch

from napari_nrf import space

pytestmark = pytest.mark.gui


def _model():
    from napari_nrf.models.universal import UniversalEncoder

    g = space.Grid.mni(8.0)
    xyz = g.coords(space.brain_mask(g))  # a few thousand 8 mm voxels filling the brain
    m = UniversalEncoder.for_features({"embedding": (8,)}, {"sub-a": xyz, "sub-b": xyz + 2.0},
                                      backbone_name="efficientnet-lite0", embed_dim=4, channels=4, dropout=0.0)
    with torch.no_grad():  # two planted functional types: left vs right hemisphere
        for s in ("sub-a", "sub-b"):
            x = torch.as_tensor(m.subjects[s][:, 0])
            m.voxel_embeddings[s][:] = torch.where(x[:, None] < 0, torch.tensor([3.0, 0, 0, 0]),
                                                   torch.tensor([0, 0, 3.0, 0]))
    return m.eval()


def test_voxel_clusters_widget_adds_labels_and_feeds_region_explorer(make_napari_viewer, qtbot):
    from _plugin import open_widgets
    from napari_nrf.library import ImageLibrary
    from napari_nrf.widgets._state import state_for

    viewer = make_napari_viewer()
    widgets = open_widgets(viewer)
    cw, rx = widgets["Voxel clusters"], widgets["Region explorer"]
    model = _model()
    state_for(viewer).set_model(model)
    assert cw.checked_subjects() == ["sub-a", "sub-b"] and cw.run_btn.isEnabled()
    cw.k.setValue(2)
    cw.resolution.setCurrentText("4")
    with qtbot.waitSignal(cw.done, timeout=30000):
        cw.run()
    assert [ly.name for ly in cw.layers] == ["clusters k=2 sub-a", "clusters k=2 sub-b"]
    layer = cw.layers[0]
    assert set(np.unique(layer.data)) == {0, 1, 2}
    feats = layer.features
    assert list(feats["label"]) == [1, 2] and feats["n_subjects"].tolist() == [2, 2]
    # Clusters follow the planted hemispheres, and the table's centroid says which.
    left = int(feats["label"][np.argmin(feats["x_mm"])])
    assert feats["x_mm"].min() < -10 < 10 < feats["x_mm"].max()
    lab = layer.get_value(space.mni_to_world([-40, -20, 12]), world=True)
    assert lab == left
    # The Region explorer now picks on the cluster layer: a click ranks library images.
    assert rx.source.currentText() == layer.name
    assert [t for _, t in rx.legend_entries()] == ["1  cluster 1", "2  cluster 2"]  # the legend names them
    rng = np.random.default_rng(0)
    rx.set_library(ImageLibrary(rng.integers(0, 255, (6, 16, 16, 3), dtype=np.uint8), label="noise",
                                features={"embedding": rng.normal(size=(6, 8)).astype(np.float32)},
                                backbone="efficientnet-lite0"))
    viewer.dims.set_point(0, 12)
    with qtbot.waitSignal(rx.explored, timeout=30000):
        region = rx.pick(space.mni_to_world([-40, -20, 12]))
    assert region.kind == "label" and region.value == left
    assert rx.n_thumbnails() > 0
    # A click on the second subject's map scores that subject's voxels, not the first's.
    from napari_nrf.widgets import region_widget

    seen = []
    orig = region_widget._top_job
    region_widget._top_job = lambda model, lib, xyz, k, subject, *a, **kw: seen.append(subject) or orig(
        model, lib, xyz, k, subject, *a, **kw)
    try:
        rx.source.setCurrentText(cw.layers[1].name)
        with qtbot.waitSignal(rx.explored, timeout=30000):
            region_b = rx.pick(space.mni_to_world([-40, -20, 12]))
    finally:
        region_widget._top_job = orig
    assert region_b.subject == "sub-b" and seen == ["sub-b"]
    assert region.subject == "sub-a"
    # A model without voxel embeddings disables the widget with a message.
    state_for(viewer).set_model(None)
    assert not cw.run_btn.isEnabled()
