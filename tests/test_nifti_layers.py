"""NIfTI in and out of napari, Qt-free part: the npe2 reader and writers of
napari_nrf.nifti_layers place every volume through space.py and round-trip exactly."""

import json

import nibabel as nib
import numpy as np
import pytest

from napari_nrf import nifti_layers, space, volume_meta


def _grid():
    return space.Grid.from_extent(4.0, [-40, -60, -20], [40, 20, 40])


def test_reader_places_3d_volume_like_layer_data(tmp_path):
    g = _grid()
    vol = np.random.default_rng(0).random(g.shape).astype(np.float32)
    # FSL's habit: a negative x step; the reader must still place it like layer_data.
    aff = g.affine.copy()
    aff[0, 0] = -aff[0, 0]
    aff[0, 3] = g.extent[1][0]
    img = nib.Nifti1Image(vol[::-1], aff)
    img.set_sform(aff, 4)
    img.set_qform(aff, 4)
    p = tmp_path / "vol.nii.gz"
    nib.save(img, p)
    assert nifti_layers.get_reader(str(p)) is nifti_layers.read_nifti
    assert nifti_layers.get_reader(str(tmp_path / "photo.png")) is None
    (data, kw, kind), = nifti_layers.read_nifti(str(p))
    ref, rkw = space.layer_data(vol, g)
    assert kind == "image" and np.array_equal(data, ref)
    assert np.allclose(kw["scale"], rkw["scale"]) and np.allclose(kw["translate"], rkw["translate"])


def test_reader_4d_gives_a_volume_axis(tmp_path):
    g = _grid()
    vol = np.random.default_rng(1).random(g.shape + (3,)).astype(np.float32)
    p = space.save_nifti(vol, g, tmp_path / "prob.nii.gz")
    (data, kw, kind), = nifti_layers.read_nifti(str(p))
    assert data.shape == (3,) + g.shape[::-1] and len(kw["scale"]) == 4
    assert kw["scale"][0] == 1.0 and np.allclose(kw["translate"][1:], g.origin[::-1])
    back, g2 = space.layer_to_volume(data, kw["scale"], kw["translate"])
    assert g2 == g and np.array_equal(back, vol)


@pytest.mark.parametrize("style", ["fsl_lut", "tsv_header", "names"])
def test_label_atlas_reads_as_labels_with_names(tmp_path, style):
    g = _grid()
    lab = np.zeros(g.shape, np.int16)
    lab[:5] = 1
    lab[5:10] = 2
    p = space.save_nifti(lab, g, tmp_path / "atlas.nii.gz")
    if style == "fsl_lut":
        (tmp_path / "atlas.txt").write_text("# index name r g b a\n1 Left V1 255 0 0 255\n2 Right-FFA 0 255 0 255\n")
    elif style == "tsv_header":
        (tmp_path / "atlas.tsv").write_text("index\tname\n1\tLeft V1\n2\tRight-FFA\n")
    else:
        (tmp_path / "atlas.txt").write_text("Background\nLeft V1\nRight-FFA\n")
    (data, kw, kind), = nifti_layers.read_nifti(str(p))
    assert kind == "labels"
    assert list(kw["features"]["index"]) == [1, 2]
    assert list(kw["features"]["name"]) == ["Left V1", "Right-FFA"]
    assert kw["metadata"]["napari_nrf"]["label_names"][2] == "Right-FFA"
    if style == "fsl_lut":
        assert np.allclose(kw["colormap"][1], (1, 0, 0, 1))


def test_non_mni_and_oblique_files_get_the_cli_error(tmp_path):
    g = _grid()
    vol = np.zeros(g.shape, np.float32)
    img = nib.Nifti1Image(vol, g.affine)
    img.set_sform(g.affine, 1)  # scanner space
    img.set_qform(g.affine, 1)
    nib.save(img, tmp_path / "scanner.nii")
    with pytest.raises(space.SpaceError) as e1:
        nifti_layers.read_nifti(str(tmp_path / "scanner.nii"))
    with pytest.raises(space.SpaceError) as e2:
        space.load_nifti(tmp_path / "scanner.nii")  # what the CLI calls
    assert str(e1.value) == str(e2.value) and "MNI" in str(e1.value)
    rot = g.affine.copy()
    c, s = np.cos(0.3), np.sin(0.3)
    rot[:2, :2] = [[4 * c, -4 * s], [4 * s, 4 * c]]
    img = nib.Nifti1Image(vol, rot)
    img.set_sform(rot, 4)
    nib.save(img, tmp_path / "oblique.nii")
    with pytest.raises(space.SpaceError, match="oblique"):
        nifti_layers.read_nifti(str(tmp_path / "oblique.nii"))


