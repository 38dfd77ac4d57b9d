"""Image libraries for the region explorer: a folder of images or an in-memory array.

Qt-free. Features are computed once per model backbone through the model's own
``encode_images`` with the on-disk :class:`napari_nrf.features.FeatureCache`, so a library
is encoded once across sessions and the ranking of a region is then model work only.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from napari_nrf.errors import NapariNRFError


class LibraryError(NapariNRFError):
    """An image library cannot be built (empty folder, bad array)."""


class ImageLibrary:
    """N images to rank by a region's predicted response.

    Parameters
    ----------
    images : list of paths or (H, W, 3) uint8 arrays, or a (N, H, W, 3) uint8 array
    names : list of str or None
        One short name per image (default: file stems or "image 0", "image 1", ...).
    label : str
        What the library is, for the widget ("virtual subjects' stimuli", a folder name).
    features : dict or None
        Precomputed backbone features name -> (N, ...) (skip encoding).
    """

    def __init__(self, images, names=None, label: str = "library", features: dict | None = None,
                 backbone: str | None = None):
        if isinstance(images, np.ndarray):
            if images.ndim != 4 or images.shape[-1] != 3:
                raise LibraryError(f"library array must be (N, H, W, 3), got {images.shape}")
        self.images = images
        n = len(images)
        if n == 0:
            raise LibraryError("the image library is empty")
        if names is None:
            names = [Path(p).stem if isinstance(p, (str, Path)) else f"image {i}" for i, p in enumerate(images)]
        if len(names) != n:
            raise LibraryError(f"{len(names)} names for {n} images")
        self.names = list(names)
        self.label = label
        self._features: dict = {}
        if features is not None:
            self._features[backbone] = features

    @classmethod
    def from_folder(cls, folder, max_images: int | None = None) -> "ImageLibrary":
        """Every image file of ``folder`` (not recursive), sorted by name."""
        from napari_nrf.features import ImageError, image_files

        folder = Path(folder)
        if not folder.is_dir():
            raise LibraryError(f"not a folder: {folder}")
        try:
            files = image_files(folder)
        except ImageError as exc:
            raise LibraryError(str(exc)) from exc
        files = files[:max_images] if max_images else files
        good = [f for f in files if _readable(f)]
        ok = set(good)
        _warn_skipped([f for f in files if f not in ok], folder.name)
        if not good:
            raise LibraryError(f"none of the {len(files)} image files in {folder} can be read")
        return cls(good, label=folder.name)

    def __len__(self) -> int:
        return len(self.images)

    def image(self, i: int) -> np.ndarray:
        """Image ``i`` as (H, W, 3) uint8."""
        from napari_nrf.features import to_rgb_uint8

        return to_rgb_uint8(self.images[i])

    def thumbnail(self, i: int, size: int = 72) -> np.ndarray:
        """Image ``i`` shrunk to fit ``size`` x ``size`` px, (h, w, 3) uint8 C-contiguous."""
        from PIL import Image

        im = Image.fromarray(self.image(i))
        im.thumbnail((size, size))
        return np.ascontiguousarray(np.asarray(im.convert("RGB")))

    def features(self, model, progress=None) -> dict:
        """Backbone features (name -> (N, ...) float32) for ``model``'s backbone, cached."""
        key = model.backbone_name or None
        if key not in self._features:
            from napari_nrf.features import FeatureCache

            try:
                cache = FeatureCache()
            except OSError:
                cache = None
            try:
                feats = model.encode_images(self.images, cache=cache, progress=progress)
            except NapariNRFError:  # an image that passed the header check fails to decode
                if not self._drop_unreadable():
                    raise
                feats = model.encode_images(self.images, cache=cache, progress=progress)
            self._features[key] = {k: np.asarray(v.detach().cpu() if hasattr(v, "detach") else v)
                                   for k, v in feats.items()}
        return self._features[key]

    def _drop_unreadable(self) -> bool:
        """Decode every image; drop those that fail (with a warning). True if any was dropped."""
        from napari_nrf.features import to_rgb_uint8

        keep = []
        for i in range(len(self.images)):
            try:
                to_rgb_uint8(self.images[i])
                keep.append(i)
            except NapariNRFError:
                pass
        if len(keep) == len(self.images):
            return False
        if not keep:
            raise LibraryError(f"none of the {len(self.images)} images of {self.label} can be read")
        bad = [self.names[i] for i in range(len(self.images)) if i not in set(keep)]
        self.images = (self.images[keep] if isinstance(self.images, np.ndarray)
                       else [self.images[i] for i in keep])
        self.names = [self.names[i] for i in keep]
        _warn_skipped(bad, self.label)
        return True


def _readable(path) -> bool:
    from napari_nrf.features.images import probe_image_file

    return probe_image_file(path) is None


def _warn_skipped(bad, label) -> None:
    if bad:
        import warnings

        names = ", ".join(Path(str(b)).name for b in bad[:10]) + (f" and {len(bad) - 10} more" if len(bad) > 10 else "")
        warnings.warn(f"{label}: skipped {len(bad)} unreadable image(s): {names}", stacklevel=3)
