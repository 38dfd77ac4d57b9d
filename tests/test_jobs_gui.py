"""The Finetune jobs widget starts a tiny job, shows its progress and opens the result."""

import pytest

from _adapt_data import make_adaptation_files

pytestmark = pytest.mark.gui


def test_widget_runs_a_job_and_opens_the_model(make_napari_viewer, qtbot, tmp_path):
    from qtpy.QtWidgets import QProgressBar

    from napari_nrf.widgets.jobs_widget import FinetuneJobsWidget
    from napari_nrf.widgets.model_widget import EncodingModelWidget

    bases, data = make_adaptation_files(tmp_path)
    viewer = make_napari_viewer()
    mw = EncodingModelWidget(napari_viewer=viewer)
    viewer.window.add_dock_widget(mw, name="Encoding model")
    w = FinetuneJobsWidget(napari_viewer=viewer, jobs_dir=tmp_path / "jobs")
    viewer.window.add_dock_widget(w, name="Finetune jobs")
    w.timer.setInterval(100)
    w.add_bases([str(b) for b in bases])
    w.data.setText(str(data))
    out = tmp_path / "adapted.safetensors"
    w.out.setText(str(out))
    w.n_images.setValue(8)
    w.epochs.setValue(2)
    w.device.setCurrentText("cpu")
    w.threads = 1
    w.extra_kwargs = {"batch_images": 4, "batch_voxels": 30, "step_delay": 0.15,
                      "feature_cache": str(tmp_path / "cache")}
    with qtbot.waitSignal(w.job_finished, timeout=180_000) as blocker:
        job = w.start()
        assert job is not None
        seen = []

        def bar_moves():
            bar = w.table.cellWidget(0, 2)
            assert isinstance(bar, QProgressBar)
            seen.append(bar.value())
            assert 0 < bar.value() < 1000

        qtbot.waitUntil(bar_moves, timeout=150_000)
    assert blocker.args[0].status == "done", blocker.args[0].state
    assert w.table.item(0, 1).text() == "done" and w.table.cellWidget(0, 2).value() == 1000
    assert out.exists()
    qtbot.waitUntil(lambda: mw.model is not None and mw.model.kind == "ensemble", timeout=60_000)
    assert mw.path.name == "adapted.safetensors"
    assert len(w.curve.loss) >= 2  # one point per epoch and base