def test_response_writer_round_trips_with_meaning(tmp_path):
    g = _grid()
    vol = np.random.default_rng(2).normal(size=g.shape).astype(np.float32)
    vol[:3] = np.nan
    model_file = tmp_path / "m.safetensors"
    model_file.write_bytes(b"weights")
    data, kw, _ = nifti_layers.response_layer_data(vol, g, "cat", units="z-scored beta (SD)", image="cat.png",
                                                   mask="data", model_path=str(model_file), model_kind="nrf")
    meta = {"metadata": kw["metadata"], "name": "cat", "scale": kw["scale"], "translate": kw["translate"]}
    written = nifti_layers.write_image(str(tmp_path / "cat.nii.gz"), data, meta)
    img = nib.load(written[0])
    assert int(img.header["sform_code"]) == 4 and int(img.header["qform_code"]) == 4
    assert int(img.header["intent_code"]) == space.INTENT_ESTIMATE
    assert "cat.png" in img.header["descrip"].item().decode() and "mask=data" in img.header["descrip"].item().decode()
    side = json.loads((tmp_path / "cat.json").read_text())
    assert side["model_sha256"] == volume_meta.file_sha256(model_file) and side["units"] == "z-scored beta (SD)"
    assert side["mask"] == "data" and side["extrapolation"] is False and side["outside_mask"] == "NaN"
    assert side["resolution_mm"] == [4.0, 4.0, 4.0] and side["generator"].startswith("napari-nrf")
    back, g2 = space.load_nifti(written[0])
    assert g2 == g and np.array_equal(back, vol, equal_nan=True)  # exact, NaN included
    # read back through the reader: the plugin's response layer, same values
    (d2, kw2, kind2), = nifti_layers.read_nifti(written[0])
    assert kind2 == "image" and kw2["metadata"]["napari_nrf"]["kind"] == "response"
    assert np.array_equal(kw2["metadata"]["napari_nrf"]["volume"], vol, equal_nan=True)
    # 0 outside the mask on request
    kw["metadata"]["napari_nrf"]["outside"] = "0"
    p0 = nifti_layers.write_image(str(tmp_path / "cat0.nii"), data, meta)[0]
    v0, _ = space.load_nifti(p0)
    assert not np.isnan(v0).any() and v0[0, 0, 0] == 0


def test_labels_writer_round_trips_with_table(tmp_path):
    g = _grid()
    lab = np.zeros(g.shape, np.int32)
    lab[2:6, 3:7, 1:4] = 3
    lab[10:12] = 1
    data, kw = space.layer_data(lab, g)
    meta = {"name": "clusters k=3", "scale": kw["scale"], "translate": kw["translate"],
            "features": {"label": np.array([1, 3]), "size": np.array([5, 9])},
            "metadata": {"napari_nrf": {"kind": "clusters", "grid": g}}}
    written = nifti_layers.write_labels(str(tmp_path / "clusters.nii.gz"), data, meta)
    assert any(w.endswith("clusters.tsv") for w in written)
    img = nib.load(written[0])
    assert int(img.header["intent_code"]) == space.INTENT_LABEL and int(img.header["sform_code"]) == 4
    (d2, kw2, kind), = nifti_layers.read_nifti(written[0])
    assert kind == "labels" and np.array_equal(d2, data)
    assert list(kw2["features"]["name"]) == ["cluster 1", "cluster 3"]


