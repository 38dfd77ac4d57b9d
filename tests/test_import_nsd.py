"""NSD importer: a tiny NSD-like tree in the official layout, built here."""

from __future__ import annotations

import numpy as np
import pytest

nib = pytest.importorskip("nibabel")
h5py = pytest.importorskip("h5py")

from napari_nrf.data import nsd  # noqa: E402
from napari_nrf.data.responseset import ResponseSet  # noqa: E402

# FSL-style MNI affine (negative x step), 2 mm, a small box around the origin.
AFFINE = np.array([[-2.0, 0, 0, 12], [0, 2, 0, -20], [0, 0, 2, -4], [0, 0, 0, 1]])
SHAPE = (12, 14, 12)


def _save(data, path, affine=AFFINE):
    img = nib.Nifti1Image(data, affine)
    # NSD's MNI files are not guaranteed to say "MNI" in their header: use scanner code.
    img.set_sform(affine, code=1)
    img.set_qform(affine, code=1)
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(img, str(path))


def make_nsd_tree(root, n_subjects=2, n_sessions=3, n_trials=24, n_subject_images=30, n_shared=6,
                  shape=SHAPE, seed=0):
    """Write a tiny NSD tree; returns a dict with the ground truth used to build it."""
    from scipy.io import savemat

    rng = np.random.default_rng(seed)
    n_total = n_shared + n_subjects * (n_subject_images - n_shared) + 5   # a few never shown
    # subjectim: shared ids first, then each subject's own (1-based 73k-style ids).
    shared = rng.choice(n_total, n_shared, replace=False)
    rest = np.setdiff1d(np.arange(n_total), shared)
    rng.shuffle(rest)
    subjectim = np.zeros((8, n_subject_images), np.int64)
    for s in range(8):
        own = rest[(s % n_subjects) * (n_subject_images - n_shared):][: n_subject_images - n_shared]
        subjectim[s] = np.concatenate([shared, own])
    # masterordering: every subject image at least once, some up to 3 times.
    n_all = n_sessions * n_trials
    order = np.concatenate([np.arange(n_subject_images), rng.integers(0, n_subject_images, n_all - n_subject_images)])
    rng.shuffle(order)
    (root / nsd.EXPDESIGN).parent.mkdir(parents=True, exist_ok=True)
    savemat(str(root / nsd.EXPDESIGN), {"masterordering": (order + 1)[None, :].astype(np.float64),
                                        "subjectim": (subjectim + 1).astype(np.float64),
                                        "sharedix": (np.sort(shared) + 1)[None, :].astype(np.float64)})
    stim = root / nsd.STIMULI
    stim.parent.mkdir(parents=True, exist_ok=True)
    brick = rng.integers(0, 256, (n_total, 8, 8, 3), dtype=np.uint8)
    with h5py.File(stim, "w") as f:
        f.create_dataset("imgBrick", data=brick)
    # ROI: -1 outside a "brain" box, 1 in a block, 0 elsewhere.
    roi = -np.ones(shape, np.int16)
    roi[1:-1, 1:-1, 1:-1] = 0
    roi[2:7, 3:9, 4:8] = 1
    truth = {"brick": brick, "shared": np.sort(shared), "subjectim": subjectim, "order": order, "roi": roi}
    for sub in range(1, n_subjects + 1):
        subj = f"subj{sub:02d}"
        _save(roi, root / nsd.ROI_DIR.format(subj=subj) / "nsdgeneral.nii.gz")
        signal = rng.normal(size=(n_total,) + shape).astype(np.float32)
        for ses in range(1, n_sessions + 1):
            ids = subjectim[sub - 1, order[(ses - 1) * n_trials: ses * n_trials]]
            # percent signal change: session-specific gain and offset (removed by z-scoring)
            pct = (1.0 + ses) * (signal[ids] + 0.5 * rng.normal(size=(n_trials,) + shape)) + 0.3 * ses
            betas = np.moveaxis(np.rint(pct * nsd.BETA_SCALE), 0, -1).astype(np.int16)
            betas[roi < 0] = 0
            if sub == 1 and ses == 2:
                betas[3, 4, 5, :] = 7  # a constant voxel inside the ROI: invalid, dropped
            _save(betas, root / nsd.BETAS_DIR.format(subj=subj, betas=nsd.DEFAULT_BETAS)
                  / f"betas_session{ses:02d}.nii.gz")
    return truth


