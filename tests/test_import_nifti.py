"""Generic importer: 4D NIfTI or 3D files + mask + events CSV -> response set."""

from __future__ import annotations

import numpy as np
import pytest

nib = pytest.importorskip("nibabel")

from napari_nrf.data.nifti_import import NiftiImportError, import_nifti, read_events  # noqa: E402
from napari_nrf.data.responseset import ResponseSet  # noqa: E402
from napari_nrf.space import SpaceError  # noqa: E402

AFFINE = np.array([[-2.0, 0, 0, 10], [0, 2, 0, -30], [0, 0, 2, 0], [0, 0, 0, 1]])
SHAPE = (8, 9, 7)
T = 30


def _save(data, path, affine=AFFINE, code=4):
    img = nib.Nifti1Image(data, affine)
    img.set_sform(affine, code=code)
    img.set_qform(affine, code=code)
    nib.save(img, str(path))
    return path


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    from PIL import Image

    d = tmp_path_factory.mktemp("nifti")
    rng = np.random.default_rng(1)
    (d / "img").mkdir()
    names = [f"img/im{k}.png" for k in range(8)]
    for k, n in enumerate(names):
        Image.fromarray(rng.integers(0, 256, (10 + k, 12, 3), dtype=np.uint8)).save(d / n)
    betas = rng.normal(size=SHAPE + (T,)).astype(np.float32) * 3 + 1
    betas[1, 2, 3, 4] = np.nan  # an invalid voxel (inside the mask): dropped, counted
    _save(betas, d / "betas.nii.gz")
    mask = np.zeros(SHAPE, np.int16)
    mask[1:6, 2:7, 2:5] = 1
    mask[1:3, 2:7, 2:5] = 2
    _save(mask, d / "mask.nii.gz")
    # volumes 0..29; two sessions; volumes 13 and 27 are blanks (not listed)
    rows = ["volume,image,session"]
    listed = [v for v in range(T) if v not in (13, 27)]
    for v in listed:
        rows.append(f"{v},{names[rng.integers(0, 8)]},{'a' if v < 15 else 'b'}")
    (d / "events.csv").write_text("\n".join(rows) + "\n")
    return d, betas, mask, listed


def _reference(d, betas, mask, listed):
    import csv

    rows = list(csv.DictReader(open(d / "events.csv")))
    img = nib.as_closest_canonical(nib.load(str(d / "betas.nii.gz")))
    data = np.asarray(img.dataobj)
    m = np.asarray(nib.as_closest_canonical(nib.load(str(d / "mask.nii.gz"))).dataobj) != 0
    z = np.zeros((len(rows), int(m.sum())))
    sess = np.array([r["session"] for r in rows])
    for s in np.unique(sess):
        idx = np.flatnonzero(sess == s)
        b = np.stack([data[..., int(rows[i]["volume"])][m] for i in idx]).astype(np.float64)
        z[idx] = (b - b.mean(0)) / b.std(0)
    paths = np.array([str((d / r["image"]).resolve()) for r in rows])
    uniq = np.unique(paths)
    mean = np.stack([z[paths == p].mean(0) for p in uniq])
    xyz = nib.affines.apply_affine(img.affine, np.argwhere(m))
    return uniq, mean, xyz


def test_4d_import_matches_recipe(inputs, tmp_path):
    d, betas, mask, listed = inputs
    out = import_nifti(d / "betas.nii.gz", d / "mask.nii.gz", d / "events.csv", tmp_path / "s.h5",
                       subject="sub-07", chunk=4, test_fraction=0.25)
    rs = ResponseSet.load(out)
    uniq, mean, xyz = _reference(d, betas, mask, listed)
    valid = np.isfinite(mean).all(0)
    assert (~valid).sum() == 1 and rs.meta["n_dropped_voxels"] == 1
    assert rs.image_paths == list(uniq)
    np.testing.assert_allclose(rs.responses, mean[:, valid], atol=1e-4)
    np.testing.assert_allclose(rs.coords, xyz[valid], atol=1e-4)
    assert set(np.unique(rs.roi)) == {1, 2} and rs.subject == "sub-07"
    assert rs.meta["sessions"] == ["a", "b"] and (rs.split == 2).sum() == 2
    # label 2 fills file columns i = 1, 2, i.e. x = 10 - 2i = 8, 6 mm (negative x step handled)
    assert set(np.unique(rs.coords[rs.roi == 2, 0])) == {6.0, 8.0}


