"""The bad-input battery, part 2 (issue 21): the submit paths' output check, crafted images,
libraries and caches with broken files, finetune bases that are not trainable models,
response sets with NaN / inf / impossible values or a future version, huge declared
datasets, import limits and leftovers. Each case: one clear message, no input changed."""

import hashlib
import os
import struct
import warnings
import zlib

import numpy as np
import pytest

from napari_nrf.cli import main
from napari_nrf.errors import NapariNRFError

from _nrf_data import SHAPES, synth_set


def _sha(p):
    return hashlib.sha256(open(p, "rb").read()).hexdigest()


def _err_line(capsys):
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith("napari-nrf ")]
    assert len(err) == 1 and "Traceback" not in err[0], err
    return err[0]


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """A tiny response set (.h5), an NRF bundle, an ensemble bundle over two NRFs and a PNG."""
    from PIL import Image

    from napari_nrf.models import MODEL_KINDS, discover_kinds

    d = tmp_path_factory.mktemp("bad2")
    rs, _ = synth_set(n=24, step=8.0, max_n=60, n_val=6, n_test=4, seed=2)
    rs.save(d / "sub-01.h5")
    discover_kinds()
    subjects = {rs.subject: rs.coords}
    nrf = MODEL_KINDS["nrf"].example(SHAPES, subjects, seed=0)
    nrf.save(d / "nrf.safetensors")
    ens = MODEL_KINDS["ensemble"].example(SHAPES, subjects, seed=0,
                                          bases=[MODEL_KINDS["nrf"].example(SHAPES, subjects, seed=k) for k in (1, 2)])
    ens.save(d / "ens.safetensors")
    Image.fromarray(np.full((32, 32, 3), 128, np.uint8)).save(d / "good.png")
    return d


def _bomb_png(path, side=100_000):
    """A 60-byte PNG whose header declares side x side pixels (PIL refuses it at open)."""
    def chunk(tag, data):
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data))

    ihdr = struct.pack(">IIBBBBB", side, side, 8, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0")) +
                     chunk(b"IEND", b""))
    return path


# ---- the widgets' submit paths use the shared output check ------------------------------
def test_submit_paths_refuse_inputs_and_existing_outputs(files, tmp_path):
    from napari_nrf.finetune import FinetuneError
    from napari_nrf.jobs import JobManager
    from napari_nrf.train_jobs import submit_finetune, submit_train

    mgr = JobManager(tmp_path / "jobs")
    nrf, h5 = files / "nrf.safetensors", files / "sub-01.h5"
    before = {p: _sha(p) for p in (nrf, h5)}
    link = tmp_path / "alias.safetensors"
    os.symlink(nrf, link)  # the same file under another name is still the input
    cases = [
        (lambda: submit_finetune(mgr, [nrf], h5, nrf, start=False), "also an input"),
        (lambda: submit_finetune(mgr, [nrf], h5, link, start=False), "also an input"),
        (lambda: submit_finetune(mgr, [nrf], h5, nrf, start=False, overwrite=True), "also an input"),
        (lambda: submit_finetune(mgr, [nrf], h5, files / "ens.safetensors", start=False), "--overwrite"),
        (lambda: submit_train(mgr, [h5], files / "ens.safetensors", start=False), "--overwrite"),
        (lambda: submit_finetune(mgr, [nrf], h5, tmp_path / "o.safetensors", device="banana", start=False),
         "banana"),
    ]
    for fn, expect in cases:
        with pytest.raises(NapariNRFError, match=expect):
            fn()
    assert mgr.jobs() == [] and {p: _sha(p) for p in before} == before


@pytest.mark.parametrize("base,expect", [("sub-01.h5", "response set"), ("ens.safetensors", "cannot be finetuned"),
                                         ("good.png", "not a readable safetensors")])
def test_finetune_base_must_be_a_trainable_model(files, tmp_path, capsys, base, expect):
    argv = ["finetune", "--base", str(files / base), "--data", str(files / "sub-01.h5"),
            "--out", str(tmp_path / "o.safetensors"), "--jobs-dir", str(tmp_path), "--inline"]
    assert main(argv) == 2
    line = _err_line(capsys)
    assert expect in line and base in line
    assert os.listdir(tmp_path) == []  # no job folder: refused before queueing


