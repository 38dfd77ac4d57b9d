"""Accepted images: files PIL reads, arrays of many shapes and dtypes, napari layer data."""

import numpy as np
import pytest
from PIL import Image

from napari_nrf.features.images import ImageError, as_image_list, image_hash, load_image_file, to_rgb_uint8


@pytest.mark.parametrize("shape,dtype", [((20, 30), np.uint8), ((20, 30, 3), np.uint8), ((20, 30, 4), np.uint8),
                                         ((20, 30, 3), np.uint16), ((20, 30), np.float32), ((20, 30, 3), np.float64),
                                         ((3, 20, 30), np.uint8)])
def test_arrays(shape, dtype, rng):
    a = rng.random(shape)
    a = (a * np.iinfo(dtype).max).astype(dtype) if np.issubdtype(dtype, np.integer) else a.astype(dtype)
    out = to_rgb_uint8(a)
    assert out.shape == (20, 30, 3) and out.dtype == np.uint8


def test_alpha_is_composited_on_white():
    a = np.zeros((8, 8, 4), np.uint8)  # fully transparent black
    assert (to_rgb_uint8(a) == 255).all()


def test_files_and_corrupt_file(tmp_path, rng):
    arr = (rng.random((16, 24, 3)) * 255).astype(np.uint8)
    for ext in ("png", "jpg", "tif", "bmp"):
        p = tmp_path / f"im.{ext}"
        Image.fromarray(arr).save(p)
        assert load_image_file(p).shape == (16, 24, 3)
    Image.fromarray(arr[..., 0]).save(tmp_path / "grey.png")
    assert to_rgb_uint8(tmp_path / "grey.png").shape == (16, 24, 3)
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    with pytest.raises(ImageError, match="broken.png"):
        to_rgb_uint8(bad)
    with pytest.raises((ImageError, FileNotFoundError)):
        to_rgb_uint8(tmp_path / "missing.png")


def test_impossible_shapes():
    for bad in (np.zeros((5,)), np.zeros((2, 3, 4, 5, 6)), np.zeros((10, 10, 7))):
        with pytest.raises(ImageError):
            to_rgb_uint8(bad)


def test_batches_and_hash(rng):
    batch = (rng.random((3, 8, 8, 3)) * 255).astype(np.uint8)
    ims = as_image_list(batch)
    assert len(ims) == 3 and image_hash(ims[0]) == image_hash(batch[0].copy())
    assert image_hash(ims[0]) != image_hash(ims[1])
