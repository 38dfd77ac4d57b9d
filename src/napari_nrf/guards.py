"""The input and resource checks every reader and writer shares (kept free of heavy imports).

* :func:`check_regular_file`: a path a command reads is a regular file (a FIFO would hang
  the reader, a device would stream forever, a folder or a symlink loop would fail deep
  inside a library); refused by kind, naming the flag.
* :func:`check_free_disk` / :func:`disk_guard`: free space checked before a write, and an
  ``ENOSPC`` (or ``EDQUOT``) during it turned into one line with the partial file removed.
  HDF5 (h5py) aborts the process (segmentation fault) when a flush hits a full disk in
  some states, so writers of HDF5 files check the space first and keep a margin.
* :func:`check_size`: a size argument bounded by the machine (free memory or disk), the
  estimate in the message, checked before any allocation.
* :func:`read_text_table`: a CSV / TSV read with a UTF-8 BOM and Latin-1 handled.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import stat
from pathlib import Path

from napari_nrf.errors import NapariNRFError, ResourceError, is_disk_full  # noqa: F401  (re-exported)


class InputKindError(NapariNRFError):
    """A path that should be a regular file is a FIFO, a device, a folder or a broken link."""


# What a write keeps free beyond its own estimate: HDF5 and the OS need room to finish.
DISK_MARGIN = 16 << 20


def _gib(n: float) -> str:
    return f"{n / 2 ** 30:.2f} GiB" if n >= 2 ** 28 else f"{n / 2 ** 20:.1f} MiB"


def check_regular_file(path, flag: str = "input") -> Path:
    """``path`` is an existing regular file (after following symlinks), else
    :class:`InputKindError` / ``FileNotFoundError`` with one line naming ``flag``.

    Called by every reader before it opens a user's file: ``open()`` on a FIFO blocks
    forever, a character device never ends, a folder fails inside the library."""
    p = Path(path)
    try:
        st = os.stat(p)
    except FileNotFoundError:
        if os.path.islink(p):
            raise InputKindError(f"{flag} {p}: a broken symbolic link") from None
        raise FileNotFoundError(f"{flag} {p}: no such file") from None
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise InputKindError(f"{flag} {p}: a symbolic link loop") from None
        if exc.errno == errno.ENAMETOOLONG:
            raise InputKindError(f"{flag} {str(p)[:80]}...: the file name is too long") from None
        raise
    mode = st.st_mode
    if stat.S_ISREG(mode):
        return p
    kind = ("a folder" if stat.S_ISDIR(mode) else "a named pipe (FIFO)" if stat.S_ISFIFO(mode)
            else "a character device" if stat.S_ISCHR(mode) else "a block device" if stat.S_ISBLK(mode)
            else "a socket" if stat.S_ISSOCK(mode) else "not a regular file")
    raise InputKindError(f"{flag} {p} is {kind}, not a regular file")


def free_disk(path) -> int:
    """Free bytes on the file system that holds ``path`` (or its nearest existing parent)."""
    p = Path(path).absolute()
    while not p.exists() and p != p.parent:
        p = p.parent
    return int(shutil.disk_usage(p).free)


def available_memory() -> int:
    """Bytes of memory available to a new allocation (psutil; 8 GiB when unknown)."""
    try:
        import psutil

        return int(psutil.virtual_memory().available)
    except Exception:  # noqa: BLE001 - psutil missing or unsupported platform
        return 8 << 30


def check_free_disk(path, need: int, what: str) -> None:
    """Refuse (``ResourceError``) when writing about ``need`` bytes at ``path`` would not
    fit in its file system's free space (plus :data:`DISK_MARGIN`)."""
    free = free_disk(path)
    if int(need) + DISK_MARGIN > free:
        raise ResourceError(f"{what}: needs about {_gib(need)} at {Path(path).parent}, which has "
                            f"{_gib(free)} free; free some space or choose another folder")


