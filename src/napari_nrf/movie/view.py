"""What the Movie response widget shows, Qt-free: a film's predicted 4D response, its
frames, the decoder's reconstructions, the measured responses when the film is one of a
data set's, and the time course at an MNI point.

Time runs in seconds on the first axis of every layer (TR x volume index); the volume at
time t is the response predicted from the chunk at t - delay x TR (the haemodynamic delay,
shown by the widget), so with ``frames_lead`` the frames layer is shifted by the delay and
the frame on screen is the one that caused the response on screen.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from napari_nrf import space

from .volumes import to_volumes, voxel_grid


@dataclass
class MovieView:
    """A film seen through a movie model.

    pred (T, V) float32 per volume (NaN for the first ``delay``); frames (T, S, S, 3) uint8
    (each TR's middle frame); recon (T, S, S, 3) uint8 or None (decoded from ``pred``, at
    the volume's time); measured (T, V) or None; coords (V, 3) MNI mm; tr (s); delay (TR);
    grid: the voxels' grid; film: a name.
    """

    pred: np.ndarray
    frames: np.ndarray
    recon: np.ndarray | None
    measured: np.ndarray | None
    coords: np.ndarray
    tr: float
    delay: int
    grid: space.Grid
    film: str = ""

    @property
    def n_volumes(self) -> int:
        return len(self.pred)

    def volumes(self) -> np.ndarray:
        """(X, Y, Z, T) float32 of the predictions on :attr:`grid`."""
        return to_volumes(self.pred, self.coords, self.grid)

    def time_course(self, xyz, max_mm: float | None = None):
        """(t seconds (T,), predicted (T,), measured (T,) or None, voxel index, distance mm)
        at the voxel nearest MNI point ``xyz``; None when none is within ``max_mm`` (default
        one grid cell)."""
        d = np.linalg.norm(self.coords - np.asarray(xyz, np.float32)[None], axis=1)
        v = int(np.argmin(d))
        lim = self.grid.resolution if max_mm is None else max_mm
        if d[v] > lim:
            return None
        t = np.arange(self.n_volumes) * self.tr
        return t, self.pred[:, v], None if self.measured is None else self.measured[:, v], v, float(d[v])

    def delay_text(self, step: int) -> str:
        """What the volume at time step ``step`` shows, in words."""
        t = step * self.tr
        src = t - self.delay * self.tr
        if src < 0:
            return f"t = {t:.1f} s: no prediction yet (the response lags the film by {self.delay} TR)"
        return (f"t = {t:.1f} s (volume {step}): the response to the film at {src:.1f} s "
                f"({self.delay} TR = {self.delay * self.tr:.1f} s earlier)")


def frames_placement(grid: space.Grid, size: int, tr: float, slot: int = 0, delay_s: float = 0.0) -> dict:
    """napari placement (scale, translate for (T, z, y, x)) of a frames layer beside the
    brain: square frames as tall as the grid's y extent, right of it in x (``slot`` 0, 1:
    frames, reconstructions), spanning every z (the data is broadcast over z); time in
    seconds on axis 0, shifted by ``delay_s``."""
    lo, hi = grid.extent
    side = max(80.0, float(hi[1] - lo[1]))
    px = side / size
    x0 = max(float(hi[0]), float(space.MNI_BOX_MAX[0])) + 10.0 + slot * (side + 10.0)  # right of the brain
    return {"scale": (float(tr), float(grid.zooms[2]), px, px),
            "translate": (float(delay_s), float(grid.origin[2]), float(lo[1]), x0)}


def broadcast_frames(frames: np.ndarray, nz: int) -> np.ndarray:
    """(T, S, S, 3) -> a (T, nz, S, S, 3) read-only view (no copy), frames flipped to
    napari's upward y so they read upright next to the MNI axes."""
    f = np.asarray(frames)[:, ::-1]
    return np.broadcast_to(f[:, None], (f.shape[0], nz) + f.shape[1:])


def movie_view(model, source=None, *, dataset=None, film: str | None = None, tr: float | None = None,
               onset: float = 0.0, fps: float | None = None, batch: int = 16, resolution: float | None = None,
               progress=None, cancel=None) -> MovieView:
    """Predict a film: a video file / frame folder ``source``, or film ``film`` of a movie
    data set ``dataset`` (then the measured responses come too, at the model's voxels)."""
    from .evaluate import film_volumes, predict_film, reconstruct

    coords = np.asarray(next(iter(model.subjects.values())), np.float32)
    measured = None
    if dataset is not None:
        from .dataset import model_voxels

        name = film or dataset.film_names[0]
        chunks = dataset.films[name]["frames"]
        pred = film_volumes(model, chunks, batch, progress, cancel)
        mid = dataset.frames_per_tr // 2
        frames = np.stack([np.asarray(chunks[i])[mid] for i in range(len(chunks))])
        measured = np.asarray(dataset.films[name]["responses"], np.float32)[:, model_voxels(model, dataset)]
        tr = dataset.tr
    else:
        mids = []
        pred = predict_film(model, source, tr=tr, onset=onset, fps=fps, batch=batch, progress=progress,
                            cancel=cancel, middle_frames=mids)
        frames = np.stack(mids)
        name = str(source)
        tr = float(tr or model.tr)
    recon = None
    if model.has_decoder:
        ok = np.isfinite(pred).all(1)
        recon = np.zeros_like(frames)
        if ok.any():
            recon[ok] = reconstruct(model, pred[ok])
    return MovieView(pred, frames, recon, measured, coords, float(tr), int(model.delay),
                     voxel_grid(coords, resolution), name)
