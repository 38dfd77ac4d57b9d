"""Virtual experiments (issue 34): the statistics on a toy world with a planted area, a null
split, the whole path through a real model, the CLI, and the bad inputs (one line each)."""

import json
import os

import numpy as np
import pytest

from napari_nrf import experiments as ex
from napari_nrf import space
from napari_nrf.cli import main


def toy_world(effect=3.0, n=12, seed=0):
    """Predictions of two sets on a 4 mm brain: A responds ``effect`` (3 SD by default) more inside a 10 mm
    sphere around the right FFA (40, -55, -20), noise elsewhere (across images)."""
    grid = space.Grid.mni(4.0)
    mask = space.brain_mask(grid)
    xyz = grid.coords(mask)
    area = np.linalg.norm(xyz - np.array([40.0, -55.0, -20.0]), axis=1) <= 10.0
    rng = np.random.default_rng(seed)
    ya = rng.standard_normal((n, mask.sum())).astype(np.float32)
    yb = rng.standard_normal((n, mask.sum())).astype(np.float32)
    ya[:, area] += effect
    planted = np.zeros(grid.shape, bool)
    planted[mask] = area
    return grid, mask, ya, yb, planted


def test_contrast_finds_the_planted_area_and_a_null_split_finds_nothing():
    grid, mask, ya, yb, planted = toy_world()
    res = ex.contrast_values(ya, yb, grid, mask, n_permutations=200, seed=1)
    sig = res.significant
    dice = 2 * (sig & planted).sum() / (sig.sum() + planted.sum())
    assert dice > 0.8, dice
    assert not (sig & ~planted).any()  # FWE: no false voxel here
    assert np.nanmax(res.effect[planted]) > 1.0 and np.isnan(res.effect[~mask]).all()
    rows = res.clusters()
    assert rows and rows[0]["cluster"] == "1" and rows[0]["region"].endswith("FFA-R") and rows[0]["size_mm3"] == pytest.approx(sig.sum() * 64)
    assert np.linalg.norm(np.array([rows[0]["x_mm"], rows[0]["y_mm"], rows[0]["z_mm"]]) - [40, -55, -20]) <= 10
    # the same images split at random: nothing above the FWE threshold
    null = ex.contrast_values(yb[:6], yb[6:], grid, mask, n_permutations=200, seed=2)
    assert not null.significant.any() and np.isfinite(null.threshold)


def test_permutation_null_starts_with_the_observed_maximum_and_exact_enumeration():
    grid, mask, ya, yb, _ = toy_world(n=3)
    eff, t, df = ex.welch(ya, yb)
    null, exact = ex.permutation_max(np.concatenate([ya, yb]), 3, n_permutations=1000)
    assert exact and len(null) == 20  # C(6, 3) splits, all of them
    assert null[0] == pytest.approx(np.abs(t).max(), rel=1e-4)
    # 20 splits cannot reach alpha 0.01: no threshold rather than a wrong one
    assert ex.fwe_threshold(null, 0.01) == np.inf
    assert ex.fwe_threshold(null, 0.05) == pytest.approx(np.sort(null)[::-1][1])


def test_fdr_and_z_and_tails():
    grid, mask, ya, yb, planted = toy_world()
    fdr = ex.contrast_values(ya, yb, grid, mask, correction="fdr")
    assert fdr.significant[planted].mean() > 0.8 and fdr.p_fwe is None
    less = ex.contrast_values(ya, yb, grid, mask, tail="less", n_permutations=100)
    assert not less.significant.any()  # A is larger, not smaller
    assert np.allclose(np.sign(fdr.z[mask]), np.sign(fdr.t[mask]))
    assert np.all(np.abs(fdr.z[mask]) <= np.abs(fdr.t[mask]) + 1e-4)  # t's tails are heavier


@pytest.fixture(scope="module")
def demo():
    from napari_nrf.demo import load_demo_model

    return load_demo_model()


@pytest.fixture(scope="module")
def image_dirs(tmp_path_factory):
    from _experiment_data import write_category_sets

    return write_category_sets(tmp_path_factory.mktemp("sets"))


