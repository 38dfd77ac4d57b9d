"""The bad-input battery, part 3 (issue 35): inputs that were silently wrong, lost, hung or
unbounded. Organised by input class: model files, images and paths, NIfTI, HDF5 sets, rest
maps, video/movie, jobs/concurrency, sizes/disk. Each case: one clear line naming the file
or the field (a NapariNRFError, CLI exit 2), nothing partial left behind, no input changed."""

import errno
import json
import os
import struct
import subprocess
import sys
import textwrap
import warnings

import h5py
import numpy as np
import pytest
import torch

from napari_nrf.cli import main
from napari_nrf.errors import NapariNRFError

from _movie_data import synth_movie_set
from _nrf_data import SHAPES, synth_set

nib = pytest.importorskip("nibabel")

AFFINE = np.array([[2.0, 0, 0, -20], [0, 2, 0, -60], [0, 0, 2, -10], [0, 0, 0, 1]])
GRID_SHAPE = (10, 10, 8)


def _err_line(capsys):
    err = [ln for ln in capsys.readouterr().err.splitlines() if "error" in ln]
    assert len(err) == 1 and err[0].startswith("napari-nrf ") and "Traceback" not in err[0], err
    return err[0]


def _nii(data, path, affine=AFFINE):
    img = nib.Nifti1Image(data, affine)
    img.set_sform(affine, code=4)
    img.set_qform(affine, code=4)
    nib.save(img, str(path))
    return path


def _within(fifo, fn):
    """``fn()`` while a shell keeps opening ``fifo`` for writing and closing it: a reader
    that opens the FIFO gets an end of file (and fails the test) instead of hanging the
    suite (some readers hold the GIL while blocked, so a thread cannot time them out)."""
    writer = subprocess.Popen(["sh", "-c", 'while :; do : > "$0"; done', str(fifo)])
    try:
        return fn()
    finally:
        writer.kill()
        writer.wait()


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """A tiny response set, an NRF bundle and a PNG."""
    from PIL import Image

    from napari_nrf.models import MODEL_KINDS, discover_kinds

    d = tmp_path_factory.mktemp("bad3")
    rs, _ = synth_set(n=24, step=8.0, max_n=10, n_val=6, n_test=4, seed=3)
    rs.save(d / "sub-01.h5")
    from napari_nrf.space import Grid

    maps = np.random.default_rng(4).normal(size=(1, 8, 8, 8)).astype(np.float32)
    rs.set_rest_maps(maps, Grid((8, 8, 8), (-40, -100, -20), (8, 8, 8)))
    rs.save(d / "sub-rest.h5")
    discover_kinds()
    nrf = MODEL_KINDS["nrf"].example(SHAPES, {rs.subject: rs.coords}, seed=0)
    nrf.save(d / "nrf.safetensors")
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (24, 16, 3), dtype=np.uint8)).save(d / "img.png")
    return d


def _header(path):
    raw = open(path, "rb").read()
    n = struct.unpack("<Q", raw[:8])[0]
    return json.loads(raw[8:8 + n]), n, raw


def _rewrite(path, dst, edit_header=None, edit_meta=None):
    """Copy bundle ``path`` to ``dst`` with its safetensors header (and napari-nrf metadata) edited."""
    hdr, n, raw = _header(path)
    if edit_meta is not None:
        meta = json.loads(hdr["__metadata__"]["napari_nrf"])
        hdr["__metadata__"]["napari_nrf"] = json.dumps(edit_meta(meta))
    if edit_header is not None:
        edit_header(hdr)
    text = json.dumps(hdr).encode()
    text += b" " * (-len(text) % 8)
    dst.write_bytes(struct.pack("<Q", len(text)) + text + raw[8 + n:])
    return dst


def _a_weight(hdr):
    return next(k for k, v in hdr.items() if k != "__metadata__" and not k.startswith("subjects.")
                and v["dtype"] == "F32" and v["data_offsets"][1] > v["data_offsets"][0])