def test_list_of_3d_files_equals_4d(inputs, tmp_path):
    d, betas, mask, listed = inputs
    files = []
    for t in range(T):
        files.append(_save(betas[..., t], tmp_path / f"vol{t:02d}.nii"))
    out = import_nifti(files, d / "mask.nii.gz", d / "events.csv", tmp_path / "l.h5", store_images=5,
                       test_images=[str(d / "img/im0.png")])
    rs = ResponseSet.load(out)
    ref = ResponseSet.load(import_nifti(d / "betas.nii.gz", d / "mask.nii.gz", d / "events.csv", tmp_path / "r.h5"))
    np.testing.assert_allclose(rs.responses, ref.responses, atol=1e-6)
    assert rs.images.shape == (rs.n_images, 5, 5, 3) and rs.images.dtype == np.uint8
    assert (rs.split == 2).sum() == 1


def test_mask_grid_and_space_errors(inputs, tmp_path):
    d, betas, mask, listed = inputs
    # mask on a 1 mm grid covering the same box: error, or nearest resampling on request
    aff1 = AFFINE.copy()
    aff1[:3, :3] /= 2
    aff1[0, 3] += 0.5
    aff1[1:3, 3] -= 0.5
    fine = np.repeat(np.repeat(np.repeat(mask, 2, 0), 2, 1), 2, 2)
    _save(fine, tmp_path / "fine.nii.gz", aff1)
    with pytest.raises(NiftiImportError, match="another grid"):
        import_nifti(d / "betas.nii.gz", tmp_path / "fine.nii.gz", d / "events.csv", tmp_path / "x.h5")
    rs = ResponseSet.load(import_nifti(d / "betas.nii.gz", tmp_path / "fine.nii.gz", d / "events.csv",
                                       tmp_path / "y.h5", resample_mask=True))
    assert rs.n_voxels == int((mask != 0).sum()) - 1
    # oblique betas
    rot = np.eye(4)
    c, s = np.cos(0.3), np.sin(0.3)
    rot[:2, :2] = [[c, -s], [s, c]]
    _save(betas[..., :4], tmp_path / "oblique.nii.gz", rot @ AFFINE)
    with pytest.raises(SpaceError, match="oblique"):
        import_nifti(tmp_path / "oblique.nii.gz", d / "mask.nii.gz", d / "events.csv", tmp_path / "z.h5")
    # native (scanner) space
    _save(betas[..., :4], tmp_path / "native.nii.gz", code=1)
    with pytest.raises(SpaceError, match="scanner"):
        import_nifti(tmp_path / "native.nii.gz", d / "mask.nii.gz", d / "events.csv", tmp_path / "z.h5")


def test_events_errors(inputs, tmp_path):
    d, *_ = inputs
    bad = tmp_path / "bad.csv"
    bad.write_text("vol,img\n0,a.png\n")
    with pytest.raises(NiftiImportError, match="'volume' and 'image'"):
        read_events(bad)
    bad.write_text("volume,image\n99,img/im0.png\n1,img/im1.png\n")
    (tmp_path / "img").mkdir()
    for n in ("im0.png", "im1.png"):
        (tmp_path / "img" / n).write_bytes((d / "img" / n).read_bytes())
    with pytest.raises(NiftiImportError, match="volume 99"):
        import_nifti(d / "betas.nii.gz", d / "mask.nii.gz", bad, tmp_path / "e.h5")
    bad.write_text("volume,image\n0,img/nope.png\n1,img/im1.png\n")
    with pytest.raises(NiftiImportError, match="do not exist"):
        import_nifti(d / "betas.nii.gz", d / "mask.nii.gz", bad, tmp_path / "e.h5")
    bad.write_text("volume,image\n0,img/im0.png\n0,img/im1.png\n")
    with pytest.raises(NiftiImportError, match="more than once"):
        read_events(bad)


def test_cli_import_nifti(inputs, tmp_path):
    from napari_nrf.cli import main

    d, *_ = inputs
    assert main(["import-nifti", str(d / "betas.nii.gz"), "--mask", str(d / "mask.nii.gz"), "--events",
                 str(d / "events.csv"), "--out", str(tmp_path / "c.h5"), "--subject", "sub-02"]) == 0
    assert ResponseSet.load(tmp_path / "c.h5").subject == "sub-02"
    assert main(["import-nifti", str(d / "betas.nii.gz"), "--mask", str(d / "nope.nii.gz"), "--events",
                 str(d / "events.csv"), "--out", str(tmp_path / "c2.h5")]) == 2


