"""import-nsd / import-nifti take resting-state runs (issue 16): a rest map per session,
stored in the response set exactly as attach-rest stores it; bad runs fail in one line
before any output."""

from __future__ import annotations

import numpy as np
import pytest

nib = pytest.importorskip("nibabel")

from napari_nrf import space  # noqa: E402
from napari_nrf.data import nsd  # noqa: E402
from napari_nrf.data.responseset import ResponseSet  # noqa: E402

G8 = space.Grid.mni(8.0)


def rest_run(path, n_volumes=40, tr=2.0, seed=0, with_tr=True):
    """A tiny 8 mm resting run: a default-mode signal in the PCC and mPFC, noise elsewhere."""
    rng = np.random.default_rng(seed)
    sig = np.convolve(rng.standard_normal(n_volumes + 4), np.ones(3) / 3, "same")[:n_volumes]
    net = space.sphere_mask(G8, (0, -52, 18), 12) | space.sphere_mask(G8, (0, 52, -6), 12)
    data = 100 + rng.standard_normal(G8.shape + (n_volumes,)).astype(np.float32)
    data[net] += 2 * sig[None].astype(np.float32)
    img = space.to_nifti(data, G8)
    img.header.set_xyzt_units("mm", "sec")
    img.header.set_zooms((8.0, 8.0, 8.0, tr if with_tr else 0.0))
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(img, str(path))
    return path


@pytest.fixture(scope="module")
def nifti_inputs(tmp_path_factory):
    from test_import_nifti import AFFINE, SHAPE, T, _save  # the importer's own tiny betas

    from PIL import Image

    d = tmp_path_factory.mktemp("nifti_rest")
    rng = np.random.default_rng(1)
    (d / "img").mkdir()
    names = [f"img/im{k}.png" for k in range(6)]
    for n in names:
        Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)).save(d / n)
    _save(rng.normal(size=SHAPE + (T,)).astype(np.float32), d / "betas.nii.gz", AFFINE)
    mask = np.zeros(SHAPE, np.int16)
    mask[1:6, 2:7, 2:5] = 1
    _save(mask, d / "mask.nii.gz", AFFINE)
    rows = ["volume,image"] + [f"{v},{names[v % 6]}" for v in range(T)]
    (d / "events.csv").write_text("\n".join(rows) + "\n")
    for s, seed in (("01", 1), ("02", 2)):
        rest_run(d / "sub-01" / f"ses-{s}" / "func" / f"sub-01_ses-{s}_task-rest_bold.nii.gz", seed=seed)
    return d


def _args(d, out):
    return [str(d / "betas.nii.gz"), "--mask", str(d / "mask.nii.gz"), "--events", str(d / "events.csv"),
            "--out", str(out)]


def test_import_nifti_rest_glob_stores_the_maps_attach_rest_makes(nifti_inputs, tmp_path):
    from napari_nrf.cli import main

    d = nifti_inputs
    glob = str(d / "sub-01" / "ses-*" / "func" / "*_task-rest_bold.nii.gz")
    assert main(["import-nifti", *_args(d, tmp_path / "a.h5"), "--rest-glob", glob]) == 0
    a = ResponseSet.load(tmp_path / "a.h5")
    assert a.rest_sessions == ["ses-01", "ses-02"] and a.rest_grid == G8
    assert a.rest_maps.shape == (2,) + G8.shape and a.meta["rest"]["sessions"] == ["ses-01", "ses-02"]
    # the PCC seed finds its network in every session's map
    pcc = space.sphere_mask(G8, (0, -52, 18), 8)
    assert (a.rest_maps[:, pcc].mean(1) > 2).all()
    # the same responses as without --rest, and the same maps as attach-rest on that file
    assert main(["import-nifti", *_args(d, tmp_path / "b.h5")]) == 0
    runs = sorted((d / "sub-01").glob("ses-*/func/*.nii.gz"))
    assert main(["attach-rest", str(tmp_path / "b.h5"), *map(str, runs)]) == 0
    b = ResponseSet.load(tmp_path / "b.h5")
    np.testing.assert_array_equal(a.responses, b.responses)
    np.testing.assert_array_equal(a.rest_maps, b.rest_maps)
    assert a.rest_sessions == b.rest_sessions and a.rest_grid == b.rest_grid


def test_import_nifti_rest_runs_of_one_session_are_averaged(nifti_inputs, tmp_path):
    from napari_nrf.data.nifti_import import import_nifti
    from napari_nrf.data.restmap import rest_map

    d = nifti_inputs
    runs = sorted((d / "sub-01").glob("ses-*/func/*.nii.gz"))
    out = import_nifti(d / "betas.nii.gz", d / "mask.nii.gz", d / "events.csv", tmp_path / "s.h5",
                       rest=runs, rest_sessions=["ses-x", "ses-x"])
    rs = ResponseSet.load(out)
    assert rs.rest_sessions == ["ses-x"]
    m = np.mean([rest_map(r).volume for r in runs], axis=0)
    inside = m != 0
    np.testing.assert_allclose(rs.rest_maps[0][inside], (m[inside] - m[inside].mean()) / m[inside].std(), atol=1e-5)


