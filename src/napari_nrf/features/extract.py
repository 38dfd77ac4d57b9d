"""Batched feature extraction with an on-disk cache keyed by image content.

``extract_features(backbone, images)`` returns ``{name: (B, ...) float32 ndarray}``.
With a :class:`FeatureCache` each image's features are looked up by the blake2b hash of
its pixels and the backbone's ``cache_key``; only missing images go through the network,
so an image library is encoded once, across runs.
"""

from __future__ import annotations

import contextlib
import os
import threading
from pathlib import Path

import numpy as np
import torch

from napari_nrf._cachedir import default_cache_dir  # noqa: F401  (re-exported)
from napari_nrf._docs import fill_doc

from .images import as_image_list, image_hash, to_rgb_uint8


class FeatureCache:
    """Backbone features of images on disk, one HDF5 file per backbone ``cache_key``.

    Layout of ``<root>/features-<cache_key>.h5``: ``/hash`` (M,) bytes (32 hex chars) and
    one (M, ...) float16 dataset per feature name, grown as images are added. Features
    are stored in float16 (half the disk, plenty for frozen features) and returned as
    float32; :func:`extract_features` with a cache returns freshly computed features
    rounded the same way, so a result never depends on whether the cache was warm.

    Several processes may share a cache (data-parallel ranks, jobs, napari and the CLI):
    writes take an exclusive lock on ``features-<key>.h5.lock`` (``filelock``) and
    re-read the file's index under it, reads take the same lock briefly and reload the
    index when the file changed since it was read, so
    no writer appends over another's rows and every reader sees complete rows.

    Parameters
    ----------
    root : path or None
        Folder of the cache files (default :func:`default_cache_dir`).
    """

    def __init__(self, root=None):
        self.root = Path(root) if root is not None else default_cache_dir()
        self.root.mkdir(parents=True, exist_ok=True)
        self._index: dict[str, dict[str, int]] = {}
        self._stamp: dict[str, tuple] = {}  # key -> (mtime_ns, size) of the file when its index was read
        self._lock = threading.Lock()

    def path(self, key: str) -> Path:
        safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in key)
        return self.root / f"features-{safe}.h5"

    @contextlib.contextmanager
    def _file_lock(self, key: str, exclusive: bool):
        """The cross-process lock of one cache file (``filelock``: POSIX and Windows).
        Readers take it too (briefly, per batch): an HDF5 file being appended to is never read."""
        from filelock import FileLock

        with FileLock(str(self.path(key)) + ".lock"):
            yield

    def _file_stamp(self, key: str):
        try:
            st = self.path(key).stat()
        except FileNotFoundError:
            return None
        return st.st_mtime_ns, st.st_size

    def _load_index(self, key: str, fresh: bool = False) -> dict[str, int]:
        if key in self._index and (fresh or self._stamp.get(key) != self._file_stamp(key)):
            del self._index[key]  # another process (or handle) appended since: read it again
        if key not in self._index:
            import h5py

            idx = {}
            p = self.path(key)
            self._stamp[key] = self._file_stamp(key)
            if p.exists():
                try:
                    with h5py.File(p, "r") as f:
                        if "hash" in f:
                            # Rows past the shortest dataset were being appended when a run
                            # died: not cached (a later put writes them again).
                            n = min(f[k].shape[0] for k in f)
                            idx = {h.decode(): i for i, h in enumerate(f["hash"][:n])}
                except OSError as exc:
                    if _busy(exc):  # locked by a writer in another process: empty for now, retry later
                        return {}
                    self._move_aside(key, exc)
                    idx = {}
            self._index[key] = idx
        return self._index[key]

    def _move_aside(self, key: str, exc) -> None:
        """A cache file HDF5 cannot read (truncated, overwritten): renamed to
        ``<name>.corrupt-<time>`` with a warning, so the cache is rebuilt from scratch
        instead of failing (or being "busy") on every run."""
        import time
        import warnings

        p = self.path(key)
        dst = p.with_name(f"{p.name}.corrupt-{time.strftime('%Y%m%d-%H%M%S')}")
        try:
            os.replace(p, dst)
        except OSError:
            return
        self._index.pop(key, None)
        warnings.warn(f"feature cache {p.name} is unreadable ({type(exc).__name__}: {exc}); moved to {dst.name}, "
                      "features are computed again", stacklevel=3)

    def __contains__(self, item) -> bool:
        key, h = item
        return h in self._load_index(key)

    def count(self, key: str) -> int:
        return len(self._load_index(key))

    def get(self, key: str, hashes: list[str]) -> tuple[dict, np.ndarray]:
        """Features of the cached ``hashes``: (dict name -> (K, ...) float32, found mask (len(hashes),))."""
        with self._file_lock(key, exclusive=False):
            return self._get(key, hashes)

    def _get(self, key: str, hashes: list[str]) -> tuple[dict, np.ndarray]:
        import h5py

        idx = self._load_index(key)
        found = np.array([h in idx for h in hashes], bool)
        if not found.any():
            return {}, found
        rows = np.array([idx[h] for h, ok in zip(hashes, found) if ok])
        # h5py wants strictly increasing rows; a request can repeat an image (identical
        # stimuli under two ids), so read each cached row once and expand.
        uniq, inv = np.unique(rows, return_inverse=True)
        out = {}
        try:
            with h5py.File(self.path(key), "r") as f:
                for name in f:
                    if name == "hash":
                        continue
                    out[name] = f[name][uniq][inv].astype(np.float32)
        except OSError as exc:  # a writer without our lock, or HDF5's own lock: compute instead
            if not _busy(exc):
                self._move_aside(key, exc)
            return {}, np.zeros(len(hashes), bool)
        return out, found

    def put(self, key: str, hashes: list[str], feats: dict) -> None:
        """Append features (dict name -> (K, ...)) of images with ``hashes``."""
        import h5py

        with self._lock, self._file_lock(key, exclusive=True):
            idx = self._load_index(key, fresh=True)  # what other processes appended counts
            new = [i for i, h in enumerate(hashes) if h not in idx]
            if not new:
                return
            from napari_nrf.guards import ResourceError, check_free_disk

            need = sum(2 * int(np.prod(np.shape(v)[1:])) for v in feats.values()) * len(new) + 32 * len(new)
            try:
                # HDF5 crashes the process (segmentation fault) when an append meets a full
                # disk: the rows' bytes (plus a margin) must be free before the file is opened.
                check_free_disk(self.path(key), 4 * need, "the feature cache")
            except ResourceError as exc:
                import warnings

                warnings.warn(f"{exc}; features are not cached this time", stacklevel=2)
                return
            try:
                try:
                    f = h5py.File(self.path(key), "a")
                except OSError as exc:
                    if _busy(exc):
                        raise
                    self._move_aside(key, exc)
                    idx = self._load_index(key)
                    new = [i for i, h in enumerate(hashes) if h not in idx]
                    f = h5py.File(self.path(key), "a")
            except OSError as exc:
                # Another process holds the HDF5 write lock: skip caching this batch rather
                # than fail the caller's work; it will be cached on a later run.
                import warnings

                warnings.warn(f"feature cache {self.path(key).name} is busy ({exc}); not cached this time")
                return
            with f:
                n0 = f["hash"].shape[0] if "hash" in f else 0
                n1 = n0 + len(new)
                if "hash" not in f:
                    f.create_dataset("hash", shape=(0,), maxshape=(None,), dtype="S32", chunks=(1024,))
                f["hash"].resize((n1,))
                f["hash"][n0:n1] = np.array([hashes[i].encode() for i in new], dtype="S32")
                for name, v in feats.items():
                    v = np.asarray(v)[new].astype(np.float16)
                    if name not in f:
                        f.create_dataset(name, shape=(0,) + v.shape[1:], maxshape=(None,) + v.shape[1:],
                                         dtype=np.float16, chunks=(1,) + v.shape[1:])
                    f[name].resize((n1,) + v.shape[1:])
                    f[name][n0:n1] = v
            for j, i in enumerate(new):
                idx[hashes[i]] = n0 + j
            self._stamp[key] = self._file_stamp(key)