# ==== model files ===========================================================================
def test_model_flipped_exponent_bit_is_refused(files, tmp_path):
    from napari_nrf.models import load_model
    from napari_nrf.models.bundle import BundleError

    hdr, n, raw = _header(files / "nrf.safetensors")
    start = 8 + n + hdr[_a_weight(hdr)]["data_offsets"][0]
    buf = bytearray(raw)
    buf[start + 3] ^= 0x40  # the top exponent bit of a little-endian float32: x -> x * 2^128 or so
    bad = tmp_path / "flip.safetensors"
    bad.write_bytes(bytes(buf))
    with pytest.raises(BundleError, match="flip.safetensors.*checksum"):
        load_model(bad)


def test_model_dtype_relabelled_in_header_is_refused(files, tmp_path):
    from napari_nrf.models import load_model
    from napari_nrf.models.bundle import BundleError

    def relabel(hdr):
        hdr[_a_weight(hdr)]["dtype"] = "I32"

    bad = _rewrite(files / "nrf.safetensors", tmp_path / "i32.safetensors", edit_header=relabel)
    with pytest.raises(BundleError, match="i32.safetensors.*int32.*integrity"):
        load_model(bad)


def test_model_declared_voxels_must_match_the_tensor(files, tmp_path):
    from napari_nrf.models import load_model
    from napari_nrf.models.bundle import BundleError

    def more(meta):
        meta["subjects"]["sub-01"]["n_voxels"] = 150
        return meta

    bad = _rewrite(files / "nrf.safetensors", tmp_path / "nv.safetensors", edit_meta=more)
    with pytest.raises(BundleError, match="nv.safetensors.*'subjects.sub-01.n_voxels' is 150.*10 voxels"):
        load_model(bad)


def test_model_metadata_that_is_a_json_list(files, tmp_path, capsys):
    bad = _rewrite(files / "nrf.safetensors", tmp_path / "list.safetensors", edit_meta=lambda m: [m])
    rc = main(["query", str(bad), str(files / "img.png"), "--out", str(tmp_path / "q")])
    assert rc == 2
    assert "list.safetensors: metadata field 'napari_nrf' is a JSON list" in _err_line(capsys)


def test_checkpoint_bit_flip_is_refused(tmp_path):
    from napari_nrf.models.bundle import BundleError, load_bundle, save_bundle

    p = save_bundle(tmp_path / "checkpoint.safetensors", {"model.w": torch.ones(64)},
                    {"kind": "training-checkpoint", "epoch": 3})
    raw = bytearray(p.read_bytes())
    raw[-2] ^= 0x40
    p.write_bytes(bytes(raw))
    with pytest.raises(BundleError, match="checkpoint.safetensors.*checksum"):
        load_bundle(p)


# ==== images and paths ======================================================================
def test_exif_orientation_is_applied(tmp_path):
    from PIL import Image

    from napari_nrf.features import load_image_file
    from napari_nrf.features.images import image_hash

    px = np.random.default_rng(1).integers(0, 255, (20, 30, 3), dtype=np.uint8)
    im = Image.fromarray(px)
    exif = im.getexif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to display"
    im.save(tmp_path / "phone.jpg", exif=exif.tobytes(), quality=100, subsampling=0)
    im.save(tmp_path / "plain.jpg", quality=100, subsampling=0)
    shown = load_image_file(tmp_path / "phone.jpg")
    plain = load_image_file(tmp_path / "plain.jpg")
    assert shown.shape == (30, 20, 3)  # upright, as any viewer shows it
    assert np.array_equal(shown, np.rot90(plain, k=-1))
    assert image_hash(shown) != image_hash(plain)  # so the feature cache keys differ too


@pytest.mark.parametrize("reader", ["image", "bundle", "response set", "nifti", "events", "film", "confounds"])
def test_fifo_named_like_an_input_is_refused_not_read(tmp_path, reader):
    from napari_nrf import space
    from napari_nrf.data.nifti_import import read_events
    from napari_nrf.data.responseset import ResponseSet
    from napari_nrf.features import load_image_file
    from napari_nrf.models.bundle import read_metadata
    from napari_nrf.movie.video import film_info
    from napari_nrf.data.restmap import read_confounds

    name, fn = {"confounds": ("c.tsv", lambda p: read_confounds(p, 40)),"image": ("x.png", load_image_file), "bundle": ("m.safetensors", read_metadata),
                "response set": ("s.h5", ResponseSet.load), "nifti": ("b.nii.gz", space.load_nifti),
                "events": ("e.csv", read_events), "film": ("f.mp4", film_info)}[reader]
    p = tmp_path / name
    os.mkfifo(p)
    with pytest.raises(NapariNRFError, match=f"{name} is a named pipe"):
        _within(p, lambda: fn(p))


