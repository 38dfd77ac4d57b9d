"""The Training jobs widget starts tiny finetune and training jobs, shows their progress and opens the result."""

import pytest

from _adapt_data import make_adaptation_files

pytestmark = pytest.mark.gui


def _docks(viewer, tmp_path):
    """The Encoding model and Training jobs widgets opened from the Plugins menu; fast polling."""
    import os

    from _plugin import open_widgets

    os.environ["NAPARI_NRF_JOBS"] = str(tmp_path / "jobs")  # the jobs folder a user sets
    try:
        widgets = open_widgets(viewer, ["Encoding model", "Training jobs"])
    finally:
        del os.environ["NAPARI_NRF_JOBS"]
    mw, w = widgets["Encoding model"], widgets["Training jobs"]
    w.timer.setInterval(100)
    return mw, w


def test_widget_runs_a_job_and_opens_the_model(make_napari_viewer, qtbot, tmp_path):
    from qtpy.QtWidgets import QProgressBar

    bases, data = make_adaptation_files(tmp_path)
    mw, w = _docks(make_napari_viewer(), tmp_path)
    w.add_bases([str(b) for b in bases])
    w.data.setText(str(data))
    out = tmp_path / "adapted.safetensors"
    w.out.setText(str(out))
    w.n_images.setValue(8)
    w.epochs.setValue(2)
    w.device.setCurrentText("cpu")
    w.threads = 1
    w.extra_kwargs = {"batch_images": 4, "batch_voxels": 30, "step_delay": 0.15, "steps_per_epoch": 2,
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


def test_widget_trains_a_new_nrf_in_the_background(make_napari_viewer, qtbot, tmp_path):
    _, data = make_adaptation_files(tmp_path)
    mw, w = _docks(make_napari_viewer(), tmp_path)
    w.mode.setCurrentIndex(1)
    assert w.training and w.start_btn.text() == "Start training job"
    assert w.preset.isVisibleTo(w) and not w.bases.isVisibleTo(w)
    w.data.setText(f"{data}; ")
    w.out.setText(str(tmp_path / "bad.pt"))
    assert w.start() is None and "end in .safetensors" in w.status.text()  # refused at once
    out = tmp_path / "trained.safetensors"
    w.out.setText(str(out))
    w.preset.setCurrentText("tiny")
    # issue 14: a new NRF follows the NRF preset's step schedule ("auto"), not finetuning's epochs
    from napari_nrf.settings import NRF_FIT

    assert w.steps.isVisibleTo(w) and not w.epochs.isVisibleTo(w)
    assert NRF_FIT.steps is None and w.steps.value() == 0 and w.steps.text() == "auto"
    w.steps.setValue(6)  # 2 epochs of 3 steps
    w.device.setCurrentText("cpu")
    w.threads = 1
    w.extra_kwargs = {"batch_images": 4, "batch_voxels": 30, "steps_per_epoch": 3,
                      "feature_cache": str(tmp_path / "cache")}
    with qtbot.waitSignal(w.job_finished, timeout=180_000) as blocker:
        job = w.start()
        assert job is not None and job.name.startswith("train trained")
    assert blocker.args[0].status == "done", blocker.args[0].state
    assert w.table.item(0, 1).text() == "done" and w.table.cellWidget(0, 2).value() == 1000
    qtbot.waitUntil(lambda: mw.model is not None and mw.model.kind == "nrf", timeout=60_000)
    assert mw.path.name == "trained.safetensors" and len(w.curve.loss) == 2


def test_an_existing_output_is_refused_in_the_widgets_words(make_napari_viewer, qtbot, tmp_path):
    """The form names its own checkbox, not the CLI's --overwrite; ticking it lets the job start."""
    _, data = make_adaptation_files(tmp_path)
    mw, w = _docks(make_napari_viewer(), tmp_path)
    w.mode.setCurrentIndex(1)
    out = tmp_path / "taken.safetensors"
    out.write_bytes(b"someone's model")
    w.data.setText(str(data))
    w.out.setText(str(out))
    w.device.setCurrentText("cpu")
    w.extra_kwargs = {"feature_cache": str(tmp_path / "cache")}
    assert w.start() is None
    msg = w.status.text()
    assert "already exists" in msg and "replace an existing output file" in msg and "--overwrite" not in msg
    assert out.read_bytes() == b"someone's model" and not [p for p in (tmp_path / "jobs").glob("*") if p.is_dir()]  # no job folder
    w.preset.setCurrentText("tiny")
    w.steps.setValue(2)
    w.threads = 1
    w.replace.setChecked(True)
    w.extra_kwargs = {"batch_images": 4, "batch_voxels": 30, "steps_per_epoch": 2,
                      "feature_cache": str(tmp_path / "cache")}
    with qtbot.waitSignal(w.job_finished, timeout=180_000) as blocker:
        assert w.start() is not None
    assert blocker.args[0].status == "done", blocker.args[0].state
    assert out.read_bytes() != b"someone's model"
    qtbot.waitUntil(lambda: mw.model is not None and mw.model.kind == "nrf", timeout=60_000)  # the job opens it


def test_a_cancelled_job_row_keeps_the_progress_it_reached(make_napari_viewer, tmp_path, monkeypatch):
    """A job cancelled at 16 % reads "cancelled" at 16 %, also after a new job pushed the
    rows down (the progress records are read once, incrementally)."""
    from types import SimpleNamespace

    from napari_nrf.widgets.jobs_widget import GROUP

    _mw, w = _docks(make_napari_viewer(), tmp_path)
    w.timer.stop()

    def job(jid, status, records):
        feed = list(records)

        def read_progress(offset):
            out = feed[offset:]
            return out, len(feed)

        return SimpleNamespace(id=jid, name=jid, group=GROUP, spec={}, dir=tmp_path / jid, status=status,
                               state={}, cluster_state=None, read_progress=read_progress)

    first = job("a", "cancelled", [{"stage": "training", "fraction": 0.16}])
    jobs = [first]
    monkeypatch.setattr(w.manager, "poll", lambda: list(jobs))
    w.refresh()
    assert w.table.cellWidget(0, 2).value() == 160
    jobs.append(job("b", "running", [{"stage": "features", "fraction": 0.02}]))  # newest first: a moves down
    w.refresh()
    w.refresh()
    assert w.table.item(1, 0).text() == "a" and w.table.item(1, 1).text() == "cancelled"
    assert w.table.cellWidget(1, 2).value() == 160 and w.table.cellWidget(0, 2).value() == 20


def test_loss_curve_has_axes(make_napari_viewer, tmp_path):
    _mw, w = _docks(make_napari_viewer(), tmp_path)
    w.curve.set_data([1.0, 0.5, 0.25], [0.1, 0.2, float("nan")])
    labels = w.curve.axis_labels()
    assert labels == {"x": "epoch 1 - 3", "loss": ("0.25", "1"), "val": ("0.1", "0.2")}
    w.curve.resize(340, 120)
    assert not w.curve.grab().isNull()  # paints with its axes
