"""SLURM through submitit (issue 18): profiles and flags, a requeue at the time limit that
resumes from the last epoch, the cluster's true state after a restart."""

import json
import os
import signal
import socket
import sys
import time

import numpy as np
import pytest

from napari_nrf.cluster import ClusterError, cluster_state, load_profile, submitit_params
from napari_nrf.jobs import JobManager

submitit = pytest.importorskip("submitit")


def test_profile_and_flags(tmp_path):
    prof = tmp_path / "gpu.toml"
    prof.write_text('cluster = "slurm"\n[slurm]\npartition = "gpu"\ntime = 240\ngpus = 2\nmem = 32\n'
                    'account = "lab"\narray_parallelism = 4\nslurm_constraint = "a100"\n')
    assert load_profile(prof)["partition"] == "gpu"
    p = submitit_params(prof, gpus=1, partition=None)  # a flag overrides, None keeps the profile's
    assert p == {"cluster": "slurm", "slurm_partition": "gpu", "timeout_min": 240, "gpus_per_node": 1,
                 "mem_gb": 32.0, "slurm_account": "lab", "slurm_array_parallelism": 4, "slurm_constraint": "a100"}
    with pytest.raises(ClusterError, match="positive"):
        submitit_params(None, gpus=0)
    with pytest.raises(ClusterError, match="no such file"):
        submitit_params(tmp_path / "missing.toml")


def _train_kwargs(tmp_path):
    sys.path.insert(0, os.path.dirname(__file__))
    from _nrf_data import synth_set

    rs, _ = synth_set(n=30, max_n=100, n_val=6, n_test=2, step=8.0)
    data = rs.save(tmp_path / "sub-01.h5")
    return data, dict(preset="tiny", epochs=4, batch_images=8, batch_voxels=50, steps_per_epoch=2, lr=1e-3)


def test_local_job_requeues_after_timeout_and_ends_with_uninterrupted_weights(tmp_path):
    """SLURM signals a job (USR2) before its time limit; submitit calls the job's
    checkpoint(), requeues it, and the new run resumes from the last epoch's checkpoint."""
    from napari_nrf.models.bundle import load_bundle
    from napari_nrf.train_jobs import submit_train

    data, kw = _train_kwargs(tmp_path)
    ref = JobManager(tmp_path / "ref")
    job = submit_train(ref, data, tmp_path / "ref.safetensors", device="cpu", start=False, threads=1, **kw)
    assert ref.run_inline(job.id, threads=1).status == "done"

    # timeout_min < 10: submitit counts a signal as the time limit ("timed-out"), not a preemption.
    mgr = JobManager(tmp_path / "jobs", backend="submitit", submitit_params={"cluster": "local", "timeout_min": 5})
    out = tmp_path / "cluster.safetensors"
    job = submit_train(mgr, data, out, device="cpu", threads=1, step_delay=1.0, **kw)
    t0 = time.time()
    while not any("epoch" in r for r in job.progress()):  # the first epoch's checkpoint is written
        assert time.time() - t0 < 240 and job.status == "running", job.state
        time.sleep(0.1)
    os.kill(int(job.state["pid"]), signal.SIGUSR2)  # what SLURM sends at the time limit
    mgr.wait(job.id, timeout=300)
    st = job.state
    assert st["state"] == "done", st
    assert st["requeues"] == 1 and st["runs"] == 2
    logs = "".join(p.read_text() for p in (job.dir / "submitit").glob("*.err"))
    assert "timed-out" in logs
    assert any(r.get("stage", "").startswith("requeued") for r in job.progress())
    a, b = load_bundle(tmp_path / "ref.safetensors")[0], load_bundle(out)[0]
    assert a.keys() == b.keys() and all(np.array_equal(a[k].numpy(), b[k].numpy()) for k in a)


def _fake_sacct(tmp_path, monkeypatch, states: dict):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    lines = "\\n".join(f"{j}|{s}|node7" for j, s in states.items())
    (bin_dir / "sacct").write_text(f"#!/bin/sh\nprintf 'JobID|State|NodeList\\n{lines}\\n'\n")
    (bin_dir / "sacct").chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")


def _cluster_job(mgr, tmp_path, sid):
    job = mgr.submit("napari_nrf.jobs:demo_job", {"out": str(tmp_path / f"{sid}.safetensors")}, start=False)
    # As an earlier napari session left it: submitted to SLURM, running on another node.
    (job.dir / "state.json").write_text(json.dumps({"state": "running", "backend": "submitit", "host": "node7",
                                                    "pid": 4242, "attempt": 1}))
    (job.dir / "submitit.json").write_text(json.dumps({"submitit_id": sid, "cluster": "slurm",
                                                       "submitit_folder": str(job.dir / "submitit"),
                                                       "submit_host": socket.gethostname()}))
    return job


def test_jobs_list_shows_the_true_slurm_state_after_a_restart(tmp_path, monkeypatch, capsys):
    from napari_nrf.cli import main

    _fake_sacct(tmp_path, monkeypatch, {"9001": "PENDING", "9002": "CANCELLED by 1000", "9003": "TIMEOUT",
                                        "9004": "RUNNING"})
    root = tmp_path / "jobs"
    mgr = JobManager(root)
    jobs = {sid: _cluster_job(mgr, tmp_path, sid) for sid in ("9001", "9002", "9003", "9004")}
    assert cluster_state({"backend": "submitit", "submitit_id": "9002", "cluster": "slurm"}) == "CANCELLED"
    assert main(["jobs", "list", "--jobs-dir", str(root)]) == 0  # a fresh process's view
    out = capsys.readouterr().out
    rows = {sid: next(line for line in out.splitlines() if line.startswith(j.id)) for sid, j in jobs.items()}
    assert "running" in rows["9001"] and "PENDING" in rows["9001"]
    assert "failed" in rows["9002"] and "CANCELLED" in rows["9002"]  # killed on the cluster: not running
    assert "failed" in rows["9003"] and "TIMEOUT" in rows["9003"]
    assert "running" in rows["9004"] and "RUNNING" in rows["9004"]
    assert jobs["9002"].status == "failed" and "9002" in jobs["9002"].state["error"]
    # a failed cluster job resumes from its checkpoints
    mgr.resume(jobs["9002"].id, start=False)
    assert jobs["9002"].status == "queued"


def test_cli_train_on_the_local_executor(tmp_path, capsys):
    """``napari-nrf train ... --cluster local`` (submitit's local executor standing in for
    SLURM) queues the training job, follows it and writes the model."""
    from napari_nrf.cli import main

    data, _ = _train_kwargs(tmp_path)
    out = tmp_path / "m.safetensors"
    rc = main(["train", str(data), "--out", str(out), "--preset", "tiny", "--epochs", "1", "--batch-images", "8",
               "--batch-voxels", "50", "--device", "cpu", "--cluster", "local", "--time", "5",
               "--jobs-dir", str(tmp_path / "jobs")])
    assert rc == 0 and out.exists()
    assert "submitted to local" in capsys.readouterr().out
    (job,) = JobManager(tmp_path / "jobs").jobs()
    assert job.state["backend"] == "submitit" and job.status == "done"