def test_assemble_streams_voxel_blocks(tmp_path):
    """Repeats averaged across sessions, in small voxel blocks, with voxels dropped in between."""
    from napari_nrf.data._importing import PartialStore, ResponseSetWriter, assemble

    rng = np.random.default_rng(3)
    store = PartialStore(tmp_path / "parts")
    sessions = [(rng.normal(size=(12, 10)).astype(np.float32), rng.integers(0, 7, 12)) for _ in range(3)]
    for k, (z, ids) in enumerate(sessions):
        store.save(f"{k}", "fp", z, ids, np.zeros(10, bool))
    keep = np.ones(10, bool)
    keep[[2, 7]] = False
    writer, ids, counts, nc = assemble(store, ["0", "1", "2"], lambda n, v, c: ResponseSetWriter(
        tmp_path / "o.h5", n, v, "s", c), keep, block_bytes=28 * 7 * 3)
    writer.finish(np.zeros((8, 3)), np.zeros(ids.size), ids)
    writer.commit()
    z = np.concatenate([s[0] for s in sessions])
    all_ids = np.concatenate([s[1] for s in sessions])
    ref = np.stack([z[all_ids == u].mean(0) for u in ids])[:, keep]
    import h5py

    with h5py.File(tmp_path / "o.h5") as f:
        np.testing.assert_allclose(f["responses"][()], ref, atol=1e-6)
    np.testing.assert_array_equal(counts, [np.sum(all_ids == u) for u in ids])


def test_code0_headers_need_assume_mni(inputs, tmp_path, capsys):
    """Issue 21: sform/qform code 0 is not taken as MNI; --assume-mni then works for betas and mask alike."""
    import shutil

    from napari_nrf.cli import main

    d, betas, mask, _ = inputs
    w = tmp_path / "w"
    shutil.copytree(d, w)
    _save(betas, w / "betas.nii.gz", code=0)
    _save(mask, w / "mask.nii.gz", code=0)
    argv = ["import-nifti", str(w / "betas.nii.gz"), "--mask", str(w / "mask.nii.gz"), "--events",
            str(w / "events.csv"), "--out", str(tmp_path / "c.h5")]
    capsys.readouterr()
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--assume-mni" in err[0] and "betas.nii.gz" in err[0], err
    assert not (tmp_path / "c.h5").exists() and not (tmp_path / "c.h5.parts").exists()
    assert main(argv + ["--assume-mni"]) == 0
    assert ResponseSet.load(tmp_path / "c.h5").n_voxels > 0


# ---- bad inputs (issue 21) ------------------------------------------------------------------
def test_store_images_limit_and_unreadable_images_refused_first(inputs, tmp_path, capsys):
    import shutil

    from napari_nrf.cli import main

    d, *_ = inputs
    base = ["import-nifti", str(d / "betas.nii.gz"), "--mask", str(d / "mask.nii.gz"), "--out", str(tmp_path / "x.h5")]
    assert main(base + ["--events", str(d / "events.csv"), "--store-images", "100000"]) == 2
    assert "--store-images 100000" in capsys.readouterr().err
    # a copy of the inputs with one listed image broken: refused before any volume is read
    e = tmp_path / "e"
    shutil.copytree(d / "img", e / "img")
    (e / "events.csv").write_text((d / "events.csv").read_text())
    (e / "img" / "im3.png").write_bytes(b"\x89PNG truncated")
    assert main(base + ["--events", str(e / "events.csv")]) == 2
    err = capsys.readouterr().err
    assert "1 image file(s) listed in the events CSV cannot be read" in err and "im3.png" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["e"]  # no output, no .parts


@pytest.mark.parametrize("stop_at,kept", [(2, []), (20, ["session-000-a.json", "session-000-a.npy"])])
def test_failed_import_leaves_only_finished_sessions(inputs, tmp_path, stop_at, kept):
    d, *_ = inputs
    out = tmp_path / "f.h5"

    class Stop(Exception):
        pass

    def interrupt(done, total):
        if done >= stop_at:  # session a has 14 trials: 2 stops inside it, 20 inside session b
            raise Stop

    with pytest.raises(Stop):
        import_nifti(d / "betas.nii.gz", d / "mask.nii.gz", d / "events.csv", out, chunk=2, progress=interrupt)
    parts = tmp_path / "f.h5.parts"
    assert sorted(p.name for p in parts.iterdir()) == kept if kept else not parts.exists()
    assert not out.exists()
    if kept:  # the rerun resumes from the finished session and cleans up
        import_nifti(d / "betas.nii.gz", d / "mask.nii.gz", d / "events.csv", out, chunk=2)
        assert out.exists() and not parts.exists()
