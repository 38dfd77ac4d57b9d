"""What a training run leaves beside its bundle: the resolved settings
(<out>.config.toml, reusable with --config), the history (<out>.history.csv) and a
model card; the evaluate commands' --stdout-json."""

import csv
import json

import pytest

from napari_nrf.cli import main
from napari_nrf.models.bundle import read_metadata


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    d = tmp_path_factory.mktemp("records")
    assert main(["simulate", "--subjects", "1", "--images", "40", "--max-voxels", "150", "--image-size", "32",
                 "--workers", "1", "--out", str(d / "data")]) == 0
    (d / "c.toml").write_text('preset = "tiny"\nepochs = 1\npatience = 3\nbatch-images = 8\nlr = 0.002\n')
    assert main(["train", str(d / "data" / "sub-01.h5"), "--config", str(d / "c.toml"), "--batch-images", "4",
                 "--out", str(d / "m.safetensors")]) == 0
    return d


def test_config_file_and_flags_set_the_run(run):
    tr = read_metadata(run / "m.safetensors")["provenance"]["training"]
    assert tr["lr"] == 0.002 and tr["patience"] == 3  # from the file
    assert tr["batch_images"] == 4  # the flag wins over the file


def test_resolved_config_repeats_the_run(run):
    cfg = run / "m.safetensors.config.toml"
    text = cfg.read_text()
    assert "#   napari-nrf train " in text and 'preset = "tiny"' in text and "batch-images = 4" in text
    assert main(["train", str(run / "data" / "sub-01.h5"), "--config", str(cfg),
                 "--out", str(run / "again.safetensors")]) == 0
    a = read_metadata(run / "m.safetensors")["provenance"]["training"]
    b = read_metadata(run / "again.safetensors")["provenance"]["training"]
    assert a == b


def test_history_beside_the_bundle(run):
    with open(run / "m.safetensors.history.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    tr = read_metadata(run / "m.safetensors")["provenance"]["training"]
    assert len(rows) == tr["epochs_run"] and {"epoch", "train_loss", "kept"} <= set(rows[0])
    assert all(float(r["train_loss"]) > 0 for r in rows)
    assert [r["kept"] for r in rows].count("1") == 1
    assert not (run / "m.safetensors.ckpt").exists()  # the history never lands in the checkpoint folder


def test_bad_config_is_one_line(run, capsys):
    bad = run / "bad.toml"
    bad.write_text("learning-rate = 0.1\n")
    assert main(["train", str(run / "data" / "sub-01.h5"), "--config", str(bad),
                 "--out", str(run / "x.safetensors")]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and str(bad) in err and "learning-rate" in err
    bad.write_text('preset = "huge"\n')
    assert main(["train", str(run / "data" / "sub-01.h5"), "--config", str(bad),
                 "--out", str(run / "x.safetensors")]) == 2
    assert "choose from" in capsys.readouterr().err and not (run / "x.safetensors").exists()


def test_model_card(run, capsys):
    assert main(["card", str(run / "m.safetensors")]) == 0
    md = capsys.readouterr().out
    assert md.startswith("# Model card: m.safetensors")
    for part in ("## Data", "| sub-01 | 150 |", "## Training", "## Intended use", "## Caveats", "extrapolation",
                 "m.safetensors.history.csv", "napari-nrf train"):
        assert part in md, part
    assert main(["card", str(run / "m.safetensors"), "--out", str(run / "card.md")]) == 0
    assert (run / "card.md").read_text() == md


def test_evaluate_stdout_json(run, capsys):
    assert main(["evaluate", str(run / "m.safetensors"), str(run / "data" / "sub-01.h5"), "--no-ridge",
                 "--stdout-json", "--json", str(run / "e.json")]) == 0
    cap = capsys.readouterr()
    rep = json.loads(cap.out)
    assert rep == json.loads((run / "e.json").read_text())
    assert "report:" in cap.err and rep["reports"][0]["subject"] == "sub-01"


def test_tensorboard_when_installed(run):
    pytest.importorskip("tensorboard")
    assert any((run / "m.safetensors.tensorboard").iterdir())
