"""The napari-nrf command line: help, info, errors without tracebacks."""

import subprocess
import sys

from napari_nrf.cli import build_parser, main


def test_help_lists_commands(capsys):
    assert main([]) == 0
    out = capsys.readouterr().out
    assert "demo" in out and "info" in out


def test_info(capsys, monkeypatch, tmp_path):
    monkeypatch.setenv("NAPARI_NRF_CACHE", str(tmp_path))
    monkeypatch.setenv("NAPARI_NRF_CLIP_WEIGHTS", str(tmp_path / "absent.bin"))
    assert main(["info"]) == 0
    out = capsys.readouterr().out
    assert "efficientnet-lite0" in out and "clip-vit-b16" in out
    assert "absent.bin (MISSING)" in out and f"cache: {tmp_path}" in out


def test_every_subcommand_has_help():
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    for name, p in sub.choices.items():
        assert p.format_help(), name


def test_console_script_runs():
    r = subprocess.run([sys.executable, "-m", "napari_nrf.cli", "--version"], capture_output=True, text=True)
    assert r.returncode == 0 and "napari-nrf" in r.stdout


def test_query_output_names_never_collide(tmp_path):
    from napari_nrf.query import volume_file_names

    assert volume_file_names(["a/cat.png", "b/cat.jpg", "dog.png", "scan.v2.png"]) == [
        "a_cat.nii.gz", "b_cat.nii.gz", "dog.nii.gz", "scan.nii.gz"]
    names = volume_file_names(["a/cat.png", "x/a/cat.tif", "y/a/cat.png"])  # same folder name too
    assert names == ["a_cat-1.nii.gz", "a_cat-2.nii.gz", "a_cat-3.nii.gz"]


def test_query_checks_inputs_before_loading_the_model(tmp_path, capsys):
    """A bad mask or unreadable image fails at once with a message, before the (absent) model is read."""
    from PIL import Image
    import numpy as np

    good = tmp_path / "good.png"
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(good)
    (tmp_path / "bad.png").write_bytes(b"not an image")
    model = tmp_path / "missing.safetensors"
    assert main(["query", str(model), str(good), "--mask", "V1", "--out", str(tmp_path / "q")]) != 0
    assert "unknown mask 'V1'" in capsys.readouterr().err
    assert main(["query", str(model), str(good), str(tmp_path / "bad.png"), "--out", str(tmp_path / "q")]) != 0
    assert "bad.png" in capsys.readouterr().err and not (tmp_path / "q").exists()


def test_interrupt_message_says_how_to_resume(tmp_path):
    import argparse

    from napari_nrf.cli import _resume_hint

    args = argparse.Namespace(command="train", out=str(tmp_path / "m.safetensors"), checkpoint_dir=None)
    assert "no checkpoint yet" in _resume_hint(args)
    (tmp_path / "m.safetensors.ckpt").mkdir()
    (tmp_path / "m.safetensors.ckpt" / "checkpoint.safetensors").write_bytes(b"")
    assert "run the same command again to resume" in _resume_hint(args)
    assert _resume_hint(argparse.Namespace(command="query", out=str(tmp_path))) == ""


def test_backbone_weights_option(tmp_path, capsys):
    import argparse

    from napari_nrf.cli.nrf import _backbone_config

    assert _backbone_config(argparse.Namespace(backbone_weights=None)) is None
    w = tmp_path / "w.bin"
    w.write_bytes(b"x")
    assert _backbone_config(argparse.Namespace(backbone_weights=str(w))) == {"weights": str(w.resolve())}
    for cmd in ("train", "train-universal"):
        rc = main([cmd, str(tmp_path / "missing.h5"), "--out", str(tmp_path / "m.safetensors"),
                   "--backbone", "clip-vit-b16", "--backbone-weights", str(tmp_path / "nope.bin")])
        assert rc != 0 and "nope.bin" in capsys.readouterr().err


def test_image_files_expands_folders(tmp_path):
    import pytest

    from napari_nrf.features import ImageError, image_files

    d = tmp_path / "imgs"
    d.mkdir()
    for name in ("b.png", "a.JPG", "notes.txt"):
        (d / name).write_bytes(b"x")
    (tmp_path / "c.png").write_bytes(b"x")
    assert image_files([tmp_path / "c.png", d]) == [str(tmp_path / "c.png"), str(d / "a.JPG"), str(d / "b.png")]
    (tmp_path / "empty").mkdir()
    with pytest.raises(ImageError, match="no image files"):
        image_files([tmp_path / "empty"])
