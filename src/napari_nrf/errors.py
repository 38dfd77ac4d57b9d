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
  ``feature_progress``), the adaptation pipeline (``finetune_ensemble``), the simulator
  and the demo's training call this shape; per-epoch records (loss, validation scores)
  go to a separate ``on_epoch(record: dict)``, as in fit.
"""

from __future__ import annotations

import contextlib
import errno
import os
from pathlib import Path
from typing import Callable, Optional

Progress = Optional[Callable[..., None]]  # progress(done, total, message="")


class NapariNRFError(ValueError):
    """Base of napari-nrf's errors: bad input or state, with a message for the user."""


class ResourceError(NapariNRFError):
    """Not enough memory or disk for what was asked (an absurd size, a full disk)."""


def is_disk_full(exc: BaseException) -> bool:
    """True for an ``OSError`` (or a library's error wrapping one) meaning "no space left"."""
    if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
        return True
    text = str(exc).lower()
    return "no space left" in text or "disk quota" in text or "file too large" in text


class UnsupportedOperation(NapariNRFError):
    """A model kind (or another component) does not support the requested operation."""


class Cancelled(RuntimeError):
    """Long work stopped because its ``cancel`` callable returned True (or a job was cancelled)."""


def _umask() -> int:
    m = os.umask(0o022)
    os.umask(m)
    return m


def remove_stale_tmp(path, min_age_s: float = 5.0) -> list[Path]:
    """Remove the temporary files that killed writers of ``path`` left behind
    (``.<name>.tmp<pid>...`` of a process no longer running, older than ``min_age_s``), so
    a rerun or a resume neither trips over nor keeps them. Returns what was removed."""
    import re
    import time

    path = Path(path)
    removed = []
    try:
        cands = list(path.parent.glob(f".{glob_escape(path.name)}.tmp*"))
    except OSError:
        return removed
    for c in cands:
        m = re.match(r"\.tmp(\d+)", c.name[len(path.name) + 1:])
        if not m or int(m.group(1)) == os.getpid():
            continue
        try:
            os.kill(int(m.group(1)), 0)
            continue  # its writer still runs
        except ProcessLookupError:
            pass
        except OSError:
            continue
        try:
            if time.time() - c.stat().st_mtime >= min_age_s:
                c.unlink()
                removed.append(c)
        except OSError:
            pass
    return removed


def glob_escape(name: str) -> str:
    """``name`` with glob's special characters escaped."""
    import glob

    return glob.escape(name)


@contextlib.contextmanager
def atomic_write(path, mode: str = "wb", tmp_name: str | None = None, share: bool = True):
    """Write ``path`` atomically: yields a temporary path in the same folder (``mode=None``)
    or an open file object (``mode`` "w"/"wb"), renamed over ``path`` on success and
    removed on failure. ``share``: permissions 0666 & ~umask (tools such as safetensors
    and h5py create 0600 files; outputs are meant to be shared like any file)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_tmp(path)  # a killed earlier writer's leftovers
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
    except Exception as exc:
        if isinstance(exc, NapariNRFError) or not is_disk_full(exc):
            raise
        raise ResourceError(f"writing {path}: the disk is full (no space left on {path.parent}); nothing was "
                            "kept; free some space and run again") from None
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


class MissingExtra(NapariNRFError):
    """An optional dependency is not installed; the message names the pip extra."""


def require(module: str, extra: str, what: str):
    """Import and return ``module``, or raise :class:`MissingExtra`: one line naming the
    extra that installs it, e.g. ``reading video files needs the movie extra: pip install
    "napari-nrf[movie]"``."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise MissingExtra(f'{what} needs the {extra} extra ({module} is not installed): '
                           f'pip install "napari-nrf[{extra}]"') from exc


class OutputError(NapariNRFError):
    """An output path that would destroy something: one of the command's inputs, or an
    existing model / data set / file the command did not create (without ``overwrite``).

    ``existing``: the path that already exists when that is the only reason (so a GUI can
    word its own remedy instead of the CLI's ``--overwrite``); None otherwise."""

    def __init__(self, message: str, existing: Path | None = None):
        super().__init__(message)
        self.existing = existing


