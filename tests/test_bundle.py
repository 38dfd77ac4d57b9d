"""Model bundles: atomic safetensors + JSON metadata, never unpickled, clear errors."""

import json
import os

import numpy as np
import pytest
import torch

from napari_nrf.models import BundleError, load_bundle, read_metadata, save_bundle


def meta(**kw):
    m = {"kind": "nrf", "config": {"width": 8}, "backbone": {"name": "efficientnet-lite0", "config": {}},
         "coords": {"offset": [92, 126, 72], "size": [182, 218, 182]}, "subjects": {}, "metrics": {"r": 0.3}}
    m.update(kw)
    return m


def test_round_trip_and_provenance(tmp_path):
    p = save_bundle(tmp_path / "m.safetensors", {"w": torch.arange(6.0).reshape(2, 3), "B": np.ones((3, 4), np.float32)},
                    meta())
    t, m = load_bundle(p, kind="nrf", backbone="efficientnet-lite0", required=["w", "B"])
    assert torch.equal(t["w"], torch.arange(6.0).reshape(2, 3)) and t["B"].shape == (3, 4)
    assert m["format_version"] == 1 and m["metrics"]["r"] == 0.3 and "created" in m["provenance"]
    assert read_metadata(p)["config"] == {"width": 8}
    assert [f for f in os.listdir(tmp_path) if f != "m.safetensors"] == []  # no temporary left


def test_field_errors(tmp_path):
    p = save_bundle(tmp_path / "m.safetensors", {"w": torch.zeros(2)}, meta())
    with pytest.raises(BundleError, match="'kind'"):
        load_bundle(p, kind="universal")
    with pytest.raises(BundleError, match="'backbone.name'"):
        load_bundle(p, backbone="clip-vit-b16")
    with pytest.raises(BundleError, match="missing tensor.*mlp.0.weight"):
        load_bundle(p, required=["w", "mlp.0.weight"])


def test_version_and_corrupt_files(tmp_path):
    p = save_bundle(tmp_path / "future.safetensors", {"w": torch.zeros(2)}, meta(format_version=99))
    with pytest.raises(BundleError, match="'format_version'"):
        read_metadata(p)
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"\x80\x04not a safetensors file at all")  # e.g. a pickle
    with pytest.raises(BundleError, match="not a readable safetensors"):
        read_metadata(bad)
    with pytest.raises(BundleError, match="not found"):
        read_metadata(tmp_path / "nope.safetensors")
    with pytest.raises(BundleError, match=".safetensors"):
        save_bundle(tmp_path / "m.pt", {"w": torch.zeros(2)}, meta())


def test_load_model_names_unknown_kind_and_backbone(tmp_path):
    from napari_nrf.models import load_model

    p = save_bundle(tmp_path / "k.safetensors", {"w": torch.zeros(2)}, meta(kind="no-such-kind"))
    with pytest.raises(BundleError, match="'kind'"):
        load_model(p)
    p = save_bundle(tmp_path / "b.safetensors", {"w": torch.zeros(2)},
                    meta(backbone={"name": "resnet-9000", "config": {}}))
    with pytest.raises(BundleError, match="'backbone.name'"):
        load_model(p)


def test_header_is_plain_json(tmp_path):
    p = save_bundle(tmp_path / "m.safetensors", {"w": torch.zeros(2)}, meta())
    raw = p.read_bytes()
    n = int.from_bytes(raw[:8], "little")
    header = json.loads(raw[8:8 + n])
    assert json.loads(header["__metadata__"]["napari_nrf"])["kind"] == "nrf"


def test_bundle_gets_the_umask_permissions(tmp_path):
    """A saved model is readable like any other file the user writes (not 0600)."""
    old = os.umask(0o022)
    try:
        p = save_bundle(tmp_path / "m.safetensors", {"w": torch.zeros(2)}, meta())
        assert os.stat(p).st_mode & 0o777 == 0o644
        os.umask(0o077)
        p = save_bundle(tmp_path / "private.safetensors", {"w": torch.zeros(2)}, meta())
        assert os.stat(p).st_mode & 0o777 == 0o600
    finally:
        os.umask(old)


def test_check_bundle_path_before_long_work(tmp_path):
    from napari_nrf.models.bundle import check_bundle_path

    assert check_bundle_path(tmp_path / "new" / "deeper" / "m.safetensors").name == "m.safetensors"
    with pytest.raises(BundleError, match="end in .safetensors"):
        check_bundle_path(tmp_path / "m.pt")
    (tmp_path / "d.safetensors").mkdir()
    with pytest.raises(BundleError, match="is a folder"):
        check_bundle_path(tmp_path / "d.safetensors")
    (tmp_path / "file").write_text("x")
    with pytest.raises(BundleError, match="is a file"):
        check_bundle_path(tmp_path / "file" / "m.safetensors")


def test_train_cli_refuses_a_bad_out_before_training(tmp_path, capsys):
    from napari_nrf.cli import main

    assert main(["train", str(tmp_path / "missing.h5"), "--out", str(tmp_path / "m.pt")]) != 0
    assert "end in .safetensors" in capsys.readouterr().err  # the data is not even read
