"""New-subject adaptation as a background job: finetune + ensemble, kill + resume, cancel, CLI."""

import hashlib
import time

import numpy as np
import pytest
from safetensors.torch import load_file

from napari_nrf.data.responseset import ResponseSet
from napari_nrf.finetune import FinetuneError, finetune_ensemble, select_images
from napari_nrf.train_jobs import finetune_job, submit_finetune
from napari_nrf.jobs import JobContext, JobManager
from napari_nrf.models import load_model

from _adapt_data import make_adaptation_files

# steps_per_epoch 3: one pass over the 12 images (FINETUNE_FIT's 20-step epochs are for real data)
TINY = dict(n_images=12, epochs=3, batch_images=4, batch_voxels=40, patience=5, seed=1, steps_per_epoch=3)


@pytest.fixture(autouse=True)
def _one_thread():
    """One torch thread here and in the jobs (threads=1): tiny models on a busy 2-core
    machine run many times faster, and the reference and the job compute alike."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """Two tiny NRF bases (efficientnet-lite0 features) and a 20-image new subject."""
    d = tmp_path_factory.mktemp("adapt")
    bases, data = make_adaptation_files(d)
    return d, bases, data


def _digest(p):
    return hashlib.sha256(p.read_bytes()).hexdigest()


def test_select_images(setup):
    _, _, data = setup
    rs = ResponseSet.load(data)
    sub, rows = select_images(rs, 5, seed=0)
    assert (sub.split == 0).sum() == 5 and (sub.split == 1).sum() == 6
    assert np.array_equal(select_images(rs, 5, seed=0)[1], rows)
    with pytest.raises(FinetuneError, match="has 14 training images"):
        select_images(rs, 50)


def test_job_kill_resume_matches_uninterrupted(setup, tmp_path):
    d, bases, data = setup
    digests = [_digest(b) for b in bases]
    cache = str(tmp_path / "cache")
    ref = tmp_path / "ref.safetensors"
    # Uninterrupted reference, in this process; it also fills the feature cache.
    finetune_job(JobContext(tmp_path / "ref-job"), [str(b) for b in bases], str(data), str(ref),
                 feature_cache=cache, **TINY)
    ens = load_model(ref)
    assert ens.kind == "ensemble" and len(ens.bases) == 2 and ens.subject == "sub-new"
    assert ens.weights.shape == (60, 2)
    assert "val_median_pearson" in ens.metrics

    mgr = JobManager(tmp_path / "jobs")
    out = tmp_path / "new.safetensors"
    job = submit_finetune(mgr, bases, data, out, feature_cache=cache, step_delay=0.1, threads=1, **TINY)
    t0 = time.time()
    # Kill mid-epoch: base 1 has finished epoch 0 (its checkpoint exists) and runs epoch 1.
    while not any(r.get("base") == 1 and r.get("epoch") == 0 for r in job.progress()):
        assert time.time() - t0 < 150, (job.state, job.progress()[-3:])
        time.sleep(0.05)
    time.sleep(0.15)
    mgr.kill(job.id)
    assert job.status == "interrupted" and not out.exists()
    assert (job.dir / "checkpoints" / "finetuned-0.safetensors").exists()
    mgr.resume(job.id)
    mgr.wait(job.id, timeout=150)
    assert job.status == "done", job.state
    assert any("done before" in (r.get("stage") or "") for r in job.progress())  # base 0 was not redone
    a, b = load_file(str(ref)), load_file(str(out))
    assert a.keys() == b.keys()
    for k in a:
        assert np.array_equal(a[k].numpy(), b[k].numpy()), k
    assert [_digest(p) for p in bases] == digests


def test_cancel_keeps_bases_and_writes_nothing(setup, tmp_path):
    _, bases, data = setup
    digests = [_digest(b) for b in bases]
    mgr = JobManager(tmp_path / "jobs")
    out = tmp_path / "c.safetensors"
    with pytest.raises(ValueError, match="also an input"):  # the shared output check (issue 21)
        submit_finetune(mgr, bases, data, bases[0], overwrite=True)
    job = submit_finetune(mgr, bases, data, out, feature_cache=str(tmp_path / "cache"), step_delay=0.1, threads=1, **TINY)
    t0 = time.time()
    while not any((r.get("stage") or "").startswith("finetune") for r in job.progress()):
        assert time.time() - t0 < 150, job.state
        time.sleep(0.05)
    mgr.cancel(job.id)
    mgr.wait(job.id, timeout=60)
    assert job.status == "cancelled"
    assert not out.exists() and not list(tmp_path.glob(".c.safetensors*"))
    assert [_digest(p) for p in bases] == digests


def test_cli_finetune(setup, tmp_path):
    from napari_nrf.cli import main

    _, bases, data = setup
    out = tmp_path / "cli.safetensors"
    rc = main(["finetune", "--base", *map(str, bases), "--data", str(data), "--images", "6", "--epochs", "1",
               "--batch-images", "4", "--batch-voxels", "30", "--out", str(out), "--jobs-dir", str(tmp_path / "j"),
               "--cache", str(tmp_path / "cache"), "--inline", "--threads", "1"])
    assert rc == 0 and load_model(out).kind == "ensemble"
    rc = main(["finetune", "--base", str(bases[0]), "--data", str(data), "--out", str(bases[0]), "--inline",
               "--overwrite"])
    assert rc == 2


@pytest.mark.slow
def test_science_script_tiny(tmp_path):
    """benchmarks/finetune_science.py end to end on tiny settings (the numbers mean nothing)."""
    import json
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    from finetune_science import main

    res = main(["--tiny", "--out", str(tmp_path / "r.json"), "--cache", str(tmp_path / "cache")])
    assert set(res["sizes"]) == {"6", "12"}
    row = res["sizes"]["6"]
    for k in ("scratch", "finetune_base1", "simple_average", "finetune_ensemble", "ensemble_pretrained", "ridge", "fwrf"):
        assert -1 <= row[k]["r_median"] <= 1 and np.isfinite(row[k]["mse"])
    assert json.loads((tmp_path / "r.json").read_text())["config"]["new_subject"] == "sub-04"
    # Rotating the held-out subject, then the mean +- sd over the two runs.
    res1 = main(["--tiny", "--held-out", "1", "--sizes", "6", "--out", str(tmp_path / "r1.json"),
                 "--cache", str(tmp_path / "cache")])
    assert res1["config"]["new_subject"] == "sub-01"
    assert res1["config"]["bases"] == ["sub-02", "sub-03", "sub-04"]
    m = main(["--merge", f"{tmp_path / 'r.json'},{tmp_path / 'r1.json'}", "--out", str(tmp_path / "m.json")])
    assert set(m["sizes"]) == {"6"}
    cell = m["sizes"]["6"]["scratch"]["r_median"]
    vals = [row["sizes"]["6"]["scratch"]["r_median"] for row in (res, res1)]
    assert cell["per_subject"] == vals and abs(cell["mean"] - np.mean(vals)) < 1e-12


def test_universal_transfer_job_and_ensemble(setup, tmp_path):
    """Embeddings-only transfer of a universal encoder through the job target; the base
    file stays untouched and the output predicts the new subject."""
    from napari_nrf.train_jobs import transfer_job
    from napari_nrf.models.universal import build_universal

    _, _, data = setup
    rng = np.random.default_rng(0)
    uni = build_universal("efficientnet-lite0", {"sub-01": rng.uniform(-50, 50, (30, 3))}, levels=["s32", "embedding"],
                          embed_dim=8, channels=8, mlp_ratio=1)
    base = uni.save(tmp_path / "uni.safetensors")
    before = _digest(base)
    out = tmp_path / "uni-new.safetensors"
    res = transfer_job(JobContext(tmp_path / "job"), str(base), str(data), str(out), n_images=8, epochs=1,
                       batch_images=4, batch_voxels=30, feature_cache=str(tmp_path / "cache"))
    assert res["subject"] == "sub-new"
    m = load_model(out)
    assert set(m.subjects) == {"sub-01", "sub-new"} and _digest(base) == before
    # The same base inside an ensemble: transfer per base, then the voxelwise fit.
    calls, epochs = [], []
    ens, info = finetune_ensemble([base], data, n_images=8, epochs=1, batch_images=4, batch_voxels=30,
                                  feature_cache=str(tmp_path / "cache"),
                                  progress=lambda *a: calls.append(a), on_epoch=epochs.append)
    assert ens.weights.shape == (60, 1) and not ens.continuous
    # issue 14: the shared progress shape progress(done, total, message) and fit's epoch records
    assert all(len(c) == 3 and isinstance(c[0], int) and isinstance(c[2], str) for c in calls)
    assert calls[-1] == (1000, 1000, "done") and [c[2] for c in calls][:2] == ["features", "finetune base 1/1"]
    assert epochs and {"epoch", "train_loss", "base", "stage"} <= set(epochs[0]) and epochs[0]["base"] == 0


def test_train_job_cancel_resume_equals_an_uninterrupted_run(setup, tmp_path):
    """A new NRF trained in the background: bad input refused at submit, a cancel mid-run
    writes nothing, resume finishes with the same weights as an in-process run."""
    from napari_nrf.train_jobs import submit_train, train_job

    _, _, data = setup
    kw = dict(preset="tiny", epochs=3, batch_images=4, batch_voxels=40, steps_per_epoch=4, seed=2,
              feature_cache=str(tmp_path / "cache"))
    ref = tmp_path / "ref.safetensors"
    res = train_job(JobContext(tmp_path / "ref-job"), [str(data)], str(ref), **kw)
    assert res["subjects"] == ["sub-new"] and load_model(ref).kind == "nrf"

    mgr = JobManager(tmp_path / "jobs")
    with pytest.raises(ValueError, match="end in .safetensors"):
        submit_train(mgr, [data], tmp_path / "m.pt", **kw)
    with pytest.raises(ValueError, match="batch_voxels"):
        submit_train(mgr, [data], tmp_path / "m.safetensors", **{**kw, "batch_voxels": 0})
    with pytest.raises(ValueError, match="not found"):
        submit_train(mgr, [tmp_path / "none.h5"], tmp_path / "m.safetensors", **kw)
    out = tmp_path / "new.safetensors"
    job = submit_train(mgr, [data], out, step_delay=0.1, threads=1, **kw)
    t0 = time.time()
    while not any(r.get("epoch") == 0 for r in job.progress()):  # epoch 0's checkpoint is written
        assert time.time() - t0 < 150, (job.state, job.progress()[-3:])
        time.sleep(0.05)
    mgr.cancel(job.id)
    mgr.wait(job.id, timeout=60)
    assert job.status == "cancelled" and not out.exists()
    mgr.resume(job.id)
    mgr.wait(job.id, timeout=150)
    assert job.status == "done", job.state
    assert any(r.get("fraction") == 1.0 for r in job.progress())
    assert any(r.get("stage", "").startswith("features sub-new") for r in job.progress())  # before step 1
    a, b = load_file(str(ref)), load_file(str(out))
    for k in a:
        assert np.array_equal(a[k].numpy(), b[k].numpy()), k