def test_query_on_a_fifo_image_exits_2(files, tmp_path, capsys):
    p = tmp_path / "pipe.png"
    os.mkfifo(p)
    rc = _within(p, lambda: main(["query", str(files / "nrf.safetensors"), str(p), "--out", str(tmp_path / "q")]))
    assert rc == 2 and "pipe.png is a named pipe" in _err_line(capsys)


def test_symlink_loop_is_a_usage_error(files, tmp_path, capsys):
    a, b = tmp_path / "a.png", tmp_path / "b.png"
    os.symlink(b, a)
    os.symlink(a, b)
    rc = main(["query", str(files / "nrf.safetensors"), str(a), "--out", str(tmp_path / "q")])
    assert rc == 2 and "symbolic link loop" in _err_line(capsys)


def test_non_utf8_file_name_reaches_json_as_valid_utf8(tmp_path):
    from napari_nrf import space

    name = os.fsdecode(b"caf\xe9.png")  # Latin-1 bytes: not UTF-8, kept as surrogates by Python
    out = space.save_nifti(np.zeros((2, 2, 2), np.float32), space.Grid((2, 2, 2), (0, 0, 0), (2, 2, 2)),
                           tmp_path / "v.nii.gz", sidecar={"image": str(tmp_path / name)})
    text = space.sidecar_path(out).read_bytes().decode("utf-8")
    assert "\\udc" not in text and "caf\\\\xe9.png" in text
    from napari_nrf.models.bundle import read_metadata, save_bundle

    save_bundle(tmp_path / "m.safetensors", {"w": torch.zeros(2)}, {"kind": "x", "provenance": {"data": [name]}})
    json.dumps(read_metadata(tmp_path / "m.safetensors"), ensure_ascii=False).encode("utf-8")  # no lone surrogates