def reference(root, subject, n_sessions):
    """The documented recipe, written plainly on whole arrays: /300, z per session, mean of repeats."""
    design = nsd.read_expdesign(root / nsd.EXPDESIGN)
    roi_img = nib.as_closest_canonical(nib.load(str(root / nsd.ROI_DIR.format(subj=subject) / "nsdgeneral.nii.gz")))
    mask = np.asarray(roi_img.dataobj) > 0
    zs, ids = [], []
    for ses in range(1, n_sessions + 1):
        img = nib.as_closest_canonical(nib.load(str(root / nsd.BETAS_DIR.format(subj=subject, betas=nsd.DEFAULT_BETAS)
                                                    / f"betas_session{ses:02d}.nii.gz")))
        b = np.asarray(img.dataobj)[mask].T.astype(np.float64) / 300.0
        with np.errstate(invalid="ignore", divide="ignore"):
            zs.append((b - b.mean(0)) / b.std(0))
        ids.append(design.session_stimuli(subject, ses, b.shape[0]))
    z = np.concatenate(zs)
    ids = np.concatenate(ids)
    uniq = np.unique(ids)
    mean = np.stack([z[ids == u].mean(0) for u in uniq])
    ijk = np.argwhere(mask)
    xyz = nib.affines.apply_affine(roi_img.affine, ijk)
    return uniq, mean, xyz


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    root = tmp_path_factory.mktemp("nsd")
    truth = make_nsd_tree(root)
    return root, truth


def test_import_matches_documented_recipe(tree, tmp_path):
    root, truth = tree
    calls = []
    out = nsd.import_nsd_subject(root, 1, tmp_path / "subj01.h5", chunk=10, progress=lambda d, t: calls.append((d, t)))
    rs = ResponseSet.load(out)
    uniq, mean, xyz = reference(root, "subj01", 3)
    valid = np.isfinite(mean).all(0)
    assert (~valid).sum() == 1 and rs.meta["n_dropped_voxels"] == 1
    np.testing.assert_array_equal(rs.image_ids, uniq)
    np.testing.assert_allclose(rs.responses, mean[:, valid], atol=1e-4)
    # MNI coordinates from nibabel's own affine of the original (x-flipped) file
    np.testing.assert_allclose(rs.coords, xyz[valid], atol=1e-4)
    # images are the 73k-indexed stimuli; the shared ones are the test split
    np.testing.assert_array_equal(rs.images, truth["brick"][rs.image_ids])
    np.testing.assert_array_equal(rs.split == 2, np.isin(rs.image_ids, truth["shared"]))
    assert set(np.unique(rs.split)) <= {0, 1, 2} and (rs.split == 1).any()
    assert rs.roi_names == {1: "nsdgeneral"} and (rs.roi == 1).all()
    assert rs.noise_ceiling is not None and np.nanmax(rs.noise_ceiling) > 10
    assert rs.subject == "subj01" and rs.meta["sessions"] == [1, 2, 3]
    assert calls and calls[-1][0] == calls[-1][1]
    assert not (tmp_path / "subj01.h5.parts").exists()  # partial files removed after success


