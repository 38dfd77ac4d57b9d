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