# ==== NIfTI ===================================================================================
@pytest.fixture(scope="module")
def niftis(tmp_path_factory):
    d = tmp_path_factory.mktemp("nii")
    rng = np.random.default_rng(0)
    vol = rng.normal(size=GRID_SHAPE + (40,)).astype(np.float32)
    _nii(vol, d / "run.nii.gz")
    _nii(vol, d / "run.nii")
    raw = (d / "run.nii.gz").read_bytes()
    (d / "cut.nii.gz").write_bytes(raw[: len(raw) // 2])
    raw = (d / "run.nii").read_bytes()
    (d / "cut.nii").write_bytes(raw[: len(raw) // 2])
    _nii(np.full(GRID_SHAPE, np.nan, np.float32), d / "nan_mask.nii.gz")
    _nii(np.ones(GRID_SHAPE + (2,), np.float32), d / "mask4d.nii.gz")
    _nii((vol[..., :3] + 1j * vol[..., :3]).astype(np.complex64), d / "complex.nii.gz")
    return d


@pytest.mark.parametrize("name", ["cut.nii.gz", "cut.nii"])
@pytest.mark.parametrize("how", ["load_nifti", "volumes", "mask"])
def test_truncated_nifti_is_one_clear_error(niftis, name, how):
    from napari_nrf import space

    p = niftis / name
    with pytest.raises(space.SpaceError, match=f"{name}: the NIfTI data are truncated or damaged"):
        if how == "load_nifti":
            space.load_nifti(p)
        elif how == "volumes":
            space.NiftiVolumes(p).read(0, 40)
        else:
            space.resolve_mask(str(p), space.Grid.mni(8))


def test_truncated_nifti_in_rest_map_cli(niftis, tmp_path, capsys):
    rc = main(["rest-map", str(niftis / "cut.nii.gz"), "--tr", "2", "--out", str(tmp_path / "m.nii.gz")])
    assert rc == 2 and "truncated or damaged" in _err_line(capsys)


def test_all_nan_mask_is_refused(niftis):
    from napari_nrf import space

    with pytest.raises(space.SpaceError, match="nan_mask.nii.gz: every value of the mask is NaN"):
        space.resolve_mask(str(niftis / "nan_mask.nii.gz"), space.Grid.mni(8))


def test_4d_mask_is_refused_by_shape(niftis):
    from napari_nrf import space

    with pytest.raises(space.SpaceError, match="mask4d.nii.gz: a mask or label image is 3D"):
        space.resolve_mask(str(niftis / "mask4d.nii.gz"), space.Grid.mni(8))


def test_complex_betas_are_refused(niftis):
    from napari_nrf import space

    with pytest.raises(space.SpaceError, match="complex.nii.gz: complex-valued data"):
        space.NiftiVolumes(niftis / "complex.nii.gz").read(0, 3)
    with pytest.raises(space.SpaceError, match="complex-valued"):
        space.load_nifti(niftis / "complex.nii.gz")


# ==== HDF5 sets ===============================================================================
def _edit_set(src, dst, fn):
    import shutil

    shutil.copy(src, dst)
    with h5py.File(dst, "a") as f:
        fn(f)
    return dst


def _replace(name, data):
    def fn(f):
        del f[name]
        f.create_dataset(name, data=data)
    return fn


@pytest.mark.parametrize("case, edit, match", [
    ("complex", lambda f: _replace("responses", f["responses"][()] * (1 + 1j))(f), "complex"),
    ("1d", lambda f: _replace("responses", f["responses"][()].ravel())(f), "'/responses' must be"),
    ("strings", lambda f: _replace("responses", np.array([b"a"] * 24))(f), "'/responses' must be"),
    ("meta", lambda f: f.attrs.__setitem__("meta", "{not json"), "attribute 'meta' is not valid JSON"),
    ("roi_names", lambda f: f.attrs.__setitem__("roi_names", "[1, 2"), "attribute 'roi_names' is not valid JSON"),
    ("split", lambda f: _replace("split", np.linspace(0, 0.9, 24))(f), "'split' must hold whole numbers"),
])
def test_response_set_malformed_fields(files, tmp_path, case, edit, match):
    from napari_nrf.data.responseset import ResponseSet, ResponseSetError

    p = _edit_set(files / "sub-01.h5", tmp_path / f"{case}.h5", edit)
    with pytest.raises(ResponseSetError, match=match) as e:
        ResponseSet.load(p)
    assert case in str(e.value) or "field" in str(e.value)


def test_complex_responses_in_memory_are_refused():
    from napari_nrf.data.responseset import ResponseSet, ResponseSetError

    with pytest.raises(ResponseSetError, match="complex"):
        ResponseSet(responses=np.ones((4, 2), np.complex64), coords=np.zeros((2, 3)), split=np.zeros(4),
                    image_paths=["a"] * 4)


@pytest.fixture(scope="module")
def movie_set(files, tmp_path_factory):
    from napari_nrf.data.responseset import ResponseSet

    d = tmp_path_factory.mktemp("movie")
    rs = ResponseSet.load(files / "sub-01.h5")
    m, _ = synth_movie_set(rs.coords, n=24, frames=4, size=16, seed=1)
    from napari_nrf.movie import write_movie_dataset

    films = {"film-01": {"frames": np.asarray(m.images), "responses": np.asarray(m.responses), "split": m.split}}
    return write_movie_dataset(d / "movie.h5", films, rs.coords, 1.0)


def test_movie_set_given_to_train_is_named(movie_set, tmp_path, capsys):
    rc = main(["train", str(movie_set), "--out", str(tmp_path / "m.safetensors")])
    assert rc == 2
    line = _err_line(capsys)
    assert "is a movie data set" in line and "format attribute missing" not in line


@pytest.mark.parametrize("case, edit, match", [
    ("nofilm", lambda f: f["films"].move("film-01", "other"), "names film.*'film-01'.*lacks"),
    ("order", lambda f: f.attrs.__setitem__("film_order", "{oops"), "attribute 'film_order' is not valid JSON"),
    ("order_type", lambda f: f.attrs.__setitem__("film_order", "[1, 2]"), "film_order' must be a non-empty list"),
    ("tr0", lambda f: f.attrs.__setitem__("tr", 0.0), "attribute 'tr' is 0.0"),
    ("trnan", lambda f: f.attrs.__setitem__("tr", float("nan")), "attribute 'tr' is nan"),
])
def test_movie_set_malformed(movie_set, tmp_path, case, edit, match):
    from napari_nrf.movie.dataset import MovieDataset

    p = _edit_set(movie_set, tmp_path / f"{case}.h5", edit)
    with pytest.raises(NapariNRFError, match=match):
        MovieDataset.load(p)


def test_movie_set_as_finetune_data_is_refused_at_submit(files, movie_set, tmp_path):
    from napari_nrf.jobs import JobManager
    from napari_nrf.train_jobs import submit_finetune

    mgr = JobManager(tmp_path / "jobs")
    with pytest.raises(NapariNRFError, match="is a movie data set"):
        submit_finetune(mgr, [files / "nrf.safetensors"], movie_set, tmp_path / "o.safetensors", start=False)
    assert mgr.jobs() == []


# ==== rest maps ===============================================================================
@pytest.mark.parametrize("fill", [0.0, np.nan])
def test_empty_rest_map_is_refused(tmp_path, fill):
    from napari_nrf.data.restmap import RestMapError, load_rest_map

    p = _nii(np.full(GRID_SHAPE, fill, np.float32), tmp_path / "map.nii.gz")
    with pytest.raises(RestMapError, match="map.nii.gz: .*(NaN|constant)"):
        load_rest_map(p)


def test_confounds_longer_than_the_run(niftis, tmp_path, capsys):
    conf = tmp_path / "conf.tsv"
    conf.write_text("a\tb\n" + "".join(f"{i}\t{i * i % 7}\n" for i in range(60)))
    rc = main(["rest-map", str(niftis / "run.nii.gz"), "--tr", "2", "--confounds", str(conf),
               "--out", str(tmp_path / "m.nii.gz")])
    assert rc == 2 and "60 rows of confounds for 40 volumes" in _err_line(capsys)
    assert not (tmp_path / "m.nii.gz").exists()


@pytest.mark.parametrize("encoding", ["latin-1", "utf-8-sig"])
def test_events_csv_encodings(tmp_path, encoding):
    from napari_nrf.data.nifti_import import read_events

    p = tmp_path / "events.csv"
    p.write_bytes("volume,image,session\n0,caf\u00e9.png,a\n1,b.png,a\n".encode(encoding))
    vols, imgs, _ = read_events(p)
    assert vols.tolist() == [0, 1] and imgs[0].endswith("caf\u00e9.png")


def test_refused_import_leaves_no_parts(tmp_path, capsys):
    from PIL import Image

    rng = np.random.default_rng(2)
    for k in range(4):
        Image.fromarray(rng.integers(0, 255, (12, 12, 3), dtype=np.uint8)).save(tmp_path / f"im{k}.png")
    _nii(rng.normal(size=GRID_SHAPE + (8,)).astype(np.float32), tmp_path / "betas.nii.gz")
    _nii(np.ones(GRID_SHAPE, np.int16), tmp_path / "mask.nii.gz")
    (tmp_path / "ev.csv").write_text("volume,image\n" + "".join(f"{v},im{v % 4}.png\n" for v in range(8)))
    (tmp_path / "test.txt").write_text("not-listed.png\n")
    out = tmp_path / "s.h5"
    rc = main(["import-nifti", str(tmp_path / "betas.nii.gz"), "--mask", str(tmp_path / "mask.nii.gz"),
               "--events", str(tmp_path / "ev.csv"), "--test-images", str(tmp_path / "test.txt"), "--out", str(out),
               "--assume-mni"])
    assert rc == 2 and "none of the test images" in _err_line(capsys)
    assert not out.exists() and not out.with_name("s.h5.parts").exists()


# ==== video / movie ===========================================================================
@pytest.fixture(scope="module")
def movie_model(tmp_path_factory):
    from napari_nrf.models.movie import MovieEncoderDecoder
    from napari_nrf.movie.video import write_video
    from napari_nrf.simulate.movies import make_film

    d = tmp_path_factory.mktemp("mm")
    m = MovieEncoderDecoder(n_voxels=5, frames_per_tr=4, frame_size=32, size="tiny", tr=1.0, delay=1,
                            perceptual="none")
    m.subjects = {"group": np.zeros((5, 3), np.float32)}
    m.backbone_name = "efficientnet-lite0"
    m.save(d / "m.safetensors")
    film = write_video(d / "f.mp4", make_film(6, tr=1.0, frames_per_tr=4, size=32, seed=1).frames, fps=4)
    return d / "m.safetensors", film


@pytest.mark.parametrize("flag, value, match", [
    ("--tr", "0", "--tr 0: must be a positive number"),
    ("--batch", "0", "--batch 0: must be at least 1"),
    ("--onset", "1000", "--onset 1000 s is at or past the end of the film"),
])
def test_query_movie_bad_timing(movie_model, tmp_path, capsys, flag, value, match):
    model, film = movie_model
    out = tmp_path / "p.nii.gz"
    rc = main(["query-movie", str(model), str(film), "--out", str(out), flag, value])
    assert rc == 2 and match in _err_line(capsys)
    assert not out.exists()


def test_predict_film_checks_tr_and_batch(movie_model):
    from napari_nrf.models import load_model
    from napari_nrf.movie.evaluate import predict_film
    from napari_nrf.movie.video import MovieError

    model = load_model(movie_model[0])
    with pytest.raises(MovieError, match="--tr 0"):
        predict_film(model, movie_model[1], tr=0.0)
    with pytest.raises(MovieError, match="--batch 0"):
        predict_film(model, movie_model[1], batch=0)


# ==== jobs / concurrency ======================================================================
def test_two_jobs_cannot_claim_one_output(tmp_path):
    from napari_nrf.jobs import JobError, JobManager

    mgr = JobManager(tmp_path / "jobs")
    out = tmp_path / "ens.safetensors"
    a = mgr.submit("napari_nrf.jobs:demo_job", {"out": str(out)}, outputs=[out], start=False)
    with pytest.raises(JobError, match=f"claimed by job {a.id}"):
        mgr.submit("napari_nrf.jobs:demo_job", {"out": str(out)}, outputs=[out], start=False)
    assert len(mgr.jobs()) == 1


def _interrupted(mgr, job):
    st = job.state
    st.update(state="interrupted")
    (job.dir / "state.json").write_text(json.dumps(st))


def test_resume_never_replaces_an_output_it_did_not_write(tmp_path):
    from napari_nrf.jobs import JobError, JobManager

    mgr = JobManager(tmp_path / "jobs")
    out = tmp_path / "ens.safetensors"
    job = mgr.submit("napari_nrf.jobs:demo_job", {"out": str(out)}, outputs=[out], start=False)
    _interrupted(mgr, job)
    out.write_bytes(b"the other job's finished model")  # written meanwhile by someone else
    with pytest.raises(JobError, match="did not write it"):
        mgr.resume(job.id)
    assert out.read_bytes() == b"the other job's finished model"


def test_a_started_job_keeps_a_foreign_output(tmp_path):
    from napari_nrf.jobs import JobManager, _child_main

    mgr = JobManager(tmp_path / "jobs")
    out = tmp_path / "o.safetensors"
    job = mgr.submit("napari_nrf.jobs:demo_job", {"out": str(out), "n_steps": 2}, outputs=[out], start=False)
    out.write_bytes(b"someone else's")
    st = _child_main(str(job.dir))
    assert st["state"] == "failed" and "did not write it" in st["error"]
    assert out.read_bytes() == b"someone else's"


def test_a_job_resumes_over_its_own_output(tmp_path):
    from napari_nrf.jobs import JobManager, _child_main

    mgr = JobManager(tmp_path / "jobs")
    out = tmp_path / "o.safetensors"
    job = mgr.submit("napari_nrf.jobs:demo_job", {"out": str(out), "n_steps": 2, "steps_per_epoch": 1},
                     outputs=[out], start=False)
    assert _child_main(str(job.dir))["state"] == "done" and out.exists()
    _interrupted(mgr, job)  # e.g. killed after its write, before its final word
    mgr.resume(job.id, start=False)  # its own output: allowed


def test_another_live_submitters_queued_job_is_not_started_here(tmp_path):
    from napari_nrf.jobs import JobManager

    mgr = JobManager(tmp_path / "jobs")
    job = mgr.submit("napari_nrf.jobs:demo_job", {"out": str(tmp_path / "x.safetensors")}, start=False)
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        spec = json.loads((job.dir / "spec.json").read_text())
        spec["submitter"]["pid"] = other.pid  # a CLI that submitted it and still waits for it
        (job.dir / "spec.json").write_text(json.dumps(spec))
        mgr.poll()
        assert job.status == "queued"  # started here it would die with this process
    finally:
        other.kill()
        other.wait()


# ==== sizes and disk ==========================================================================
@pytest.fixture
def small_machine(monkeypatch):
    """A machine with 8 GiB of free memory and 1 GiB of free disk (the probes patched)."""
    from napari_nrf import guards

    monkeypatch.setattr(guards, "available_memory", lambda: 8 << 30)
    monkeypatch.setattr(guards, "free_disk", lambda path: 1 << 30)


@pytest.mark.parametrize("argv, match", [
    (["simulate", "--image-size", "100000", "--subjects", "1", "--images", "10"], "image_size 100000.*GiB of memory"),
    (["simulate-movie", "--size", "50000", "--subjects", "1", "--films", "1", "--trs", "10"], "size 50000 px.*GiB"),
    (["simulate-rest", "--volumes", "100000000", "--subjects", "1", "--images", "6", "--image-size", "16"],
     "volumes 100000000.*GiB of memory"),
    (["train", "DATA", "--width", "200000"], "width 200000.*GiB of memory"),
    # the paper's U-Net keeps activations on its grid (the field default stores only rest maps)
    (["train-rest2visual", "REST", "--preset", "tiny", "--resolution", "0.5"], "resolution 0.5 mm.*GiB of memory"),
])
def test_absurd_sizes_are_refused_with_the_estimate(files, tmp_path, capsys, small_machine, argv, match):
    argv = [str(files / "sub-01.h5") if a == "DATA" else str(files / "sub-rest.h5") if a == "REST" else a
            for a in argv]
    out = tmp_path / ("o.safetensors" if argv[0].startswith("train") else "o")
    rc = main([*argv, "--out", str(out)])
    line = _err_line(capsys)
    assert rc == 2 and __import__("re").search(match, line), line
    assert not out.exists()


def test_full_disk_before_simulate_writes(tmp_path, capsys, monkeypatch):
    from napari_nrf import guards

    monkeypatch.setattr(guards, "free_disk", lambda path: 4 << 20)
    out = tmp_path / "sim"
    rc = main(["simulate", "--subjects", "1", "--images", "12", "--image-size", "64", "--max-voxels", "50",
               "--out", str(out)])
    assert rc == 2 and "MiB free" in _err_line(capsys)
    assert not list(tmp_path.rglob("*.h5"))


def test_full_disk_feature_cache_skips_caching(tmp_path, monkeypatch):
    from napari_nrf import guards
    from napari_nrf.features import FeatureCache

    monkeypatch.setattr(guards, "free_disk", lambda path: 1 << 20)
    cache = FeatureCache(tmp_path / "cache")
    with pytest.warns(UserWarning, match="not cached this time"):
        cache.put("k", ["a" * 32], {"embedding": np.ones((1, 4096), np.float32)})
    assert not cache.path("k").exists()


def test_full_disk_noticed_before_training(files, tmp_path, capsys, monkeypatch):
    from napari_nrf import guards

    monkeypatch.setattr(guards, "free_disk", lambda path: 1 << 20)
    out = tmp_path / "m.safetensors"
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        rc = main(["train", str(files / "sub-01.h5"), "--out", str(out), "--preset", "tiny", "--steps", "2",
                   "--cache", str(tmp_path / "cache")])
    assert rc == 2 and "the training's checkpoints and model: needs about" in _err_line(capsys)
    assert not [w for w in seen if "feature cache" in str(w.message)]  # refused before any feature
    assert not out.exists() and not list(tmp_path.glob("*.ckpt"))


def test_enospc_during_a_bundle_write_is_one_line_and_leaves_nothing(tmp_path, monkeypatch):
    import safetensors.torch

    from napari_nrf.guards import ResourceError
    from napari_nrf.models.bundle import save_bundle

    def full(tensors, filename, metadata=None):
        open(filename, "wb").write(b"partial")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(safetensors.torch, "save_file", full)
    with pytest.raises(ResourceError, match="m.safetensors: the disk is full"):
        save_bundle(tmp_path / "m.safetensors", {"w": torch.zeros(3)}, {"kind": "x"})
    assert list(tmp_path.iterdir()) == []


def _can_mount_tmpfs(path):
    path.mkdir()
    try:
        r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(path)], capture_output=True)
    except OSError:
        return False
    return r.returncode == 0


def test_real_full_disk_no_segfault(tmp_path):
    """On a real 2 MiB file system (root only): writing a response set is refused, not a crash."""
    mnt = tmp_path / "full"
    if not _can_mount_tmpfs(mnt):
        pytest.skip("cannot mount a tmpfs here")
    try:
        code = textwrap.dedent(f"""
            import numpy as np
            from napari_nrf.data.responseset import ResponseSet
            from napari_nrf.guards import ResourceError
            rs = ResponseSet(responses=np.ones((600, 1000), np.float32), coords=np.zeros((1000, 3)),
                             split=np.zeros(600), image_paths=['a.png'] * 600)
            try:
                rs.save({str(mnt / 'x.h5')!r})
            except ResourceError as e:
                print('refused:', e)
        """)
        r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                           env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
        assert r.returncode == 0 and "refused:" in r.stdout, (r.returncode, r.stderr[-500:])
        assert os.listdir(mnt) == []
    finally:
        subprocess.run(["umount", str(mnt)])


# ==== stray files and output lines ===========================================================
def test_stale_tmp_of_a_killed_writer_is_removed(tmp_path):
    from napari_nrf.models.bundle import save_bundle

    ck = tmp_path / "m.safetensors.ckpt"
    ck.mkdir()
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    stale = ck / f".checkpoint.safetensors.tmp{dead.pid}"
    stale.write_bytes(b"half a checkpoint")
    os.utime(stale, (1e9, 1e9))
    save_bundle(ck / "checkpoint.safetensors", {"w": torch.zeros(2)}, {"kind": "training-checkpoint"})
    assert not stale.exists()


def test_query_rerun_after_a_kill_resumes(files, tmp_path, capsys):
    import shutil

    out = tmp_path / "q"
    imgs = tmp_path / "imgs"
    imgs.mkdir()
    for k in range(2):
        shutil.copy(files / "img.png", imgs / f"i{k}.png")
    args = ["query", str(files / "nrf.safetensors"), str(imgs), "--out", str(out), "--resolution", "8",
            "--mask", "brain", "--device", "cpu", "--names", "plain"]
    assert main(args) == 0
    # as if killed while writing the second volume: its partial file stays, the first is done
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    part = out / f".i1.nii.gz.tmp{dead.pid}.nii.gz"
    part.write_bytes(b"\x1f\x8b partial")
    os.utime(part, (1e9, 1e9))
    (out / "i1.nii.gz").unlink()
    capsys.readouterr()
    assert main(args) == 0, capsys.readouterr().err  # no --overwrite needed for its own volumes
    assert (out / "i1.nii.gz").exists() and not part.exists()


def test_error_line_starts_after_a_progress_bar(tmp_path, capsys, monkeypatch):
    import napari_nrf.simulate as sim

    def fails(*a, progress=None, **k):
        progress(1, 4, "stimuli")
        raise sim.SimulationError("a failure half way")

    monkeypatch.setattr(sim, "simulate", fails)
    rc = main(["simulate", "--subjects", "1", "--images", "10", "--out", str(tmp_path / "s")])
    err = capsys.readouterr().err
    assert rc == 2
    lines = [ln for ln in err.replace("\r", "\n").splitlines() if "a failure half way" in ln]
    assert lines and all(ln.startswith("napari-nrf simulate: error:") for ln in lines), err


def test_enospc_in_any_atomic_write_is_one_line(tmp_path, monkeypatch):
    from napari_nrf import space
    from napari_nrf.guards import ResourceError

    grid = space.Grid((4, 4, 4), (0, 0, 0), (2, 2, 2))
    if not os.path.exists("/dev/full"):
        pytest.skip("no /dev/full here")
    import nibabel

    def to_full(img, filename):  # the bytes go to /dev/full: ENOSPC from the kernel itself
        with open("/dev/full", "wb") as f:
            f.write(img.to_bytes())
            f.flush()

    monkeypatch.setattr(nibabel, "save", to_full)
    with pytest.raises(ResourceError, match="v.nii.gz: the disk is full"):
        space.save_nifti(np.zeros((4, 4, 4), np.float32), grid, tmp_path / "v.nii.gz")
    assert list(tmp_path.iterdir()) == []