def check_size(need: int, what: str, where: str = "memory", path=None, fraction: float = 0.8) -> None:
    """Bound a size argument by the machine before allocating: ``need`` bytes (the
    estimate of what ``what`` asks for) must fit in ``fraction`` of the available memory
    (``where="memory"``) or the free disk at ``path`` (``where="disk"``). Raises
    :class:`ResourceError` with the estimate, e.g. "--image-size 100000: needs about 224 GiB
    of memory, 12 GiB available"."""
    if where == "disk":
        have = free_disk(path if path is not None else ".")
        room = f"free on {Path(path).parent if path is not None else '.'}"
    else:
        have = available_memory()
        room = "of memory available"
    if int(need) > fraction * have:
        raise ResourceError(f"{what}: needs about {_gib(need)} of {where}, {_gib(have)} {room}; "
                            "choose a smaller value")


@contextlib.contextmanager
def disk_guard(path, need: int = 0, what: str = "writing"):
    """Check ``need`` bytes are free at ``path`` first, then run the write; an ``ENOSPC``
    during it becomes one :class:`ResourceError` line and ``path`` (when the write created
    it) is removed, so nothing partial stays."""
    path = Path(path)
    existed = path.exists()
    if need:
        check_free_disk(path, need, f"{what} {path.name}")
    try:
        yield path
    except Exception as exc:
        if not is_disk_full(exc):
            raise
        if not existed:
            with contextlib.suppress(OSError):
                path.unlink()
        raise ResourceError(f"{what} {path}: the disk is full (no space left on {path.parent}); "
                            "nothing was kept; free some space and run again") from None


def read_text_table(path, flag: str = "CSV") -> str:
    """The text of a CSV / TSV file: UTF-8 (a BOM removed), else Latin-1 as a fallback,
    never a codec error without the file's name."""
    p = check_regular_file(path, flag)
    raw = p.read_bytes()
    if raw.startswith(b"\xef\xbb\xbf"):
        raw = raw[3:]
    elif raw.startswith((b"\xff\xfe", b"\xfe\xff")):
        try:
            return raw.decode("utf-16")
        except UnicodeDecodeError as exc:
            raise NapariNRFError(f"{flag} {p}: not readable text ({exc.reason} at byte {exc.start})") from None
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        if b"\x00" in raw:
            raise NapariNRFError(f"{flag} {p}: a binary file, not a text table") from None
        return raw.decode("latin-1")


def display_path(p) -> str:
    """``str(p)`` safe for JSON/UTF-8 output: a file name that is not valid UTF-8 (its
    bytes kept as surrogate escapes by Python) is written with its bytes as ``\\xNN``
    instead of lone surrogates that break JSON readers."""
    s = os.fspath(p) if not isinstance(p, str) else p
    try:
        s.encode("utf-8")
        return s
    except UnicodeEncodeError:
        return os.fsencode(s).decode("utf-8", "backslashreplace")


def check_model_memory(build, what: str, factor: int = 4) -> None:
    """Bound a model's size arguments by memory before it is built: ``build()`` runs on
    torch's ``meta`` device (no memory), its parameters and buffers are counted, and
    ``factor`` float32 copies (weights, gradients, two Adam moments) must fit."""
    import warnings

    import torch

    try:
        with torch.device("meta"), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            m = build()
    except NapariNRFError:
        raise
    except Exception:  # noqa: BLE001 - the real build reports a bad configuration itself
        return
    n = sum(p.numel() for p in m.parameters()) + sum(b.numel() for b in m.buffers())
    check_size(int(n) * 4 * factor, f"{what} ({n / 1e6:,.0f}M parameters)")


def json_safe(obj):
    """``obj`` with every string made valid UTF-8 (:func:`display_path`): a non-UTF-8 file
    name would otherwise reach a JSON file as lone surrogate escapes (``\\udcff``), which
    strict JSON readers refuse. Dicts, lists and tuples are walked; other values kept."""
    if isinstance(obj, str):
        return display_path(obj)
    if isinstance(obj, os.PathLike):
        return display_path(os.fspath(obj))
    if isinstance(obj, dict):
        return {json_safe(k) if isinstance(k, str) else k: json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    return obj
