"""Background jobs: spawned child, progress lines, cancel, kill + resume, queue, protected inputs."""

import hashlib
import time

import pytest
from safetensors.torch import load_file

from napari_nrf.jobs import JobContext, JobError, JobManager, demo_job

DEMO = "napari_nrf.jobs:demo_job"


def _digest(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_job_completes_with_progress(tmp_path):
    mgr = JobManager(tmp_path / "jobs")
    out = tmp_path / "w.safetensors"
    job = mgr.submit(DEMO, {"out": str(out), "n_steps": 20}, outputs=[out])
    seen = []
    mgr.wait(job.id, timeout=120, callback=seen.append)
    assert job.status == "done", job.state
    assert out.exists() and load_file(str(out))["w"].shape == (8,)
    assert [r["step"] for r in seen] == list(range(1, 21))
    assert {"epoch", "loss", "fraction"} <= set(seen[-1]) and "eta_s" in seen[-1]
    assert job.state["result"]["steps"] == 20
    # An existing output is not overwritten unless asked.
    with pytest.raises(JobError, match="exists already"):
        mgr.submit(DEMO, {"out": str(out)}, outputs=[out])


def test_kill_and_resume_matches_uninterrupted(tmp_path):
    mgr = JobManager(tmp_path / "jobs")
    ref, res = tmp_path / "ref.safetensors", tmp_path / "res.safetensors"
    kw = {"n_steps": 40, "steps_per_epoch": 10, "checkpoint_every": 5, "seed": 3}
    b = mgr.submit(DEMO, dict(kw, out=str(res), step_sleep=0.05), outputs=[res])
    # The uninterrupted reference runs in this process (same target, same seed).
    demo_job(JobContext(tmp_path / "ref-job"), out=str(ref), **kw)
    # Kill b mid-epoch, after its second checkpoint (step 10) but before the next (15).
    t0 = time.time()
    while (b.last_progress().get("step") or 0) < 12:
        assert time.time() - t0 < 120, b.state
        time.sleep(0.02)
    mgr.kill(b.id)
    assert b.status == "interrupted" and not res.exists() and b.state["exitcode"] == -9
    mgr.resume(b.id)
    mgr.wait(b.id, timeout=120)
    assert b.status == "done" and b.state["attempt"] == 2
    # issue 21: the finished resumed job's record is clean (no exit code -9 of the kill)
    assert "exitcode" not in b.state and b.state.get("error") is None
    steps = [r["step"] for r in b.progress()]
    assert steps.count(11) == 2  # steps 11.. were redone from the step-10 checkpoint
    assert (load_file(str(ref))["w"] == load_file(str(res))["w"]).all()


def test_cancel_leaves_no_output_and_bases_untouched(tmp_path):
    mgr = JobManager(tmp_path / "jobs")
    base = tmp_path / "base.safetensors"
    base.write_bytes(b"pretend base model")
    before = _digest(base)
    with pytest.raises(JobError, match="never overwrites a base model"):
        mgr.submit(DEMO, {"out": str(base)}, outputs=[base], protected=[base], overwrite=True)
    out = tmp_path / "new.safetensors"
    job = mgr.submit(DEMO, {"out": str(out), "n_steps": 400, "step_sleep": 0.02}, outputs=[out], protected=[base])
    queued = mgr.submit(DEMO, {"out": str(tmp_path / "q.safetensors")})  # waits: one job per device
    t0 = time.time()
    while (job.last_progress().get("step") or 0) < 3:
        assert time.time() - t0 < 120, job.state
        time.sleep(0.02)
    assert queued.status == "queued"
    mgr.cancel(queued.id)
    assert queued.status == "cancelled"
    mgr.cancel(job.id)
    mgr.wait(job.id, timeout=60)
    assert job.status == "cancelled"
    assert not out.exists() and not list(tmp_path.glob(".new.safetensors*"))
    assert _digest(base) == before


def test_restart_marks_dead_job_interrupted(tmp_path):
    """A job whose process died while no manager watched (napari quit) becomes resumable."""
    mgr = JobManager(tmp_path / "jobs")
    job = mgr.submit(DEMO, {"out": str(tmp_path / "o.safetensors")}, start=False)
    import json

    (job.dir / "state.json").write_text(json.dumps({"state": "running", "pid": 2 ** 22 + 12345,
                                                    "host": __import__("socket").gethostname()}))
    fresh = JobManager(tmp_path / "jobs")  # a new napari session
    fresh.poll()
    assert job.status == "interrupted"
    with pytest.raises(JobError, match="only interrupted"):
        fresh.resume(fresh.submit(DEMO, {"out": str(tmp_path / "p.safetensors")}, start=False).id)


def test_submitit_local_backend(tmp_path):
    pytest.importorskip("submitit")
    mgr = JobManager(tmp_path / "jobs", backend="submitit", submitit_params={"cluster": "local", "timeout_min": 5})
    out = tmp_path / "s.safetensors"
    job = mgr.submit(DEMO, {"out": str(out), "n_steps": 10}, outputs=[out])
    mgr.wait(job.id, timeout=180)
    assert job.status == "done" and out.exists()