def _busy(exc) -> bool:
    """True when an h5py OSError means "another process holds the file lock" (retry
    later), not "this file is not readable HDF5"."""
    text = str(exc).lower()
    return "lock" in text or "resource temporarily unavailable" in text or getattr(exc, "errno", None) == 11


def _n_images(images) -> int | None:
    if isinstance(images, (str, os.PathLike)):
        return 1
    if hasattr(images, "shape") and len(images.shape) == 4:
        return int(images.shape[0])
    if isinstance(images, (list, tuple)):
        return len(images)
    return None


def _batches(images, batch_size: int):
    """Yield lists of (H, W, 3) uint8 arrays without loading a big array or dataset whole."""
    n = _n_images(images)
    if n is not None and not isinstance(images, (str, os.PathLike)) and (isinstance(images, (list, tuple)) or
                                                                          len(images.shape) == 4):
        for s in range(0, n, batch_size):
            chunk = images[s:s + batch_size]
            if hasattr(chunk, "shape"):
                chunk = np.asarray(chunk)
                yield [to_rgb_uint8(im) for im in chunk]
            else:
                yield [to_rgb_uint8(im) for im in chunk]
        return
    all_ = as_image_list(images)
    for s in range(0, len(all_), batch_size):
        yield all_[s:s + batch_size]


