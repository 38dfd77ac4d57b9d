"""Outputs as BIDS derivatives: names with space-/res-/desc- entities, sidecars that name
the template and the sources, dataset_description.json; they round-trip in nilearn. And
the five-line Python API that returns a nibabel image."""

import json

import nibabel as nib
import numpy as np
import pytest
from PIL import Image

from napari_nrf import bids, space


@pytest.fixture
def cat(tmp_path):
    p = tmp_path / "cat.png"
    Image.fromarray((np.random.default_rng(0).random((40, 40, 3)) * 255).astype(np.uint8)).save(p)
    return p


def test_templates_are_named_as_templateflow_does():
    # Grid.mni spans FSL's MNI152 box: at 2 mm it is FSL's 91 x 109 x 91 grid itself.
    g = space.Grid.mni(2.0)
    assert g.shape == (91, 109, 91) and np.allclose(g.affine[:3, 3], [-90, -126, -72])
    assert space.GRID_TEMPLATE == "MNI152NLin6Asym"
    # nilearn's T1 and masks are the ICBM 2009a nonlinear symmetric template.
    from nilearn.datasets import struct

    assert "nlin_sym_09a" in str(struct.MNI152_FILE_PATH) and space.MASK_TEMPLATE == "MNI152NLin2009aSym"


def test_names():
    assert bids.label("a_cat-2.v1") == "acat2v1" and bids.res_label(1.5) == "1p5mm"
    assert bids.derivative_name("cat", 2.0) == "space-MNI152NLin6Asym_res-2mm_desc-cat_response.nii.gz"
    assert bids.derivative_name("cat", 2.0, subject="sub-01").startswith("sub-01_space-")
    from napari_nrf.query import volume_file_names

    names = volume_file_names(["a/cat.png", "b/cat.jpg", "acat.png"], "bids", 4.0)
    assert len(set(names)) == 3 and all(n.startswith("space-MNI152NLin6Asym_res-4mm_desc-") for n in names)
    assert [bids.parse_entities(n)["desc"] for n in names] == ["acat1", "bcat", "acat2"]
    assert bids.parse_entities(names[0])["space"] == "MNI152NLin6Asym"
    assert volume_file_names(["a/cat.png"]) == ["cat.nii.gz"]  # the plain names stay available


def test_python_api_and_nilearn_round_trip(cat, tmp_path):
    import napari_nrf
    from nilearn import image, maskers

    model = napari_nrf.load_model("demo", device="cpu")
    img = napari_nrf.predict(model, str(cat), resolution=8)
    assert isinstance(img, nib.Nifti1Image) and img.shape == space.Grid.mni(8.0).shape
    assert int(img.header["sform_code"]) == space.XFORM_MNI and img.extra["sidecar"]["Sources"][-1] == str(cat)
    out = napari_nrf.save(img, tmp_path / "d" / bids.derivative_name("cat", 8.0))
    side = json.loads(space.sidecar_path(out).read_text())
    assert side["SpaceTemplate"] == bids.parse_entities(out)["space"] == "MNI152NLin6Asym"
    assert side["Sources"][0].endswith("demo_nrf.safetensors") and side["mask"] == "data"
    assert json.loads((out.parent / "dataset_description.json").read_text())["GeneratedBy"][0]["Name"] == "napari-nrf"
    # nilearn reads it back: the same values and MNI affine; a masker built from its own
    # finite voxels gives the values back, and it resamples onto nilearn's MNI152 template.
    back = image.load_img(str(out))
    assert np.allclose(back.affine, img.affine)
    a, b = np.asarray(img.dataobj), back.get_fdata()
    assert np.array_equal(np.isfinite(a), np.isfinite(b)) and np.allclose(a[np.isfinite(a)], b[np.isfinite(b)])
    finite = nib.Nifti1Image(np.isfinite(b).astype(np.uint8), back.affine)
    vals = maskers.NiftiMasker(mask_img=finite).fit_transform(image.new_img_like(back, np.nan_to_num(b)))
    vals = np.asarray(vals).reshape(-1)
    assert vals.size == int(np.isfinite(a).sum()) and np.allclose(np.sort(vals), np.sort(a[np.isfinite(a)]))
    from nilearn.datasets import load_mni152_template

    res = image.resample_to_img(image.new_img_like(back, np.nan_to_num(b)), load_mni152_template(resolution=2),
                                interpolation="nearest", force_resample=True, copy_header=True)
    assert res.shape == load_mni152_template(resolution=2).shape and np.nanmax(np.abs(res.get_fdata())) > 0
    # and our own reader takes the file with its sidecar
    vol, grid = space.load_nifti(out)
    assert grid == space.Grid.mni(8.0) and space.read_sidecar(out)["Sources"] == side["Sources"]


def test_cli_query_writes_a_derivative_folder(cat, tmp_path):
    from napari_nrf.cli import main
    from napari_nrf.demo import shipped_model_path

    out = tmp_path / "q"
    assert main(["query", str(shipped_model_path()), str(cat), "--resolution", "8", "--device", "cpu",
                 "--out", str(out)]) == 0
    name = "space-MNI152NLin6Asym_res-8mm_desc-cat_response"
    assert sorted(p.name for p in out.iterdir()) == sorted([f"{name}.nii.gz", f"{name}.json",
                                                            "dataset_description.json"])
    side = json.loads((out / f"{name}.json").read_text())
    assert side["Sources"] == [str(shipped_model_path().resolve()), str(cat)]
    assert side["MaskTemplate"] == "MNI152NLin2009aSym" and "MNI152NLin6Asym" in side["space"]