def test_contrast_through_the_demo_model_and_written_maps(demo, image_dirs, tmp_path):
    model, path = demo
    (tmp_path / "faces.txt").write_text("# set A\n" + "".join(f"{p}\n" for p in sorted((image_dirs / "face").iterdir())))
    res = ex.contrast(model, tmp_path / "faces.txt", str(image_dirs / "scene" / "*.png"), resolution=4.0,
                      n_permutations=50, label_a="faces", label_b="scenes")
    assert res.t.shape == space.Grid.mni(4.0).shape and res.exact  # C(6, 3) = 20 <= 50: enumerated
    assert res.names_a[0].endswith("0.png") and res.name == "faces - scenes"
    paths = ex.write_contrast(res, tmp_path, model=model, model_path=path)
    side = json.loads((tmp_path / "stat.json").read_text())
    assert side["test"]["correction"] == "fwe" and len(side["images_a"]) == 3 and side["model_sha256"]
    vol, grid = space.load_nifti(paths["effect"])
    assert np.allclose(np.nan_to_num(vol), np.nan_to_num(res.effect))
    header = (tmp_path / "clusters.tsv").read_text().splitlines()[0]
    assert header.split("\t") == ["cluster", "x_mm", "y_mm", "z_mm", "peak_t", "size_mm3", "region"]


def test_localizer_label_map_with_names(demo, image_dirs, tmp_path):
    model, path = demo
    loc = ex.localizer(model, image_dirs, resolution=4.0, correction="none", min_effect=0.0)
    assert loc.categories == ["body", "face", "scene"]
    assert set(np.unique(loc.labels)) <= {0, 1, 2, 3}
    data, kw, kind = loc.layer_data()
    assert kind == "labels" and list(kw["features"]["name"]) == ["body", "face", "scene"]
    ex.write_localizer(loc, tmp_path, model=model, model_path=path)
    from napari_nrf.nifti_layers import read_nifti

    (_, kw2, kind2), = read_nifti(tmp_path / "labels.nii.gz")
    assert kind2 == "labels" and kw2["metadata"]["napari_nrf"]["label_names"] == {1: "body", 2: "face", 3: "scene"}


def test_cli_contrast_and_localizer(demo, image_dirs, tmp_path, capsys):
    _, path = demo
    out = tmp_path / "c"
    rc = main(["contrast", str(path), "--a", str(image_dirs / "face"), "--b", str(image_dirs / "body"),
               "--resolution", "4", "--permutations", "20", "--out", str(out)])
    assert rc == 0
    assert {p.name for p in out.iterdir()} >= {"effect.nii.gz", "stat.nii.gz", "z.nii.gz", "thresholded.nii.gz",
                                               "clusters.tsv", "stat.json"}
    assert "significant voxels" in capsys.readouterr().out
    rc = main(["localizer", str(path), str(image_dirs), "--resolution", "4", "--correction", "fdr",
               "--out", str(tmp_path / "loc")])
    assert rc == 0 and (tmp_path / "loc" / "labels.nii.gz").exists() and (tmp_path / "loc" / "face" / "z.nii.gz").exists()
    # a second run refuses to replace the maps without --overwrite
    assert main(["contrast", str(path), "--a", str(image_dirs / "face"), "--b", str(image_dirs / "body"),
                 "--resolution", "4", "--out", str(out)]) == 2


def _one_line(capsys, argv, expect):
    rc = main([str(a) for a in argv])
    err = [ln for ln in capsys.readouterr().err.strip().splitlines() if ln.startswith("napari-nrf ")]
    assert rc == 2 and len(err) == 1 and expect in err[0], err


def test_bad_inputs_are_one_line(demo, image_dirs, tmp_path, capsys):
    _, path = demo
    (tmp_path / "empty").mkdir()
    one = tmp_path / "one"
    one.mkdir()
    (one / "x.png").write_bytes((image_dirs / "face" / "0.png").read_bytes())
    base = ["contrast", path, "--resolution", "4", "--out", tmp_path / "o"]
    _one_line(capsys, base + ["--a", tmp_path / "empty", "--b", image_dirs / "body"], "set A")
    _one_line(capsys, base + ["--a", str(tmp_path / "nothing*.png"), "--b", image_dirs / "body"], "matches no file")
    _one_line(capsys, base + ["--a", one, "--b", image_dirs / "body"], "at least 2 images per set")
    _one_line(capsys, ["localizer", path, one, "--out", tmp_path / "o"], "at least two categories")
    _one_line(capsys, base + ["--a", image_dirs / "face", "--b", image_dirs / "body", "--permutations", "0"],
              "--permutations")
    with pytest.raises(ex.ExperimentError, match="set A is empty"):
        ex.image_set([], "A")
    with pytest.raises(ex.ExperimentError, match="mixes arrays"):
        ex.image_set([np.zeros((8, 8, 3), np.uint8), "a.png"], "A")