@torch.inference_mode()
@fill_doc
def extract_features(backbone, images, batch_size: int = 16, cache: FeatureCache | None = None,
                     device=None, progress=None) -> dict:
    """Named features of ``images`` through the frozen ``backbone``.

    Parameters
    ----------
    backbone : Backbone
        From :func:`napari_nrf.features.get_backbone`.
    images : path, PIL image, array, list of these, or a (B, H, W, 3|4) array/HDF5 dataset
        Anything :func:`napari_nrf.features.images.to_rgb_uint8` accepts.
    batch_size : int
        Images per forward pass.
    cache : FeatureCache or None
        Read cached features and store new ones.
    device : torch device or None
        Where the network runs (default: the backbone's device).
    %(progress)s
        Called after each batch of images.

    Returns
    -------
    dict name -> (B, ...) float32 ndarray, in the backbone's ``feature_shapes``.
    """
    dev = torch.device(device) if device is not None else next(backbone.parameters()).device
    backbone.to(dev)
    total = _n_images(images)
    parts: dict[str, list] = {}
    done = 0
    key = backbone.cache_key
    for batch in _batches(images, batch_size):
        feats = None
        if cache is not None:
            hashes = [image_hash(im) for im in batch]
            cached, found = cache.get(key, hashes)
            if found.all():
                feats = cached
            else:
                todo = [im for im, ok in zip(batch, found) if not ok]
                fresh = _run(backbone, todo, dev)
                cache.put(key, [h for h, ok in zip(hashes, found) if not ok], fresh)
                feats = {}
                for name, v in fresh.items():
                    full = np.empty((len(batch),) + v.shape[1:], np.float32)
                    # What the cache will return next time (float16): results must not
                    # depend on whether the cache was warm (training reproducibility).
                    full[~found] = v.astype(np.float16)
                    if found.any():
                        full[found] = cached[name]
                    feats[name] = full
        else:
            feats = _run(backbone, batch, dev)
        for name, v in feats.items():
            parts.setdefault(name, []).append(v)
        done += len(batch)
        if progress is not None:
            progress(done, total)
    if not parts:
        return {name: np.zeros((0,) + tuple(s), np.float32) for name, s in backbone.feature_shapes.items()}
    return {name: np.concatenate(v) for name, v in parts.items()}


def cached_features(backbone_name: str, config: dict, images, cache: FeatureCache,
                    max_images: int = 64) -> dict | None:
    """Features of ``images`` read from ``cache`` without building the backbone.

    Returns dict name -> (B, ...) float32 ndarray when every image is cached, else None
    (also when the backbone's cache key needs an instance, or for more than
    ``max_images`` images: big libraries go through :func:`extract_features`). Building
    the backbone (importing timm and torchvision) takes seconds; a cached image does not
    need it.
    """
    from .backbones import BACKBONES

    cls = BACKBONES.get(backbone_name)
    key = cls.key_for(**(config or {})) if cls is not None else None
    n = _n_images(images)
    if key is None or n is None or n == 0 or n > max_images:
        return None
    hashes = [image_hash(im) for im in as_image_list(images)]
    feats, found = cache.get(key, hashes)
    return feats if found.all() and feats else None


def _run(backbone, batch, dev) -> dict:
    x = backbone.preprocess(batch).to(dev)
    out = backbone(x)
    return {k: v.float().cpu().numpy() for k, v in out.items()}