def test_finetune_invalid_numbers_refused_before_a_job(files, tmp_path, capsys):
    for flag, val in (("--lr", "0"), ("--lr", "nan"), ("--lr", "-1"), ("--epochs", "0"), ("--images", "0"),
                      ("--batch-images", "0"), ("--patience", "0")):
        argv = ["finetune", "--base", str(files / "nrf.safetensors"), "--data", str(files / "sub-01.h5"),
                "--out", str(tmp_path / "o.safetensors"), "--jobs-dir", str(tmp_path), flag, val]
        assert main(argv) == 2, (flag, val)
        line = _err_line(capsys)
        assert flag.lstrip("-").replace("-", "_") in line.replace("-", "_") or "learning rate" in line, line
    assert os.listdir(tmp_path) == []


# ---- images, libraries, caches --------------------------------------------------------------
def test_decompression_bomb_is_one_clear_error(tmp_path, files, capsys):
    from napari_nrf.features import ImageError, load_image_file

    bomb = _bomb_png(tmp_path / "bomb.png")
    with pytest.raises(ImageError, match="bomb.png is too large"):
        load_image_file(bomb)
    assert main(["query", str(files / "nrf.safetensors"), str(bomb), "--out", str(tmp_path / "q")]) == 2
    assert "too large" in _err_line(capsys) and not (tmp_path / "q").exists()


def test_volume_widget_reads_the_good_images_of_a_drop(tmp_path, files):
    pytest.importorskip("qtpy")
    from napari_nrf.widgets.volume_widget import _read_images

    images, names, errors = _read_images([_bomb_png(tmp_path / "bomb.png"), files / "good.png"])
    assert names == ["good"] and len(images) == 1 and len(errors) == 1 and "too large" in errors[0]


