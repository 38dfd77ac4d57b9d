"""Turning whatever a user hands us into RGB uint8 images.

Accepted: any file PIL reads (path or ``str``), numpy arrays (H, W), (H, W, 3), (H, W, 4)
of uint8, uint16 or float (floats in [0, 1] or [0, 255]), (B, H, W, 3) batches, PIL
images, and napari Image layer data (2D greyscale or RGB/RGBA).
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np

from napari_nrf.errors import NapariNRFError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".gif", ".webp", ".ppm", ".pgm")


class ImageError(NapariNRFError):
    """An image file is unreadable or an array has an impossible shape or dtype."""


def to_rgb_uint8(image) -> np.ndarray:
    """One image -> (H, W, 3) uint8 (C-contiguous).

    Greyscale is replicated to three channels; alpha is composited over white (so a
    transparent background reads as paper, not black). Raises :class:`ImageError`.
    """
    if isinstance(image, (str, os.PathLike)):
        return load_image_file(image)
    try:
        from PIL import Image

        if isinstance(image, Image.Image):
            return _pil_to_rgb(image)
    except ImportError:  # pragma: no cover - pillow is a dependency
        pass
    a = np.asarray(image)
    if a.dtype == object:
        raise ImageError("image array has dtype object; expected numbers")
    if a.ndim == 3 and a.shape[0] in (3, 4) and a.shape[-1] not in (3, 4):
        a = np.moveaxis(a, 0, -1)  # channels-first
    if a.ndim == 2:
        a = a[..., None]
    if a.ndim != 3 or a.shape[-1] not in (1, 3, 4):
        raise ImageError(f"cannot read an image of shape {a.shape}; expected (H, W), (H, W, 3) or (H, W, 4)")
    if a.shape[0] < 8 or a.shape[1] < 8:
        raise ImageError(f"image of {a.shape[0]}x{a.shape[1]} pixels is too small (at least 8x8)")
    a = _to_uint8(a)
    if a.shape[-1] == 1:
        a = np.repeat(a, 3, axis=-1)
    elif a.shape[-1] == 4:
        alpha = a[..., 3:4].astype(np.float32) / 255.0
        a = (a[..., :3].astype(np.float32) * alpha + 255.0 * (1 - alpha)).round().astype(np.uint8)
    return np.ascontiguousarray(a)


def _to_uint8(a: np.ndarray) -> np.ndarray:
    if a.dtype == np.uint8:
        return a
    if a.dtype == bool:
        return a.astype(np.uint8) * 255
    if np.issubdtype(a.dtype, np.integer):
        if a.dtype == np.uint16 or a.max(initial=0) > 255:
            hi = 65535.0 if a.dtype == np.uint16 else float(a.max())
            return np.clip(a.astype(np.float64) / hi * 255.0, 0, 255).round().astype(np.uint8)
        return np.clip(a, 0, 255).astype(np.uint8)
    if np.issubdtype(a.dtype, np.floating):
        if not np.all(np.isfinite(a)):
            raise ImageError("image contains NaN or infinite values")
        scale = 255.0 if a.max(initial=0) <= 1.0 + 1e-6 else 1.0
        return np.clip(a * scale, 0, 255).round().astype(np.uint8)
    raise ImageError(f"unsupported image dtype {a.dtype}")


def _pil_to_rgb(img) -> np.ndarray:
    if img.mode in ("RGBA", "LA", "P", "PA"):
        img = img.convert("RGBA")
    elif img.mode in ("I;16", "I;16B", "I", "F"):
        return to_rgb_uint8(np.asarray(img))
    else:
        img = img.convert("RGB")
    return to_rgb_uint8(np.asarray(img))


def image_files(paths) -> list[str]:
    """Image file paths from ``paths``: files are kept in order, a folder gives its image
    files (``IMAGE_SUFFIXES``, not recursive, sorted by name). Raises :class:`ImageError`
    for a folder without images."""
    out = []
    for p in [paths] if isinstance(paths, (str, os.PathLike)) else paths:
        p = Path(p)
        if p.is_dir():
            files = sorted(str(f) for f in p.iterdir() if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES)
            if not files:
                raise ImageError(f"no image files ({', '.join(IMAGE_SUFFIXES)}) in the folder {p}")
            out += files
        else:
            out.append(str(p))
    return out


def load_image_file(path) -> np.ndarray:
    """Read an image file with PIL -> (H, W, 3) uint8, upright: the EXIF orientation (a
    phone photo stored sideways) is applied, so the pixels (and the feature cache's keys,
    hashes of them) are those a viewer shows. Raises :class:`ImageError`."""
    from PIL import Image, ImageOps, UnidentifiedImageError

    from napari_nrf.guards import InputKindError, check_regular_file

    path = Path(path)
    if not path.exists() and not path.is_symlink():
        raise ImageError(f"image file not found: {path}")
    try:
        check_regular_file(path, "image")
    except InputKindError as exc:
        raise ImageError(str(exc)) from None
    try:
        with Image.open(path) as img:
            img.load()
            return _pil_to_rgb(ImageOps.exif_transpose(img))
    except Image.DecompressionBombError as exc:
        # PIL's guard (Image.MAX_IMAGE_PIXELS, about 179 million pixels at twice the limit)
        # refused it before decoding: a crafted or absurdly large file.
        raise ImageError(f"{path.name} is too large to read safely ({exc}); a stimulus is at most "
                         f"{2 * (Image.MAX_IMAGE_PIXELS or 0):,} pixels") from exc
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise ImageError(f"cannot read {path.name} as an image ({exc.__class__.__name__}: {exc})") from exc


def probe_image_file(path) -> str | None:
    """Why PIL cannot read the image file ``path`` (its header, PIL's decompression-bomb
    guard, the format's own checks; no full decode), or None when it can. A cheap check of
    many files before long work (an import, an image library)."""
    from PIL import Image

    try:
        with Image.open(path) as img:
            img.verify()
    except Exception as exc:  # noqa: BLE001 - any failure of PIL on the file means "cannot read it"
        return f"{type(exc).__name__}: {' '.join(str(exc).split())[:120]}"
    return None


def as_image_list(images) -> list:
    """A batch -> list of (H, W, 3) uint8 arrays. ``images`` may be one image, a path, a
    list of either, or a (B, H, W, 3|4) array."""
    if isinstance(images, (str, os.PathLike)):
        return [to_rgb_uint8(images)]
    if isinstance(images, np.ndarray):
        if images.ndim == 4:
            return [to_rgb_uint8(im) for im in images]
        return [to_rgb_uint8(images)]
    if hasattr(images, "shape") and hasattr(images, "__getitem__") and len(getattr(images, "shape", ())) == 4:
        return [to_rgb_uint8(np.asarray(images[i])) for i in range(images.shape[0])]
    try:
        from PIL import Image

        if isinstance(images, Image.Image):
            return [to_rgb_uint8(images)]
    except ImportError:  # pragma: no cover
        pass
    return [to_rgb_uint8(im) for im in images]


def image_hash(image: np.ndarray) -> str:
    """Content hash of an (H, W, 3) uint8 image (shape included), 32 hex chars."""
    h = hashlib.blake2b(digest_size=16)
    h.update(np.asarray(image.shape, np.int64).tobytes())
    h.update(np.ascontiguousarray(image).tobytes())
    return h.hexdigest()