@pytest.mark.parametrize("case, message", [("3d", "is a 3D image"), ("short", "at least 30"),
                                           ("notr", "no repetition time")])
def test_import_nifti_bad_rest_runs_fail_in_one_line_without_output(nifti_inputs, tmp_path, capsys, case, message):
    from napari_nrf.cli import main

    d = nifti_inputs
    good = sorted((d / "sub-01").glob("ses-*/func/*.nii.gz"))[0]
    bad = tmp_path / "in" / "sub-01_ses-03_task-rest_bold.nii.gz"
    if case == "3d":
        bad.parent.mkdir()
        nib.save(space.to_nifti(np.ones(G8.shape, np.float32), G8), str(bad))
    else:
        rest_run(bad, n_volumes=29 if case == "short" else 40, with_tr=case != "notr")
    out = tmp_path / "out" / "s.h5"
    assert main(["import-nifti", *_args(d, out), "--rest", str(good), str(bad)]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and bad.name in err and len(err.splitlines()) == 1
    assert not out.parent.exists() or list(out.parent.iterdir()) == []
    if case == "notr":  # the TR given on the command line makes the same run fine
        assert main(["import-nifti", *_args(d, out), "--rest", str(bad), "--rest-tr", "2"]) == 0
        assert ResponseSet.load(out).rest_sessions == ["ses-03"]


# ---- NSD ---------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def nsd_tree(tmp_path_factory):
    from test_import_nsd import make_nsd_tree

    root = tmp_path_factory.mktemp("nsd_rest")
    make_nsd_tree(root, n_subjects=1, n_sessions=2, n_trials=16, n_subject_images=12, n_shared=3)
    ts = root / nsd.REST_DIR.format(subj="subj01")
    design = root / nsd.DESIGN_DIRS[1].format(subj="subj01")
    design.mkdir(parents=True)
    for ses in (1, 2):
        for run in (1, 2):
            rest_run(ts / f"timeseries_session{ses:02d}_run{run:02d}.nii.gz", seed=10 * ses + run)
            ids = np.zeros(40, int) if run == 1 else np.r_[np.zeros(20, int), np.arange(1, 21)]
            (design / f"design_session{ses:02d}_run{run:02d}.tsv").write_text("\n".join(map(str, ids)) + "\n")
    return root


def test_import_nsd_rest_finds_the_resting_runs_by_their_design(nsd_tree, tmp_path):
    from napari_nrf.cli import main
    from napari_nrf.data.restmap import rest_map

    root = nsd_tree
    runs = nsd.find_rest_runs(root, 1)
    assert [p.name for p in runs] == ["timeseries_session01_run01.nii.gz", "timeseries_session02_run01.nii.gz"]
    assert nsd.find_rest_runs(root, 1, sessions=[2]) == runs[1:]
    assert main(["import-nsd", str(root), "--subjects", "1", "--out", str(tmp_path), "--rest"]) == 0
    rs = ResponseSet.load(tmp_path / "subj01.h5")
    assert rs.rest_sessions == ["ses-01", "ses-02"] and rs.rest_grid == G8
    np.testing.assert_array_equal(rs.rest_maps[1], rest_map(runs[1]).volume)
    # --sessions restricts the resting runs too
    assert main(["import-nsd", str(root), "--subjects", "1", "--out", str(tmp_path / "one"), "--rest",
                 "--sessions", "2"]) == 0
    assert ResponseSet.load(tmp_path / "one" / "subj01.h5").rest_sessions == ["ses-02"]


def test_import_nsd_rest_errors(nsd_tree, tmp_path, capsys):
    from napari_nrf.cli import main

    root = nsd_tree
    # a layout without MNI time series: says where it looked
    with pytest.raises(nsd.NSDError, match="MNI resting-state"):
        nsd.find_rest_runs(tmp_path, 1)
    # --rest-glob: nothing matches / a too-short run
    assert main(["import-nsd", str(root), "--subjects", "1", "--out", str(tmp_path / "o"),
                 "--rest-glob", "rest/{subj}/*_task-rest_bold.nii.gz"]) == 2
    assert "rest/subj01/" in capsys.readouterr().err
    rest_run(root / "rest" / "subj01" / "sub-01_ses-01_task-rest_bold.nii.gz", n_volumes=12)
    assert main(["import-nsd", str(root), "--subjects", "1", "--out", str(tmp_path / "o"),
                 "--rest-glob", "rest/{subj}/*_task-rest_bold.nii.gz"]) == 2
    assert "at least 30" in capsys.readouterr().err
    assert not (tmp_path / "o").exists() or list((tmp_path / "o").iterdir()) == []
