"""The Training jobs widget offers every kind that has a recipe (from the specs), the toy
kind of tests/kinds/toy_pkg included, and trains it in the background."""

import pytest

from test_jobs_gui import _docks

pytestmark = pytest.mark.gui


def test_every_kind_with_a_recipe_is_offered_and_the_toy_kind_trains(make_napari_viewer, qtbot, tmp_path):
    from napari_nrf.kinds import trainable_kinds
    from napari_nrf.testing import example_data

    mw, w = _docks(make_napari_viewer(), tmp_path)
    offered = [w.mode.itemText(i) for i in range(w.mode.count())]
    assert offered[:2] == ["Finetune pretrained models to a new subject", "Train a new NRF"]
    for kind in trainable_kinds():
        assert kind == "nrf" or f"Train a new {kind} model" in offered
    w.mode.setCurrentIndex(offered.index("Train a new toy-linear model"))
    assert w.training and w.train_kind == "toy-linear" and not w.preset.isVisibleTo(w)
    rs, _ = example_data()
    data = rs.save(tmp_path / "sub-01.h5")
    out = tmp_path / "toy.safetensors"
    w.data.setText(str(data))
    w.out.setText(str(out))
    w.device.setCurrentText("cpu")
    w.threads = 1
    w.steps.setValue(4)
    w.extra_kwargs = {"batch_images": 8, "batch_voxels": 30, "feature_cache": str(tmp_path / "cache")}
    with qtbot.waitSignal(w.job_finished, timeout=180_000) as blocker:
        job = w.start()
        assert job is not None, w.status.text()
    assert blocker.args[0].status == "done", blocker.args[0].state
    qtbot.waitUntil(lambda: mw.model is not None and mw.model.kind == "toy-linear", timeout=60_000)
