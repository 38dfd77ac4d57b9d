"""The bad-input battery (issue 21): every case is one line on stderr, the right exit
code, no input changed (hashes before/after), nothing stray left, nothing unpickled."""

import hashlib
import json
import os
import pickle
import resource

import pytest
import torch

from napari_nrf.cli import main


def digest(folder):
    out = {}
    for root, _, files in os.walk(folder):
        for f in files:
            p = os.path.join(root, f)
            with open(p, "rb") as fh:
                out[os.path.relpath(p, folder)] = hashlib.sha256(fh.read()).hexdigest()
    return out


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    d = tmp_path_factory.mktemp("bad")
    assert main(["simulate", "--subjects", "1", "--images", "24", "--max-voxels", "150", "--image-size", "32",
                 "--workers", "1", "--out", str(d / "data")]) == 0
    assert main(["train", str(d / "data" / "sub-01.h5"), "--preset", "tiny", "--epochs", "1",
                 "--out", str(d / "m.safetensors")]) == 0
    from PIL import Image
    import numpy as np

    Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(d / "img.png")
    return d


class Marker:
    """Unpickling this object would create the marker file."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


def run(argv, capsys, code, inputs_dir, expect=None):
    before = digest(inputs_dir)
    rc = main([str(a) for a in argv])
    err = capsys.readouterr().err.strip().splitlines()
    err = [ln for ln in err if ln.startswith("napari-nrf ")]
    assert rc == code, err
    assert len(err) == 1 and "Traceback" not in err[0], err
    if expect:
        assert expect in err[0], err
    after = digest(inputs_dir)
    assert {k: v for k, v in after.items() if k in before} == before  # no input changed
    return err[0], set(after) - set(before)


def test_outputs_never_replace_inputs(work, capsys):
    m, h5, img = work / "m.safetensors", work / "data" / "sub-01.h5", work / "img.png"
    cases = [
        (["evaluate", m, h5, "--json", m], "also an input"),
        (["evaluate", m, h5, "--json", h5], "also an input"),
        (["train", h5, "--preset", "tiny", "--out", h5], "also an input"),
        (["train", h5, "--preset", "tiny", "--out", m], "--overwrite"),
        (["import-nifti", img, "--mask", img, "--events", img, "--out", img], "also an input"),
        (["simulate", "--subjects", "1", "--images", "8", "--out", work / "data"], "--overwrite"),
        (["query", m, img, "--out", work, "--overwrite"], "also an input"),  # img.nii.gz? no: img.png is input
    ]
    (work / "img.nii.gz").write_bytes(b"a user's file")
    cases[-1] = (["query", m, img, "--out", work, "--names", "plain"], "--overwrite")
    for argv, expect in cases:
        line, new = run(argv, capsys, 2, work, expect)
        assert not {n for n in new if n.endswith((".parts", ".ckpt"))}, new
    assert (work / "img.nii.gz").read_bytes() == b"a user's file"
    (work / "img.nii.gz").unlink()


def test_device_checked_before_loading(work, capsys):
    m, img = work / "m.safetensors", work / "img.png"
    for dev in ["banana", "cuda:7"] + ([] if torch.cuda.is_available() else ["cuda"]):
        line, new = run(["query", m, img, "--device", dev, "--out", work / "q"], capsys, 2, work, "--device")
        assert not (work / "q").exists()


def _crafted(work, name, **config_over):
    from safetensors import safe_open
    from safetensors.torch import save_file

    with safe_open(str(work / "m.safetensors"), framework="pt") as f:
        meta = dict(f.metadata())
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    inner = json.loads(meta["napari_nrf"]) if "napari_nrf" in meta else None
    key = "napari_nrf" if inner is not None else next(k for k in meta if k != "format")
    inner = json.loads(meta[key])
    inner["config"].update(config_over)
    meta[key] = json.dumps(inner)
    p = work / name
    save_file(tensors, str(p), metadata=meta)
    return p


@pytest.mark.parametrize("over", [{"n_fourier": 10 ** 9}, {"width": 999999}, {"width": "abc"},
                                  {"depth": None}, {"no_such_argument": 1}])
def test_crafted_bundles_refused_before_allocation(work, capsys, over):
    p = _crafted(work, "crafted.safetensors", **over)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    try:
        line, _ = run(["query", p, work / "img.png", "--out", work / "q"], capsys, 2, work, "crafted.safetensors")
        assert "config" in line
        grown_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - peak) / 1024
        assert grown_mb < 200, grown_mb  # refused from the tensors' shapes, not after gigabytes
        print(f"peak RSS growth {grown_mb:.0f} MB for {over}")
    finally:
        p.unlink()
    assert not (work / "q").exists()


def test_malicious_pickles_never_unpickled(work, capsys, tmp_path):
    marker = tmp_path / "MARKER"
    evil = tmp_path / "evil.pth.tar"
    evil.write_bytes(pickle.dumps(Marker(str(marker))))
    renamed = tmp_path / "evil.safetensors"
    renamed.write_bytes(evil.read_bytes())
    h5, img = work / "data" / "sub-01.h5", work / "img.png"
    for argv in (["query", renamed, img, "--out", tmp_path / "q"],
                 ["query", evil, img, "--out", tmp_path / "q"],
                 ["evaluate", renamed, h5, "--json", tmp_path / "r.json"],
                 ["train", h5, "--preset", "tiny", "--epochs", "1", "--backbone", "clip-vit-b16",
                  "--backbone-weights", evil, "--out", tmp_path / "x.safetensors"]):
        rc = main([str(a) for a in argv])
        err = [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith("napari-nrf ")]
        assert rc != 0 and len(err) == 1 and "Traceback" not in err[0], err
        assert not marker.exists()
    assert not (tmp_path / "q").exists() and not (tmp_path / "x.safetensors.ckpt").exists()


def test_stale_checkpoint_is_not_resumed(work):
    from napari_nrf.data.responseset import ResponseSet
    from napari_nrf.train import _fingerprint

    rs = ResponseSet.load(work / "data" / "sub-01.h5")
    from napari_nrf.models import load_model

    model = load_model(work / "m.safetensors")
    a = _fingerprint(model, [rs], {"lr": 1e-3})
    rs.responses = rs.responses + 1.0  # same names and sizes, other content
    assert _fingerprint(model, [rs], {"lr": 1e-3}) != a
    assert not (work / "m.safetensors.ckpt").exists()  # a finished run leaves no checkpoint


def test_silent_garbage_refused(work, capsys, tmp_path):
    m, h5, img = work / "m.safetensors", work / "data" / "sub-01.h5", work / "img.png"
    for argv, flag in ((["simulate", "--snr", "nan", "--out", tmp_path / "s"], "--snr"),
                       (["query", m, img, "--resolution", "nan", "--out", tmp_path / "s"], "--resolution"),
                       (["query", m, img, "--mask", "", "--out", tmp_path / "s"], "--mask"),
                       (["train", h5, "--preset", "tiny", "--width", "0", "--out", tmp_path / "w.safetensors"],
                        "--width"),
                       (["evaluate", m, h5, "--candidates", "0", "--json", tmp_path / "e.json"], "--candidates")):
        run(argv, capsys, 2, work, flag)
    assert sorted(os.listdir(tmp_path)) == []  # nothing stray


def test_jobs_list_and_cancel_never_start_a_queued_job(tmp_path, capsys):
    from napari_nrf.jobs import JobManager

    run(["jobs", "list", "--jobs-dir", tmp_path / "nowhere"], capsys, 2, tmp_path, "--jobs-dir")
    assert not (tmp_path / "nowhere").exists()
    mgr = JobManager(tmp_path / "jobs")
    job = mgr.submit("napari_nrf.jobs:demo_job", {}, start=False)
    assert main(["jobs", "list", "--jobs-dir", str(tmp_path / "jobs")]) == 0
    assert mgr.get(job.id).status == "queued"
    assert main(["jobs", "cancel", job.id, "--jobs-dir", str(tmp_path / "jobs")]) == 0
    assert mgr.get(job.id).status == "cancelled"
    capsys.readouterr()
    run(["jobs", "cancel", job.id, "--jobs-dir", tmp_path / "jobs"], capsys, 2, tmp_path, "already ended")


def test_universal_defaults_are_cpu_sized():
    from napari_nrf.cli import build_parser
    from napari_nrf.cli.universal import UNIVERSAL_PRESETS

    a = build_parser().parse_args(["train-universal", "x.h5", "--out", "u.safetensors"])
    assert a.preset == "demo" and UNIVERSAL_PRESETS["demo"] == {"embed_dim": 64, "channels": 32}
    assert build_parser().parse_args(["train-universal", "x.h5", "--out", "u.safetensors",
                                      "--preset", "paper"]).preset == "paper"
