"""Sharded queries: response volumes of many images spread over several devices.

>>> sq = ShardedQuery(model, devices="cuda:0,cuda:1", batch_images=8)
>>> sq.volumes(paths, Grid.mni(1.0), mask="brain", on_volume=lambda i, vol: save(paths[i], vol))

The images are cut into batches of ``batch_images`` in their order; one worker thread per
device takes the next batch from a shared queue, encodes it through the frozen backbone
in one batched pass (through the feature cache when given) and asks the one query
engine (:class:`napari_nrf.query.QueryEngine`, one per device, each on its own copy of
the model) for the batch's volumes. Which worker takes a batch does not change its
numbers: a batch holds the same images and runs the same code on any device of one type,
so the volumes (and the files the CLI writes) are the same, bit for bit, for one device
or several (``tests/test_scale_query.py`` compares two CPU workers with one).

Threads, not processes: torch releases the GIL inside its kernels, so the workers of
several GPUs run at once, and the volumes stay in this process (no copies between
processes; the CLI writes each file from the worker that made it). Several CPU workers
share the process's torch threads (``torch.set_num_threads``); they overlap the Python,
numpy and file-writing parts of a query with the next batch's kernels
(docs/benchmarks.md has the measured rate on this machine).
"""

from __future__ import annotations

import copy
import queue
import threading

import numpy as np

from napari_nrf.errors import NapariNRFError


class ShardError(NapariNRFError):
    """Bad device list for a sharded query."""


def parse_devices(devices, check: bool = True) -> list[str]:
    """``"cuda:0,cuda:1"`` / ``"cpu,cpu"`` / a list -> list of device names (one worker
    each); None or "" -> the default device (CUDA when available, else the CPU).
    ``check=False``: only the form (devices of a cluster node, named on a login node)."""
    from napari_nrf.errors import check_device, choose_device

    if devices is None or devices == "":
        return [choose_device(None)]
    items = devices.split(",") if isinstance(devices, str) else list(devices)
    out = [str(d).strip() for d in items if str(d).strip()]
    if not out:
        raise ShardError(f"--devices {devices!r}: name at least one device (cpu, cuda:0, ...)")
    for d in out:
        if check:
            check_device(d)
        else:
            try:
                __import__("torch").device(d)
            except (RuntimeError, ValueError):
                raise ShardError(f"--devices: {d!r} is not a device (cpu, cuda:0, ...)") from None
    return out


def _load(img):
    """An image path (str / Path) is read now, in the worker; arrays pass through."""
    from pathlib import Path

    if isinstance(img, (str, Path)):
        from napari_nrf.features import load_image_file

        return load_image_file(img)
    return img


class ShardedQuery:
    """One :class:`~napari_nrf.query.QueryEngine` per device over copies of ``model``.

    Parameters
    ----------
    model : EncodingModel
    devices : str or list of str
        One worker per entry (a device may repeat: ``"cpu,cpu"``).
    batch_images : int
        Images per batch: encoded together through the backbone and queried together.
    feature_cache : FeatureCache or None
        Shared by the workers (its writes are locked).
    engine_kwargs
        Passed to every QueryEngine (``chunk_bytes``, ``mixed_precision``, ...).
    """

    def __init__(self, model, devices=None, batch_images: int = 4, feature_cache=None, **engine_kwargs):
        from napari_nrf.query import QueryEngine

        self.devices = parse_devices(devices)
        if int(batch_images) < 1:
            raise ShardError(f"batch_images must be at least 1, got {batch_images}")
        self.batch_images = int(batch_images)
        # One copy of the model per worker: engines keep per-query buffers and caches.
        models = [model] + [copy.deepcopy(model) for _ in self.devices[1:]]
        self.engines = [QueryEngine(m, device=d, feature_cache=feature_cache, **engine_kwargs)
                        for m, d in zip(models, self.devices)]

    def batches(self, n: int) -> list[range]:
        """The batches of ``n`` images, in order (the same for any number of devices)."""
        return [range(s, min(s + self.batch_images, n)) for s in range(0, n, self.batch_images)]

    def volumes(self, images, grid, mask=None, subject=None, on_volume=None, progress=None, cancel=None):
        """Volumes (N, *grid.shape) float32 of ``images`` (paths or image arrays), or, with
        ``on_volume(index, volume)`` (called from the worker threads, once per image),
        None and nothing kept. ``mask``: as :meth:`QueryEngine.volume` ("data" is resolved
        once here). ``progress(done_images, total)``; ``cancel()`` is polled between batches
        and between chunks (True raises :class:`napari_nrf.query.QueryCancelled`)."""
        from napari_nrf.query import QueryCancelled, _is_data_spec, coverage_mask

        images = list(images)
        n = len(images)
        if _is_data_spec(mask):
            mask = coverage_mask(self.engines[0].model, grid)
        out = None if on_volume is not None else np.empty((n,) + tuple(grid.shape), np.float32)
        todo: queue.Queue = queue.Queue()
        for b in self.batches(n):
            todo.put(b)
        stop = threading.Event()
        errors: list = []
        done = [0]
        lock = threading.Lock()

        def stopped():
            return stop.is_set() or (cancel is not None and cancel())

        def work(eng):
            try:
                while not stopped():
                    try:
                        b = todo.get_nowait()
                    except queue.Empty:
                        return
                    vols = eng.volume([_load(images[i]) for i in b], grid, mask=mask, subject=subject,
                                      cancel=stopped)
                    for j, i in enumerate(b):
                        if on_volume is not None:
                            on_volume(i, vols[j])
                        else:
                            out[i] = vols[j]
                    with lock:
                        done[0] += len(b)
                        if progress is not None:
                            progress(done[0], n)
            except BaseException as exc:  # noqa: BLE001 - re-raised in the caller's thread
                errors.append(exc)
                stop.set()

        if len(self.engines) == 1:
            work(self.engines[0])
        else:
            from concurrent.futures import ThreadPoolExecutor

            with ThreadPoolExecutor(len(self.engines), thread_name_prefix="napari-nrf-query") as pool:
                list(pool.map(work, self.engines))  # work() keeps its errors for the raise below
        if errors:
            raise errors[0]
        if cancel is not None and done[0] < n:
            raise QueryCancelled("query cancelled")
        return out


def sharded_volumes(model, images, grid, devices=None, mask="brain", batch_images: int = 4, subject=None,
                    feature_cache=None, progress=None, cancel=None) -> np.ndarray:
    """One-call helper: volumes (N, *grid.shape) of ``images`` spread over ``devices``."""
    sq = ShardedQuery(model, devices, batch_images=batch_images, feature_cache=feature_cache)
    return sq.volumes(images, grid, mask=mask, subject=subject, progress=progress, cancel=cancel)