def test_interrupted_import_resumes(tree, tmp_path, monkeypatch):
    root, _ = tree
    out = tmp_path / "subj02.h5"

    class Stop(Exception):
        pass

    def interrupt(done, total):
        if done == 5:  # chunk=8 -> 3 chunks per session: stop inside session 2
            raise Stop

    with pytest.raises(Stop):
        nsd.import_nsd_subject(root, "subj02", out, chunk=8, progress=interrupt)
    parts = tmp_path / "subj02.h5.parts"
    assert (parts / "session-001.json").exists() and not (parts / "session-002.json").exists()
    assert not out.exists()

    from napari_nrf import space

    reads = []
    orig = space.NiftiVolumes.read

    def spy(self, start, stop, mask=None):
        reads.append(self.path.name)
        return orig(self, start, stop, mask)

    monkeypatch.setattr(space.NiftiVolumes, "read", spy)
    nsd.import_nsd_subject(root, "subj02", out, chunk=8)
    assert "betas_session01.nii.gz" not in reads and "betas_session03.nii.gz" in reads
    rs = ResponseSet.load(out)
    uniq, mean, _ = reference(root, "subj02", 3)
    np.testing.assert_allclose(rs.responses, mean, atol=1e-4)


def test_failed_import_leaves_no_parts_folder(tree, tmp_path):
    """issue 21: a failure (or Ctrl-C) before a session finished leaves no OUT.h5.parts/;
    a header error found before any reading creates none."""
    root, _ = tree

    class Stop(Exception):
        pass

    def interrupt(done, total):
        if done == 1:  # inside session 1
            raise Stop

    with pytest.raises(Stop):
        nsd.import_nsd_subject(root, "subj01", tmp_path / "s.h5", chunk=8, progress=interrupt)
    with pytest.raises(nsd.NSDError):
        nsd.import_nsd_subject(root, 1, tmp_path / "a.h5", sessions=[1, 4])
    assert list(tmp_path.iterdir()) == []


def test_clear_errors(tree, tmp_path):
    root, _ = tree
    # a session selection with a missing file
    with pytest.raises(nsd.NSDError, match="session"):
        nsd.import_nsd_subject(root, 1, tmp_path / "a.h5", sessions=[1, 4])
    # a gap in the session numbering
    folder = root / nsd.BETAS_DIR.format(subj="subj02", betas=nsd.DEFAULT_BETAS)
    moved = folder / "betas_session02.nii.gz"
    moved.rename(tmp_path / "keep.nii.gz")
    try:
        with pytest.raises(nsd.NSDError, match="betas_session02"):
            nsd.import_nsd_subject(root, 2, tmp_path / "b.h5")
    finally:
        (tmp_path / "keep.nii.gz").rename(moved)
    # a mask on another grid
    other = tmp_path / "roi_1mm.nii.gz"
    aff = AFFINE.copy()
    aff[:3, :3] /= 2
    _save(np.ones(SHAPE, np.int16), other, aff)
    with pytest.raises(nsd.NSDError, match="grid"):
        nsd.import_nsd_subject(root, 1, tmp_path / "c.h5", roi=str(other))
    with pytest.raises(nsd.NSDError, match="not found"):
        nsd.import_nsd_subject(root, 1, tmp_path / "d.h5", roi="nosuchroi")
    with pytest.raises(nsd.NSDError, match="subject"):
        nsd.subject_dir_name("alice")
    with pytest.raises(nsd.NSDError, match="design"):
        nsd.read_expdesign(tmp_path / "missing.mat")


def test_cli_import_nsd(tree, tmp_path):
    from napari_nrf.cli import main

    root, _ = tree
    rc = main(["import-nsd", str(root), "--subjects", "1", "2", "--out", str(tmp_path), "--image-size", "4",
               "--sessions", "1", "2"])
    assert rc == 0
    for s in ("subj01", "subj02"):
        rs = ResponseSet.load(tmp_path / f"{s}.h5")
        assert rs.images.shape[1:] == (4, 4, 3) and rs.meta["sessions"] == [1, 2]
    assert main(["import-nsd", str(tmp_path / "nowhere"), "--subjects", "1", "--out", str(tmp_path)]) == 2


def test_benchmark_tiny_runs(tmp_path):
    """The peak-memory benchmark's tiny setting builds a tree and imports it in a child process."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_import_nsd.py"
    spec = importlib.util.spec_from_file_location("bench_import_nsd", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    res = bench.main(["--tiny", "--workdir", str(tmp_path)])
    assert res["within_limit"] and res["roi_voxels"] > 0 and res["median_peak_rss_bytes"] > 0