def test_mixed_image_sizes_are_each_resized_by_the_backbone(demo):
    """Images of different sizes in one set are fine: the backbone resizes each one."""
    model, _ = demo
    from napari_nrf.simulate.stimuli import make_stimulus

    a = [make_stimulus(i, seed=4, size=s, category="face") for i, s in enumerate((48, 64, 80))]
    b = [make_stimulus(i, seed=4, size=s, category="scene") for i, s in enumerate((64, 96, 32))]
    res = ex.contrast(model, a, b, resolution=4.0, correction="none")
    assert np.isfinite(res.t[res.mask]).all()


def test_a_model_with_no_volume_is_refused():
    from napari_nrf.models.base import MODEL_KINDS, discover_kinds

    discover_kinds()
    movie = MODEL_KINDS["movie"].example({}, {"sub-01": np.zeros((4, 3), np.float32)})
    with pytest.raises(ex.ExperimentError, match="predicts from frames"):
        ex.contrast(movie, [np.zeros((8, 8, 3), np.uint8)] * 2, [np.ones((8, 8, 3), np.uint8)] * 2)


def test_atlas_lookup_default_and_from_a_file(tmp_path):
    grid = space.Grid.mni(2.0)
    atlas = ex.default_atlas(grid)
    assert atlas.lookup([[40, -55, -20], [-44, -58, -14], [0, 60, 60]]) == ["FFA-R", "VWFA-L", ""]
    lab = np.zeros(grid.shape, np.int16)
    i, j, k = np.rint(grid.world_to_index([10, 20, 30])).astype(int)
    lab[i - 1:i + 2, j - 1:j + 2, k - 1:k + 2] = 7
    space.save_nifti(lab, grid, tmp_path / "my_atlas.nii.gz")
    (tmp_path / "my_atlas.tsv").write_text("index\tname\n7\tmy region\n")
    mine = ex.load_atlas(tmp_path / "my_atlas.nii.gz")
    assert mine.lookup([[10, 20, 30]]) == ["my region"]
    assert os.path.basename(mine.name) == "my_atlas.nii.gz"


def test_query_table_writes_clusters_beside_each_volume(demo, image_dirs, tmp_path):
    _, path = demo
    rc = main(["query", str(path), str(image_dirs / "face" / "0.png"), "--resolution", "4", "--table",
               "--out", str(tmp_path)])
    assert rc == 0
    tables = sorted(tmp_path.glob("*_clusters.tsv"))  # beside the volume, whatever --names chose
    assert [t.name for t in tables] == ["space-MNI152NLin6Asym_res-4mm_desc-0_response_clusters.tsv"]
    rows = tables[0].read_text().splitlines()
    assert rows[0].split("\t")[:5] == ["cluster", "x_mm", "y_mm", "z_mm", "peak_value"] and len(rows) > 1


@pytest.mark.parametrize("kind,base", [("nrf", None), ("universal", None), ("ensemble", "nrf"),
                                       ("ensemble", "universal"), ("rest2visual", None)])
def test_every_kind_that_predicts_a_volume_runs_a_contrast(kind, base):
    """NRF, Universal, ensembles and Rest2Visual (for a subject with a rest map) all run."""
    from _nrf_data import SHAPES

    from napari_nrf.models import MODEL_KINDS, discover_kinds

    discover_kinds()
    grid = space.Grid.mni(8.0)
    xyz = grid.coords(space.brain_mask(grid))[::7]
    subjects = {"sub-01": xyz}
    bases = None if base is None else [MODEL_KINDS[base].example(SHAPES, subjects, seed=k) for k in range(2)]
    model = MODEL_KINDS[kind].example(SHAPES, subjects, seed=0, bases=bases).eval()
    rng = np.random.default_rng(0)
    a = [rng.integers(0, 255, (32, 32, 3), dtype=np.uint8) for _ in range(3)]
    b = [rng.integers(0, 255, (32, 32, 3), dtype=np.uint8) for _ in range(3)]
    res = ex.contrast(model, a, b, subject="sub-01", resolution=8.0, n_permutations=20)
    assert np.isfinite(res.t[res.mask]).all() and res.exact and np.isfinite(res.null_max).all()
    assert res.mask.sum() > 10