def _same_path(a: Path, b: Path) -> bool:
    try:
        if a.exists() and b.exists():
            return os.path.samefile(a, b)
    except OSError:
        pass
    try:
        return a.resolve() == b.resolve()
    except (OSError, RuntimeError):  # a symbolic link loop: compared as written (the reader refuses it)
        return a.absolute() == b.absolute()


def check_output(path, inputs=(), overwrite: bool = False, flag: str = "--out", folder: bool = False,
                 replaceable=None) -> Path:
    """The one output-path check of every command, job and export: call it before any work.

    ``path``: the file (or, with ``folder=True``, the folder) about to be written.
    ``inputs``: every path the command reads (files or folders); writing over one of them
    is refused even with ``overwrite`` (the command may still be reading it lazily). An
    output inside an input folder is fine; an input inside an output folder is checked by
    the caller per written file. An existing ``path`` is refused unless ``overwrite`` or
    ``replaceable(path)`` says it is the command's own kind of output (a previous report).
    A ``path`` whose parent is a file, or an unwritable parent, is refused here rather
    than after minutes of work. Returns ``Path(path)``; creates nothing."""
    p = Path(path)
    if str(path) == "":
        raise OutputError(f"{flag}: an empty path")
    for i in inputs:
        if i is None or str(i) == "":
            continue
        if _same_path(p, Path(i)):
            raise OutputError(f"{flag} {p} is also an input of this command; choose another output path")
    if p.exists():
        if folder:
            if not p.is_dir():
                raise OutputError(f"{flag} {p} exists and is a file, not a folder")
        elif p.is_dir():
            raise OutputError(f"{flag} {p} is a folder; give a file path")
        elif not overwrite and not (replaceable is not None and replaceable(p)):
            raise OutputError(f"{flag} {p} already exists; pass --overwrite to replace it", existing=p)
    parent = p.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if parent.exists() and not parent.is_dir():
        raise OutputError(f"{flag} {p}: {parent} is a file, not a folder")
    if parent.exists() and not os.access(parent, os.W_OK | os.X_OK):
        raise OutputError(f"{flag} {p}: the folder {parent} is not writable")
    return p


def check_outputs_in(folder, names, inputs=(), overwrite: bool = False, flag: str = "--out",
                     replaceable=None) -> Path:
    """:func:`check_output` for a folder output and the files ``names`` to be written in it."""
    folder = check_output(folder, inputs, overwrite=True, flag=flag, folder=True)
    for n in names:
        check_output(folder / n, inputs, overwrite=overwrite, flag=flag, replaceable=replaceable)
    return folder


def is_json_file(p) -> bool:
    """True when ``p`` holds a JSON object (a report a command may replace)."""
    try:
        with open(p, "rb") as f:
            head = f.read(1 << 16).lstrip()
        return head[:1] == b"{"
    except OSError:
        return False


class DeviceError(NapariNRFError):
    """A device that is not available here (``--device cuda`` without CUDA, a typo)."""


def check_device(name) -> str:
    """``name`` checked: a torch device string that exists on this machine (None/"auto":
    :func:`choose_device`). Raises :class:`DeviceError` with a one-line message."""
    if name in (None, "", "auto"):
        return choose_device(name)
    import torch

    try:
        dev = torch.device(str(name))
    except (RuntimeError, ValueError):
        raise DeviceError(f"--device {name}: not a device (cpu, cuda, cuda:1, mps)") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise DeviceError(f"--device {name}: CUDA is not available on this machine (torch "
                              f"{torch.__version__}); use --device cpu")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise DeviceError(f"--device {name}: only {torch.cuda.device_count()} CUDA device(s) here")
    elif dev.type == "mps":
        if not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
            raise DeviceError(f"--device {name}: MPS is not available on this machine; use --device cpu")
    elif dev.type != "cpu":
        raise DeviceError(f"--device {name}: unsupported device type {dev.type!r}; use cpu or cuda")
    return str(name)