def test_cluster_map_tsv_holds_size_and_mni_centroid(tmp_path):
    """A saved cluster map's .tsv: index, name, then each cluster's size and MNI centroid."""
    from napari_nrf.analysis.clusters import ClusterResult, cluster_table

    g = _grid()
    coords = {"s1": np.array([[0.0, -80, 0], [2, -80, 0], [40, -50, -20]])}
    res = ClusterResult(labels={"s1": np.array([0, 0, 1])}, centers=np.eye(2, dtype=np.float32), inertia=0.0,
                        method="sklearn")
    table = cluster_table(res, coords)
    lab = np.zeros(g.shape, np.int32)
    lab[2:4, 2:4, 2:4] = 1
    lab[8:9, 8:9, 8:9] = 2
    data, kw = space.layer_data(lab, g)
    meta = {"name": "clusters k=2 s1", "scale": kw["scale"], "translate": kw["translate"], "features": table,
            "metadata": {"napari_nrf": {"kind": "clusters", "grid": g}}}
    written = nifti_layers.write_labels(str(tmp_path / "clusters.nii.gz"), data, meta)
    tsv = next(w for w in written if w.endswith(".tsv"))
    rows = [r.split("\t") for r in open(tsv).read().splitlines()]
    head = rows[0]
    assert head[:2] == ["index", "name"] and {"size", "x_mm", "y_mm", "z_mm"} <= set(head)
    one = dict(zip(head, rows[1]))
    assert one["index"] == "1" and one["size"] == "2" and one["x_mm"] == "1.0" and one["y_mm"] == "-80.0"
    two = dict(zip(head, rows[2]))
    assert two["size"] == "1" and two["x_mm"] == "40.0" and two["z_mm"] == "-20.0"
    # the plugin's reader still reads the names back
    (_d, kw2, _kind), = nifti_layers.read_nifti(written[0])
    assert list(kw2["features"]["name"]) == ["cluster 1", "cluster 2"]


def _afni_xml(pairs):
    import xml.etree.ElementTree as ET

    root = ET.Element("AFNI_attributes", self_idcode="XYZ", ni_form="ni_group")
    dtable = "<VALUE_LABEL_DTABLE\n  ni_type=\"2*String\"\n  ni_dimen=\"%d\" >\n" % len(pairs)
    dtable += "".join(f' "{v}" "{n}"\n' for v, n in pairs) + "</VALUE_LABEL_DTABLE>\n"
    atr = ET.SubElement(root, "AFNI_atr", ni_type="String", ni_dimen="1", atr_name="VALUE_LABEL_DTABLE")
    atr.text = '"' + dtable + '~"'
    ET.SubElement(root, "AFNI_atr", ni_type="String", ni_dimen="1", atr_name="HISTORY_NOTE").text = '"3dcalc~"'
    return b"<?xml version='1.0' ?>\n" + ET.tostring(root)


@pytest.mark.parametrize("style", ["afni", "cifti_xml", "comment"])
def test_label_atlas_names_from_the_nifti_extension(tmp_path, style):
    """No table beside the file: the region names come from the NIfTI's own extension,
    through napari's reader path (get_reader -> read_nifti)."""
    g = _grid()
    lab = np.zeros(g.shape, np.int16)
    lab[:5] = 1
    lab[5:10] = 2
    img = nib.load(str(space.save_nifti(lab, g, tmp_path / "plain.nii")))
    p = tmp_path / "atlas.nii"  # a new file: "plain.nii" is memory-mapped
    if style == "afni":
        ext = nib.nifti1.Nifti1Extension(4, _afni_xml([(1, "Left V1"), (2, "Right-FFA")]))
    elif style == "cifti_xml":
        xml = (b'<CIFTI Version="2"><Matrix><LabelTable>'
               b'<Label Key="0" Red="0" Green="0" Blue="0" Alpha="0">???</Label>'
               b'<Label Key="1" Red="1" Green="0" Blue="0" Alpha="1">Left V1</Label>'
               b'<Label Key="2" Red="0" Green="1" Blue="0" Alpha="1">Right-FFA</Label>'
               b'</LabelTable></Matrix></CIFTI>')
        ext = nib.nifti1.Nifti1Extension(32, xml)
    else:
        ext = nib.nifti1.Nifti1Extension(6, b"1\tLeft V1\n2\tRight-FFA\n")
    img.header.extensions.append(ext)
    nib.save(nib.Nifti1Image(np.asanyarray(img.dataobj), img.affine, img.header), str(p))
    assert nifti_layers.label_table_for(p) is None
    reader = nifti_layers.get_reader(str(p))
    (data, kw, kind), = reader(str(p))
    assert kind == "labels"
    assert list(kw["features"]["index"]) == [1, 2]
    assert list(kw["features"]["name"]) == ["Left V1", "Right-FFA"]
    assert kw["metadata"]["napari_nrf"]["table"] == "NIfTI extension"
    if style == "cifti_xml":
        assert np.allclose(kw["colormap"][2], (0, 1, 0, 1))
    # a table beside the file wins over the extension
    (tmp_path / "atlas.tsv").write_text("index\tname\n1\tV1 (sidecar)\n2\tFFA (sidecar)\n")
    (_, kw2, _), = nifti_layers.read_nifti(str(p))
    assert list(kw2["features"]["name"]) == ["V1 (sidecar)", "FFA (sidecar)"]
