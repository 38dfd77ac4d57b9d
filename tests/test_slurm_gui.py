"""The Training jobs widget runs a job through submitit (its local executor standing in
for SLURM): a cluster job in the same table, with the same progress and curves."""

import pytest

from _adapt_data import make_adaptation_files

pytestmark = pytest.mark.gui
pytest.importorskip("submitit")


def test_widget_runs_a_training_job_through_submitit(make_napari_viewer, qtbot, tmp_path):
    import os

    from _plugin import open_widgets

    _, data = make_adaptation_files(tmp_path)
    os.environ["NAPARI_NRF_JOBS"] = str(tmp_path / "jobs")
    try:
        widgets = open_widgets(make_napari_viewer(), ["Encoding model", "Training jobs"])
    finally:
        del os.environ["NAPARI_NRF_JOBS"]
    mw, w = widgets["Encoding model"], widgets["Training jobs"]
    w.timer.setInterval(100)
    w.mode.setCurrentIndex(1)
    w.run_on.setCurrentIndex(1)  # SLURM: the profile row shows
    assert w.profile.isVisibleTo(w)
    prof = tmp_path / "local.toml"
    prof.write_text("[slurm]\ntime = 5\n")
    w.profile.setText(str(prof))
    w.run_on.setCurrentIndex(2)  # submitit's local executor, with the same profile
    out = tmp_path / "cluster.safetensors"
    w.data.setText(str(data))
    w.out.setText(str(out))
    w.preset.setCurrentText("tiny")
    w.steps.setValue(6)  # 2 epochs of 3 steps (the NRF mode schedules in steps)
    w.device.setCurrentText("cpu")
    w.threads = 1
    w.extra_kwargs = {"batch_images": 4, "batch_voxels": 30, "steps_per_epoch": 3}
    with qtbot.waitSignal(w.job_finished, timeout=240_000) as blocker:
        job = w.start()
        assert job is not None and job.spec["backend"] == "submitit"
        assert job.spec["submitit_params"] == {"timeout_min": 5, "cluster": "local"}
    assert blocker.args[0].status == "done", blocker.args[0].state
    assert w.table.item(0, 1).text() == "done" and w.table.cellWidget(0, 2).value() == 1000
    assert len(w.curve.loss) == 2 and out.exists()
    qtbot.waitUntil(lambda: mw.model is not None and mw.model.kind == "nrf", timeout=60_000)
