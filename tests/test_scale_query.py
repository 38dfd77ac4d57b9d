"""Sharded queries (issue 18): two CPU workers write the same files as one device, bit
for bit; the encoding is batched."""

import gzip
import json

import numpy as np
import pytest
import torch
from PIL import Image

from napari_nrf.query_shard import ShardedQuery, ShardError, parse_devices, sharded_volumes
from napari_nrf.space import Grid


@pytest.fixture
def images(tmp_path):
    rng = np.random.default_rng(1)
    paths = []
    for i in range(5):
        p = tmp_path / "imgs" / f"im{i}.png"
        p.parent.mkdir(exist_ok=True)
        Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(p)
        paths.append(p)
    return paths


def test_parse_devices():
    assert parse_devices("cpu,cpu") == ["cpu", "cpu"]
    assert parse_devices(["cpu"]) == ["cpu"]
    with pytest.raises(ShardError):
        parse_devices(" , ")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA"):
            parse_devices("cuda:0,cuda:1")


def test_two_cpu_workers_equal_one_device(tiny_model, images):
    torch.set_num_threads(1)
    grid = Grid.mni(8.0)
    one = sharded_volumes(tiny_model, images, grid, devices="cpu", mask="brain", batch_images=2)
    two = sharded_volumes(tiny_model, images, grid, devices="cpu,cpu", mask="brain", batch_images=2)
    assert one.shape == (5,) + grid.shape and np.isfinite(one).any()
    assert np.array_equal(one, two, equal_nan=True)  # bit for bit
    # batches hold the images in order, whatever the number of workers
    assert [list(b) for b in ShardedQuery(tiny_model, "cpu,cpu", batch_images=2).batches(5)] == [[0, 1], [2, 3], [4]]


def test_batched_encoding(tiny_model, images, monkeypatch):
    """The backbone sees batches of images, not one image at a time."""
    seen = []
    enc = type(tiny_model).encode_images

    def spy(self, imgs, *a, **k):
        seen.append(len(imgs))
        return enc(self, imgs, *a, **k)

    monkeypatch.setattr(type(tiny_model), "encode_images", spy)
    sharded_volumes(tiny_model, images, Grid.mni(8.0), devices="cpu", batch_images=4)
    assert seen == [4, 1]


def test_cli_query_devices_cpu_cpu_same_files(tiny_model, images, tmp_path):
    from napari_nrf.cli import main

    model = tiny_model.save(tmp_path / "m.safetensors")
    common = ["query", str(model), str(tmp_path / "imgs"), "--resolution", "8", "--batch-images", "2"]
    assert main(common + ["--out", str(tmp_path / "a"), "--devices", "cpu"]) == 0
    assert main(common + ["--out", str(tmp_path / "b"), "--devices", "cpu,cpu"]) == 0
    files = sorted(p.name for p in (tmp_path / "a").iterdir())
    assert files == sorted(p.name for p in (tmp_path / "b").iterdir()) and len(files) == 11  # 5 volumes + sidecars + dataset_description.json
    for name in files:
        a, b = (tmp_path / "a" / name).read_bytes(), (tmp_path / "b" / name).read_bytes()
        if name.endswith(".gz"):
            assert gzip.decompress(a) == gzip.decompress(b), name
        else:
            assert json.loads(a) == json.loads(b), name


def test_bench_scale_tiny(tmp_path, monkeypatch):
    """benchmarks/bench_scale.py end to end at tiny sizes: every row, 2 gloo ranks included."""
    import sys
    from pathlib import Path

    bench = Path(__file__).resolve().parents[1] / "benchmarks"
    monkeypatch.syspath_prepend(str(bench))  # the spawned ranks import the script's module too
    for k in ("WORLD_SIZE", "RANK", "LOCAL_RANK"):
        monkeypatch.delenv(k, raising=False)
    import bench_scale

    out = tmp_path / "scale.json"
    assert bench_scale.main(["--images", "16", "--voxels", "200", "--steps", "5", "--batch-images", "8",
                             "--batch-voxels", "100", "--query-images", "2", "--query-batch", "1",
                             "--resolution", "8", "--json", str(out)]) == 0
    rows = json.loads(out.read_text())["rows"]
    assert [(r["what"], r.get("ranks"), r.get("devices")) for r in rows] == [
        ("training", 1, None), ("training", 1, None), ("training", 2, None),
        ("query", None, "cpu"), ("query", None, "cpu"), ("query", None, "cpu,cpu")]
    assert all((r.get("steps_per_s") or r.get("images_per_s")) > 0 for r in rows)
    sys.modules.pop("bench_scale", None)
