"""Films in: a video file (PyAV) or a folder of frames -> chunks of frames per TR.

A film is cut into chunks of one TR each: chunk ``t`` covers the film time
``[onset + t TR, onset + (t + 1) TR)`` seconds and holds exactly ``frames_per_tr``
frames, the frames shown at ``onset + t TR + k TR / frames_per_tr`` (k = 0..F-1), i.e.
uniform selection in time as the movie encoder-decoder paper does (32 frames per TR). Selection by each frame's
own timestamp makes variable-frame-rate files come out right: a frame is shown from its
presentation time until the next frame's. Each frame is resized to ``size`` x ``size``
(112 by default; the whole picture, no crop) and min-max scaled to the full 0..255 range
(the paper's [0, 1] scaling, stored as uint8).

Chunks are (F, S, S, 3) uint8; :func:`iter_chunks` yields them one TR at a time, so a
2-hour film is never in memory; :func:`read_film` stacks them (T, F, S, S, 3).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from napari_nrf.errors import NapariNRFError

FRAMES_PER_TR = 32
FRAME_SIZE = 112
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")


class MovieError(NapariNRFError):
    """A film that cannot be read or does not fit the runs."""


@dataclass
class FilmInfo:
    """What a film holds: ``n_frames`` frames over ``duration`` seconds (``fps`` the mean rate)."""

    path: str
    n_frames: int
    duration: float
    fps: float
    variable_rate: bool = False


def minmax_uint8(frame: np.ndarray) -> np.ndarray:
    """A frame (H, W, 3) scaled so its minimum is 0 and its maximum 255 (uint8); a
    constant frame becomes all 0."""
    f = np.asarray(frame, np.float32)
    lo, hi = float(f.min()), float(f.max())
    if hi - lo < 1e-6:
        return np.zeros(f.shape, np.uint8)
    return ((f - lo) * (255.0 / (hi - lo)) + 0.5).astype(np.uint8)


def _resize(frame: np.ndarray, size: int) -> np.ndarray:
    from PIL import Image

    if frame.shape[0] == size and frame.shape[1] == size:
        return frame
    return np.asarray(Image.fromarray(frame).resize((size, size), Image.BILINEAR))


# ---- sources: timestamped frames ----------------------------------------------------------
def _folder_frames(folder: Path, fps: float | None):
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise MovieError(f"{folder}: no frames ({', '.join(IMAGE_SUFFIXES)}) in the folder")
    if fps is None or not (fps > 0 and math.isfinite(fps)):
        raise MovieError(f"{folder}: a folder of frames needs its frame rate (fps > 0), got {fps}")
    return files


def _open_video(path: Path):
    from napari_nrf.errors import require
    from napari_nrf.guards import check_regular_file

    av = require("av", "movie", "reading video files (or give a folder of frames)")
    check_regular_file(path, "film")  # FFmpeg would wait forever on a FIFO
    try:
        container = av.open(str(path))
    except Exception as exc:  # noqa: BLE001 - PyAV raises several FFmpeg error types
        raise MovieError(f"{path}: not a readable video file ({type(exc).__name__}: {exc})") from None
    if not container.streams.video:
        container.close()
        raise MovieError(f"{path}: the file has no video stream")
    return container


def _iter_timed(source, fps: float | None, size: int):
    """(time in s, frame (size, size, 3) uint8 RGB) in presentation order."""
    source = Path(source)
    if source.is_dir():
        for k, p in enumerate(_folder_frames(source, fps)):
            from PIL import Image, ImageOps

            try:
                with Image.open(p) as im:
                    arr = np.asarray(ImageOps.exif_transpose(im).convert("RGB"))  # upright, as shown
            except Exception as exc:  # noqa: BLE001 - PIL raises several types for bad files
                raise MovieError(f"{p}: not a readable image ({type(exc).__name__}: {exc})") from None
            yield k / float(fps), _resize(arr, size)
        return
    if not source.exists():
        raise FileNotFoundError(f"film not found: {source}")
    container = _open_video(source)
    try:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"  # FFmpeg's own decoding threads
        from av.video.reformatter import VideoReformatter

        # One scaler for the whole film: VideoFrame.reformat builds a new one per frame
        # (and starts its threads each time), 3-4x the CPU time and far more wall time.
        scaler = VideoReformatter()
        k = 0
        last = -math.inf
        try:
            for frame in container.decode(stream):
                t = frame.time
                if t is None:  # no timestamps: fall back to the stream's nominal rate
                    rate = float(stream.average_rate or fps or 0) or None
                    if rate is None:
                        raise MovieError(f"{source}: frames carry no timestamps and the stream no frame rate")
                    t = k / rate
                t = float(t)
                if t <= last:  # out of order or duplicate timestamps: keep presentation order
                    t = last + 1e-6
                last = t
                k += 1
                # FFmpeg's scaler resizes while converting to RGB (bilinear, as PIL's path)
                yield t, scaler.reformat(frame, width=size, height=size, format="rgb24",
                                         interpolation="BILINEAR", threads=1).to_ndarray()
        except MovieError:
            raise
        except Exception as exc:  # noqa: BLE001 - decoding errors inside a damaged file
            raise MovieError(f"{source}: the video is damaged after frame {k} "
                             f"({type(exc).__name__}: {exc})") from None
        if k == 0:
            raise MovieError(f"{source}: no frame could be decoded")
    finally:
        container.close()


def film_info(source, fps: float | None = None) -> FilmInfo:
    """Frame count, duration (s, first frame to the end of the last) and mean rate of a film.

    For a video the timestamps are read by decoding packets' headers only where the
    container gives no duration; a folder needs ``fps``."""
    source = Path(source)
    if source.is_dir():
        files = _folder_frames(source, fps)
        return FilmInfo(str(source), len(files), len(files) / float(fps), float(fps))
    if not source.exists():
        raise FileNotFoundError(f"film not found: {source}")
    container = _open_video(source)
    try:
        stream = container.streams.video[0]
        times = []
        try:
            for pkt in container.demux(stream):
                if pkt.pts is not None and pkt.size:
                    times.append(float(pkt.pts * pkt.time_base))
        except Exception as exc:  # noqa: BLE001
            raise MovieError(f"{source}: the video is damaged ({type(exc).__name__}: {exc})") from None
    finally:
        container.close()
    if not times:
        raise MovieError(f"{source}: the video has no frames")
    times = np.sort(np.asarray(times))
    d = np.diff(times)
    step = float(np.median(d)) if len(d) else 1.0 / float(fps or 25.0)
    duration = float(times[-1] - times[0] + step)
    variable = bool(len(d) > 1 and (d.max() - d.min()) > 0.05 * step)
    return FilmInfo(str(source), len(times), duration, len(times) / duration, variable)


def n_chunks(info: FilmInfo, tr: float, onset: float = 0.0) -> int:
    """Whole TRs of film after ``onset`` seconds."""
    return max(0, int(math.floor((info.duration - onset) / tr + 1e-6)))


def _check_timing(tr, frames_per_tr, size, onset):
    if not (isinstance(tr, (int, float)) and math.isfinite(tr) and tr > 0):
        raise MovieError(f"the TR must be a positive number of seconds, got {tr}")
    if int(frames_per_tr) != frames_per_tr or frames_per_tr < 2 or frames_per_tr % 2:
        raise MovieError(f"frames per TR must be an even whole number >= 2, got {frames_per_tr}")
    if int(size) != size or size < 16 or size % 8:
        raise MovieError(f"the frame size must be a multiple of 8 pixels >= 16, got {size}")
    if not (math.isfinite(onset) and onset >= 0):
        raise MovieError(f"the onset must be >= 0 seconds, got {onset}")


def iter_chunks(source, *, tr: float, frames_per_tr: int = FRAMES_PER_TR, size: int = FRAME_SIZE,
                onset: float = 0.0, n_trs: int | None = None, fps: float | None = None):
    """Yield ``n_trs`` chunks (frames_per_tr, size, size, 3) uint8, one per TR (see module doc).

    ``source``: a video file (any format FFmpeg reads) or a folder of frames (sorted by
    name, shown at ``fps``). ``onset``: seconds of film before the first TR. ``n_trs``
    (default: every whole TR of the film) longer than the film raises :class:`MovieError`
    naming both durations, before anything is decoded.
    """
    _check_timing(tr, frames_per_tr, size, onset)
    info = film_info(source, fps)
    avail = n_chunks(info, tr, onset)
    if onset >= info.duration:
        raise MovieError(f"{Path(source).name}: --onset {onset:g} s is at or past the end of the film, which lasts "
                         f"{info.duration:.2f} s")
    if n_trs is None:
        n_trs = avail
    if n_trs < 1 or n_trs > avail:
        need = onset + n_trs * tr
        raise MovieError(f"{Path(source).name}: the film lasts {info.duration:.2f} s; "
                         f"{n_trs} TR of {tr:g} s after an onset of {onset:g} s need {need:.2f} s"
                         + ("" if n_trs >= 1 else " (the film is shorter than one TR)"))
    F = int(frames_per_tr)
    frames = _iter_timed(source, fps, int(size))
    cur_t, cur = next(frames)
    t0 = cur_t  # film time zero: the first frame's timestamp
    nxt = next(frames, None)
    for t in range(int(n_trs)):
        chunk = np.empty((F, size, size, 3), np.uint8)
        for k in range(F):
            target = t0 + onset + t * tr + k * tr / F + 1e-9
            while nxt is not None and nxt[0] <= target:
                cur_t, cur = nxt
                nxt = next(frames, None)
            chunk[k] = minmax_uint8(cur)
        yield chunk
    frames.close()


def read_film(source, **kw) -> np.ndarray:
    """All chunks of a film, (T, frames_per_tr, size, size, 3) uint8 (keyword arguments as
    :func:`iter_chunks`). For long films prefer :func:`iter_chunks`."""
    return np.stack(list(iter_chunks(source, **kw)))


def write_video(path, frames, fps: float, times=None) -> Path:
    """Write frames ((N, H, W, 3) uint8, or an iterable of (H, W, 3) uint8 frames, streamed)
    as an MPEG-4 video (PyAV), for tests, examples and benchmarks; ``times`` (N,) seconds
    give each frame's own timestamp (a variable-rate file)."""
    from napari_nrf.errors import require

    av = require("av", "movie", "writing video files")
    from fractions import Fraction

    path = Path(path)
    it = iter(frames)
    first = next(it, None)
    if first is None:
        raise MovieError("write_video needs at least one frame")
    with av.open(str(path), "w") as out:
        st = out.add_stream("mpeg4", rate=Fraction(fps).limit_denominator(1000))
        st.width, st.height = first.shape[1], first.shape[0]
        st.pix_fmt = "yuv420p"
        st.bit_rate = 4_000_000
        if times is not None:
            st.codec_context.time_base = Fraction(1, 1000)
        i = 0
        for f in _chain(first, it):
            vf = av.VideoFrame.from_ndarray(np.ascontiguousarray(f, dtype=np.uint8), format="rgb24")
            if times is not None:
                vf.pts = int(round(times[i] * 1000))
                vf.time_base = Fraction(1, 1000)
            for pkt in st.encode(vf):
                out.mux(pkt)
            i += 1
        for pkt in st.encode():
            out.mux(pkt)
    return path


def _chain(first, rest):
    yield first
    yield from rest