def test_library_skips_unreadable_images_with_a_warning(tmp_path, files):
    from napari_nrf.library import ImageLibrary

    lib_dir = tmp_path / "lib"
    lib_dir.mkdir()
    for i in range(3):
        (lib_dir / f"ok{i}.png").write_bytes((files / "good.png").read_bytes())
    (lib_dir / "broken.png").write_bytes(b"\x89PNG not really")
    _bomb_png(lib_dir / "bomb.png")
    with pytest.warns(UserWarning, match="skipped 2 unreadable") as rec:
        lib = ImageLibrary.from_folder(lib_dir)
    assert "broken.png" in str(rec[0].message) and "bomb.png" in str(rec[0].message)
    assert lib.names == ["ok0", "ok1", "ok2"]
    # a file that passes the header check but fails to decode is dropped when encoding
    good = (files / "good.png").read_bytes()
    (lib_dir / "ok1.png").write_bytes(good[: len(good) // 2])

    class Model:  # the encoder the library calls: decodes every image like a backbone would
        backbone_name = "test"

        def encode_images(self, images, cache=None, progress=None):
            from napari_nrf.features import to_rgb_uint8

            return {"x": np.stack([to_rgb_uint8(im).mean((0, 1)) for im in images])}

    lib = ImageLibrary([str(lib_dir / f"ok{i}.png") for i in range(3)])
    with pytest.warns(UserWarning, match="skipped 1 unreadable.*ok1"):
        feats = lib.features(Model())
    assert feats["x"].shape == (2, 3) and lib.names == ["ok0", "ok2"]


def test_corrupt_feature_cache_is_moved_aside_and_rebuilt(tmp_path):
    from napari_nrf.features import FeatureCache

    cache = FeatureCache(tmp_path)
    h = ["a" * 32, "b" * 32]
    cache.put("bb", h, {"f": np.ones((2, 4), np.float32)})
    p = cache.path("bb")
    p.write_bytes(b"garbage, not HDF5" * 10)  # a crash or another tool wrote over it
    fresh = FeatureCache(tmp_path)
    with pytest.warns(UserWarning, match="unreadable.*moved to"):
        assert ("bb", h[0]) not in fresh
    assert [q.name.split(".corrupt-")[0] for q in tmp_path.glob("*.corrupt-*")] == [p.name]
    fresh.put("bb", h, {"f": np.full((2, 4), 2.0, np.float32)})  # rebuilt
    feats, found = FeatureCache(tmp_path).get("bb", h)
    assert found.all() and np.all(feats["f"] == 2.0)


def test_backbone_errors_are_napari_nrf_errors():
    from napari_nrf.features import BackboneError

    assert issubclass(BackboneError, NapariNRFError) and issubclass(BackboneError, RuntimeError)


# ---- response sets: NaN / inf, impossible coordinates and splits, versions, sizes ------------
def _edited_set(files, tmp_path, name, **datasets):
    """A copy of the tiny set with some datasets replaced in the file (bypassing the checks
    a ResponseSet applies, as a damaged or foreign file would)."""
    import shutil

    import h5py

    p = tmp_path / name
    shutil.copy(files / "sub-01.h5", p)
    with h5py.File(p, "r+") as f:
        for key, val in datasets.items():
            if key.startswith("attr_"):
                f.attrs[key[5:]] = val
            else:
                f[key][...] = val
    return p


def _responses(files):
    from napari_nrf.data.responseset import ResponseSet

    return ResponseSet.load(files / "sub-01.h5").responses


@pytest.mark.parametrize("where", ["train", "val"])
def test_nan_or_inf_responses_name_rows_and_voxels(files, tmp_path, capsys, where):
    y = _responses(files).copy()
    row = 3 if where == "train" else 15  # rows 14..19 are validation
    y[row, 5] = np.nan if where == "train" else np.inf
    p = _edited_set(files, tmp_path, "nan.h5", responses=y)
    before = _sha(p)
    out = tmp_path / "m.safetensors"
    assert main(["train", str(p), "--preset", "tiny", "--epochs", "1", "--out", str(out)]) == 2
    line = _err_line(capsys)
    assert "NaN or infinite" in line and f"rows {row}" in line and "voxels 5" in line and where in line, line
    assert _sha(p) == before and not out.exists() and not (tmp_path / "m.safetensors.ckpt").exists()


def test_evaluate_refuses_nan_test_responses(files):
    from napari_nrf.data.responseset import ResponseSet, ResponseSetError
    from napari_nrf.evaluate import evaluate
    from napari_nrf.models import load_model

    rs = ResponseSet.load(files / "sub-01.h5")
    rs.responses[22, 7] = np.nan  # a test row
    with pytest.raises(ResponseSetError, match="rows 22 and voxels 7"):
        evaluate(load_model(files / "nrf.safetensors"), rs, features={k: np.zeros((24,) + s, np.float32)
                                                                      for k, s in SHAPES.items()})


@pytest.mark.parametrize("edit,expect", [
    ("far", "more than 500 mm"), ("nan_coord", "coords of 1 voxel(s) are NaN"), ("split7", "split values"),
    ("version", "version 99"), ("version_text", "version 'two'")])
def test_impossible_sets_are_one_clear_error(files, tmp_path, capsys, edit, expect):
    from napari_nrf.data.responseset import ResponseSet

    rs = ResponseSet.load(files / "sub-01.h5")
    c, split = rs.coords.copy(), rs.split.copy()
    if edit == "far":
        c[4] = [1e6, 0, 0]
    elif edit == "nan_coord":
        c[4, 1] = np.nan
    elif edit == "split7":
        split[2] = 7
    over = {"far": {"coords": c}, "nan_coord": {"coords": c}, "split7": {"split": split},
            "version": {"attr_version": 99}, "version_text": {"attr_version": "two"}}[edit]
    p = _edited_set(files, tmp_path, "odd.h5", **over)
    for argv in (["train", str(p), "--preset", "tiny", "--epochs", "1", "--out", str(tmp_path / "m.safetensors")],
                 ["evaluate", str(files / "nrf.safetensors"), str(p), "--json", str(tmp_path / "e.json")]):
        assert main(argv) == 2
        line = _err_line(capsys)
        assert expect in line and "odd.h5" in line or expect in line, line
    assert sorted(os.listdir(tmp_path)) == ["odd.h5"]


def test_huge_declared_datasets_are_read_lazily_or_refused(tmp_path, files):
    import resource

    import h5py

    from napari_nrf.data.responseset import ResponseSet, ResponseSetError

    rs = ResponseSet.load(files / "sub-01.h5")
    n, v = rs.n_images, rs.n_voxels
    # 24 stimuli of 40000 x 4000 px declared (11.5 GB) in a file of a few KB: never read whole
    p = tmp_path / "huge_images.h5"
    rs.save(p)
    with h5py.File(p, "r+") as f:
        del f["images"]
        f.create_dataset("images", shape=(n, 40000, 4000, 3), dtype=np.uint8, chunks=(1, 64, 64, 3))
    assert p.stat().st_size < 1 << 20
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    big = ResponseSet.load(p)
    try:
        assert isinstance(big.images, h5py.Dataset) and big.images.shape == (n, 40000, 4000, 3)
        assert big.get_responses([1, 0]).shape == (2, v)
    finally:
        big.close()
    # a per-voxel array declared at 10^11 voxels is refused before any allocation
    q = tmp_path / "huge_coords.h5"
    with h5py.File(q, "w") as f:
        f.attrs.update(format="napari-nrf-responses", version=1)
        f.create_dataset("responses", shape=(n, 10 ** 11), dtype=np.float32, chunks=(1, 4096))
        f.create_dataset("coords", shape=(10 ** 11, 3), dtype=np.float32, chunks=(4096, 3))
        f.create_dataset("split", data=rs.split)
        f.create_dataset("images", data=np.zeros((n, 8, 8, 3), np.uint8))
    with pytest.raises(ResponseSetError, match="huge_coords.h5: dataset '/coords' declares"):
        ResponseSet.load(q)
    grown_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - peak) / 1024
    assert grown_mb < 300, grown_mb


def test_nan_weights_are_refused(files, tmp_path, capsys):
    from safetensors import safe_open
    from safetensors.torch import save_file

    with safe_open(str(files / "nrf.safetensors"), framework="pt") as f:
        meta = dict(f.metadata())
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    name = next(k for k, t in tensors.items() if t.is_floating_point() and not k.startswith("subjects."))
    tensors[name] = tensors[name].clone().fill_(float("nan"))
    p = tmp_path / "nan.safetensors"
    save_file(tensors, str(p), metadata=meta)
    assert main(["query", str(p), str(files / "good.png"), "--out", str(tmp_path / "q")]) == 2
    line = _err_line(capsys)
    assert "nan.safetensors" in line and "NaN or infinite" in line and name in line
    assert not (tmp_path / "q").exists()


def test_empty_mask_is_refused(files):
    from napari_nrf import space
    from napari_nrf.models import load_model
    from napari_nrf.query import QueryEngine, QueryError

    eng = QueryEngine(load_model(files / "nrf.safetensors"))
    feats = {k: np.zeros((1,) + s, np.float32) for k, s in SHAPES.items()}
    g = space.Grid.from_extent(8.0)
    with pytest.raises(QueryError, match="selects no point"):
        eng.volume(feats, g, mask=np.zeros(g.shape, bool))


def test_cancelled_queued_job_leaves_the_queue_at_once(tmp_path):
    from napari_nrf.jobs import JobError, JobManager

    mgr = JobManager(tmp_path / "jobs")
    job = mgr.submit("napari_nrf.jobs:demo_job", {"out": str(tmp_path / "w.safetensors")}, start=False)
    mgr.cancel(job.id)
    assert job.status == "cancelled" and job.state.get("ended")
    JobManager(tmp_path / "jobs").poll()  # a later manager (napari, the CLI) never starts it
    assert job.status == "cancelled" and job.state.get("pid") is None and job.state.get("attempt") == 0
    with pytest.raises(JobError, match="already ended"):
        mgr.cancel(job.id)
    mgr.remove(job.id)  # and it can be removed (queued or running jobs cannot)
    assert mgr.jobs() == []


# ---- the CLI: devices, flags naming folders, transfer over its own model ----------------------
@pytest.mark.parametrize("cmd", [["query", "M", "I.png", "--out", "Q"], ["train", "D.h5", "--out", "m.safetensors"],
                                 ["evaluate", "M", "D.h5"], ["train-universal", "D.h5", "--out", "u.safetensors"],
                                 ["cluster", "M", "--out", "C"], ["transfer", "M", "D.h5", "--out", "t.safetensors"]])
def test_every_command_checks_the_device_first(cmd, tmp_path, capsys):
    import torch

    for dev in ["banana", "cuda:7"] + ([] if torch.cuda.is_available() else ["cuda"]):
        argv = [str(tmp_path / a) if a[0].isupper() or "." in a else a for a in cmd] + ["--device", dev]
        assert main(argv) == 2
        line = _err_line(capsys)
        assert f"--device {dev}" in line, line
    assert os.listdir(tmp_path) == []


def test_folder_flags_and_own_model_as_output(files, tmp_path, capsys):
    nrf, h5, img = files / "nrf.safetensors", files / "sub-01.h5", files / "good.png"
    a_file = tmp_path / "a_file"
    a_file.write_text("a user's file")
    for argv, expect in (
            (["evaluate", nrf, h5, "--json", tmp_path / "e.json", "--cache", a_file], "--cache"),
            (["train", h5, "--out", tmp_path / "m.safetensors", "--cache", a_file / "sub"], "is a file, not a folder"),
            (["finetune", "--base", nrf, "--data", h5, "--out", tmp_path / "o.safetensors", "--jobs-dir", a_file],
             "--jobs-dir"),
            (["finetune", "--base", nrf, "--data", h5, "--out", tmp_path / "o.safetensors", "--images", "1",
              "--jobs-dir", tmp_path / "jobs"], "at least 2 training images"),
            (["transfer", nrf, h5, "--out", nrf], "also an input"),
            (["demo", "--screenshot", a_file / "shot.png"], "--screenshot")):
        assert main([str(a) for a in argv]) == 2, argv
        assert expect in _err_line(capsys)
    assert a_file.read_text() == "a user's file" and sorted(os.listdir(tmp_path)) == ["a_file"]


@pytest.mark.parametrize("over,expect", [({"width": 0}, "width"), ({"depth": 1.5}, "depth"),
                                         ({"no_such": 1}, "no_such"), ({"depth": 1}, "depth")])
def test_submit_train_checks_model_sizes_before_a_job(files, tmp_path, over, expect):
    from napari_nrf.jobs import JobManager
    from napari_nrf.train_jobs import submit_train

    mgr = JobManager(tmp_path / "jobs")
    with pytest.raises(NapariNRFError, match=expect):
        submit_train(mgr, [files / "sub-01.h5"], tmp_path / "m.safetensors", model_overrides=over, start=False)
    assert mgr.jobs() == []


@pytest.mark.parametrize("argv,flag", [(["import-nsd", "R", "--out", "O", "--chunk", "0"], "--chunk 0"),
                                       (["train", "D.h5", "--out", "m.safetensors", "--downsample-dim", "0"],
                                        "--downsample-dim 0"),
                                       (["simulate", "--out", "O", "--snr", "inf"], "--snr inf"),
                                       (["import-nifti", "B.nii", "--mask", "M.nii", "--events", "E.csv",
                                         "--out", "o.h5", "--store-images", "0"], "--store-images 0")])
def test_zero_and_infinite_options_are_usage_errors(argv, flag, tmp_path, capsys):
    argv = [str(tmp_path / a) if a[0].isupper() or a.endswith((".h5", ".safetensors")) else a for a in argv]
    assert main(argv) == 2
    assert flag in _err_line(capsys)
    assert os.listdir(tmp_path) == []
