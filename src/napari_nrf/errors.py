"""The shared conventions of napari-nrf: one base error, one cancellation type, one
atomic write, one device choice and one progress-callback shape.

* :class:`NapariNRFError` (a ValueError) is the base of every error whose message is
  written for the user (the CLI prints it without a traceback); each module keeps its own
  subclass (``BundleError``, ``TrainingError``, ...).
* :class:`Cancelled` is the base of every "the user asked this to stop" exception
  (``TrainingCancelled``, ``QueryCancelled``, ``JobCancelled``, ...); catch it instead of
  comparing class names.
* :class:`UnsupportedOperation`: a model kind does not do what was asked (points on a
  voxel-only kind, ``fit`` on an ensemble); the message says what it does instead.
* :func:`atomic_write`: temporary file in the destination's folder + ``os.replace``, so a
  crash never leaves half a file.
* :func:`choose_device`: "cuda" when available, else "cpu" (every command's default).
* progress callbacks are ``progress(done: int, total: int | None, message: str = "")``
  (:data:`Progress`): ``done`` of ``total`` units, the optional message naming what is
  counted (a stage, a subject). The query engine, fit (``progress`` and
  ``feature_progress``), the simulator and the demo's training call this shape. The
  adaptation pipeline's job reports (``finetune_ensemble(progress=)``) are richer
  records (dicts) for the jobs' progress logs.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Callable, Optional

Progress = Optional[Callable[..., None]]  # progress(done, total, message="")


class NapariNRFError(ValueError):
    """Base of napari-nrf's errors: bad input or state, with a message for the user."""


class UnsupportedOperation(NapariNRFError):
    """A model kind (or another component) does not support the requested operation."""


class Cancelled(RuntimeError):
    """Long work stopped because its ``cancel`` callable returned True (or a job was cancelled)."""


def _umask() -> int:
    m = os.umask(0o022)
    os.umask(m)
    return m


@contextlib.contextmanager
def atomic_write(path, mode: str = "wb", tmp_name: str | None = None, share: bool = True):
    """Write ``path`` atomically: yields a temporary path in the same folder (``mode=None``)
    or an open file object (``mode`` "w"/"wb"), renamed over ``path`` on success and
    removed on failure. ``share``: permissions 0666 & ~umask (tools such as safetensors
    and h5py create 0600 files; outputs are meant to be shared like any file)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(tmp_name or f".{path.name}.tmp{os.getpid()}")
    try:
        if mode is None:
            yield tmp
        else:
            with open(tmp, mode) as f:
                yield f
        if share and tmp.exists():
            os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def write_text_atomic(path, text: str) -> Path:
    """``path.write_text(text)``, atomically (see :func:`atomic_write`)."""
    with atomic_write(path, "w") as f:
        f.write(text)
    return Path(path)


def choose_device(name=None) -> str:
    """The device to run on: ``name`` when given ("cpu", "cuda", "cuda:1"), else "cuda"
    when torch sees a GPU, else "cpu"."""
    import torch

    if name in (None, "", "auto"):
        return "cuda" if torch.cuda.is_available() else "cpu"
    return str(name)
