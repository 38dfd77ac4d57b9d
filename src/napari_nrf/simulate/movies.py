"""Virtual movies and the BOLD they evoke in virtual subjects (design-new-kinds.md, B).

A film (:func:`make_film`) is a run of shots of 2-6 s with hard cuts, in the film's own
style (its mix of foreground and background kinds and its pace). Each shot has a
background (a simulator scene or texture at twice the frame size, seen through a slowly
panning window) and a face, body or object patch moving across it. The per-frame neural
drive of a subject at MNI point x is

    d_f(x) = U_f(x) + a_motion * m_hMT(x) * motion_f + a_onset * m_early(x) * onset_f

with ``U`` the existing image tuning (:meth:`VirtualSubject.truth` of each frame),
``motion_f`` the frame-difference energy (0 across cuts), ``onset_f`` a 0.3 s transient
after each cut and ``m`` the soft memberships of hMT and V1-V3. The drive is convolved with
SPM's HRF at the frame rate (peak 5.2 s: 4 TR at TR 1.3 s), sampled at the middle of each
TR, scaled by the voxel's signal amplitude (area support x its ncsnr: voxels at an area's
edge carry less signal) and AR(1) noise (rho 0.3) and a slow drift are added. Responses
are then detrended, high-passed (1/128 Hz) and z-scored per film (:func:`..movie.dataset.zscore`);
``truth`` is the noiseless part in the same units. Several subjects (displaced areas, own
noise) at the group's voxel coordinates, and their average, make the group data set.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from napari_nrf.errors import NapariNRFError

from .stimuli import _ellipse_alpha, make_stimulus

FOREGROUND = ("face", "body", "object")
BACKGROUND = ("scene", "texture", "scene", "object")
EARLY = ("V1", "V2", "V3")


class MovieSimulationError(NapariNRFError):
    """Bad virtual-movie settings."""


@dataclass
class Film:
    """A virtual film: ``chunks`` (T, F, S, S, 3) uint8 and per-frame records (T * F,):
    ``content`` (n, 5) over face/body/scene/object/text, ``motion`` (frame-difference
    energy, mean absolute grey-level change / 10), ``onset`` (1 in the 0.3 s after a cut),
    ``shot`` (shot index)."""

    name: str
    chunks: np.ndarray
    tr: float
    content: np.ndarray
    motion: np.ndarray
    onset: np.ndarray
    shot: np.ndarray
    shots: list = field(default_factory=list)

    @property
    def frames_per_tr(self) -> int:
        return int(self.chunks.shape[1])

    @property
    def frames(self) -> np.ndarray:
        """(T * F, S, S, 3) uint8, a view."""
        c = self.chunks
        return c.reshape((-1,) + c.shape[2:])


def make_film(n_trs: int, *, tr: float = 1.3, frames_per_tr: int = 8, size: int = 112, seed: int = 0,
              name: str | None = None, motion: float = 1.0) -> Film:
    """A deterministic virtual film of ``n_trs`` TRs (see the module doc); ``motion``
    scales the speeds of pans and moving patches (0: still shots)."""
    if n_trs < 1 or frames_per_tr < 2 or size < 16:
        raise MovieSimulationError(f"need n_trs >= 1, frames_per_tr >= 2, size >= 16; got "
                                   f"{n_trs}, {frames_per_tr}, {size}")
    rng = np.random.default_rng([int(seed), 31])
    # Each film has its own style: its mix of foregrounds and backgrounds and its pace, so
    # a held-out film is a little out of the training films' distribution (as real films).
    fg_p, bg_p = rng.dirichlet(np.ones(len(FOREGROUND))), rng.dirichlet(np.ones(len(BACKGROUND)))
    motion = motion * float(rng.uniform(0.5, 1.5))
    fps = frames_per_tr / tr
    n = int(n_trs) * int(frames_per_tr)
    frames = np.empty((n, size, size, 3), np.uint8)
    content = np.zeros((n, 5), np.float32)
    shot_of = np.zeros(n, np.int32)
    shots = []
    f0, k = 0, 0
    while f0 < n:
        dur = int(round(rng.uniform(2.0, 6.0) * fps))
        f1 = min(n, f0 + max(2, dur))
        bg_cat = BACKGROUND[rng.choice(len(BACKGROUND), p=bg_p)]
        bg, bg_c = make_stimulus(int(seed * 100000 + 2 * k), seed=7, size=2 * size, category=bg_cat,
                                 return_content=True)
        bg = bg.astype(np.float32) / 255.0
        fg_cat = FOREGROUND[rng.choice(len(FOREGROUND), p=fg_p)]
        ps = int(size * rng.uniform(0.35, 0.6))
        fg, fg_c = make_stimulus(int(seed * 100000 + 2 * k + 1), seed=7, size=ps, category=fg_cat,
                                 return_content=True)
        fg = fg.astype(np.float32) / 255.0
        alpha = _ellipse_alpha(ps, ps, 0.3)
        # window origin in the 2S background and its pan velocity (px per frame)
        w0 = rng.uniform(0, size, 2)
        wv = motion * rng.normal(0, 0.6, 2) * (rng.random() < 0.6)
        p0 = rng.uniform(0.25, 0.75, 2) * size
        pv = motion * rng.normal(0, 1.5, 2) * (rng.random() < 0.7)
        for i, f in enumerate(range(f0, f1)):
            wy, wx = np.clip(w0 + wv * i, 0, size).astype(int)
            img = bg[wy:wy + size, wx:wx + size].copy()
            cy, cx = p0 + pv * i
            cy, cx = (cy % (size + ps)) - ps / 2, (cx % (size + ps)) - ps / 2  # wrap around the frame
            _paste_into(img, fg, alpha, cy, cx)
            frames[f] = (np.clip(img, 0, 1) * 255 + 0.5).astype(np.uint8)
            inside = _visible_fraction(cy, cx, ps, size)
            content[f] = np.maximum(0.8 * bg_c, inside * fg_c)
            shot_of[f] = k
        shots.append({"start": f0, "stop": f1, "background": bg_cat, "foreground": fg_cat})
        f0, k = f1, k + 1
    mot = np.zeros(n, np.float32)
    d = np.abs(np.diff(frames.astype(np.int16), axis=0)).mean((1, 2, 3)) / 10.0
    mot[1:] = d
    cut = np.zeros(n, bool)
    cut[1:] = shot_of[1:] != shot_of[:-1]
    mot[cut] = 0.0  # a cut is an onset, not motion
    onset = np.zeros(n, np.float32)
    width = max(1, int(round(0.3 * fps)))
    for f in np.flatnonzero(cut):
        onset[f:f + width] = 1.0
    onset[:width] = 1.0  # the film starts
    return Film(name or f"film-{seed:02d}", frames.reshape(n_trs, frames_per_tr, size, size, 3), float(tr),
                content, mot, onset, shot_of, shots)


def _visible_fraction(cy, cx, ps, size):
    y0, y1 = max(0, cy - ps / 2), min(size, cy + ps / 2)
    x0, x1 = max(0, cx - ps / 2), min(size, cx + ps / 2)
    return float(max(0, y1 - y0) * max(0, x1 - x0) / (ps * ps))


def _paste_into(dst, src, alpha, cy, cx):
    H, W = dst.shape[:2]
    h, w = src.shape[:2]
    y0, x0 = int(round(cy - h / 2)), int(round(cx - w / 2))
    ys, xs = max(0, -y0), max(0, -x0)
    ye, xe = min(h, H - y0), min(w, W - x0)
    if ye <= ys or xe <= xs:
        return
    a = alpha[ys:ye, xs:xe, None]
    reg = dst[y0 + ys:y0 + ye, x0 + xs:x0 + xe]
    dst[y0 + ys:y0 + ye, x0 + xs:x0 + xe] = a * src[ys:ye, xs:xe] + (1 - a) * reg


@dataclass
class FilmDescription:
    """What the truth of a film depends on: the frames' descriptors and the film's records."""

    desc: object
    motion: np.ndarray
    onset: np.ndarray
    frames_per_tr: int
    tr: float


def describe_film(film: Film) -> FilmDescription:
    """Descriptors of every frame (once per film, shared by the subjects)."""
    from .descriptors import describe

    return FilmDescription(describe(film.frames, content=film.content), film.motion, film.onset,
                           film.frames_per_tr, film.tr)


def neural_drive(subject, fd: FilmDescription, xyz, a_motion: float = 1.5, a_onset: float = 1.0) -> np.ndarray:
    """Per-frame neural drive (n_frames, V) float32 of ``subject`` at MNI ``xyz`` (V, 3) mm."""
    xyz = np.asarray(xyz, np.float32)
    u = subject.truth(fd.desc, xyz)
    m = subject.membership(xyz)
    names = [b[0] for b in subject._blobs]
    m_mt = m[:, [i for i, nm in enumerate(names) if nm == "hMT"]].sum(1)
    m_early = m[:, [i for i, nm in enumerate(names) if nm in EARLY]].sum(1)
    return (u + a_motion * fd.motion[:, None] * m_mt[None] + a_onset * fd.onset[:, None] * m_early[None]).astype(
        np.float32)


def hrf_at_frames(tr: float, frames_per_tr: int) -> np.ndarray:
    """SPM's canonical HRF sampled at the frame rate (unit sum)."""
    from nilearn.glm.first_level import spm_hrf

    h = np.asarray(spm_hrf(tr, oversampling=frames_per_tr), np.float64)
    return h / h.sum()


def bold(drive: np.ndarray, tr: float, frames_per_tr: int) -> np.ndarray:
    """Drive (n_frames, V) convolved with the HRF at the frame rate, sampled at the middle
    of each TR: (T, V) float64."""
    from scipy.signal import fftconvolve

    h = hrf_at_frames(tr, frames_per_tr)
    c = fftconvolve(drive.astype(np.float64), h[:, None], axes=0)[: len(drive)]
    return c[frames_per_tr // 2::frames_per_tr]


def simulate_subject_bold(subject, fd: FilmDescription, xyz, seed=0, rho: float = 0.3, drift: float = 0.5):
    """(responses, truth) (T, V) float32 of one subject for one film, z-scored per film."""
    from ..movie.dataset import clean

    xyz = np.asarray(xyz, np.float32)
    sig = bold(neural_drive(subject, fd, xyz), fd.tr, fd.frames_per_tr)
    sig = (sig - sig.mean(0)) / (sig.std(0) + 1e-9)
    support = np.clip(subject.membership(xyz).sum(1) / 0.6, 0, 1)
    amp = support * subject.ncsnr(xyz) * 1.5
    sig = sig * amp[None]
    T, V = sig.shape
    rng = np.random.default_rng([int(subject.seed), int(subject.index), int(seed), 77])
    e = rng.standard_normal((T, V))
    noise = np.empty_like(e)
    noise[0] = e[0]
    for t in range(1, T):
        noise[t] = rho * noise[t - 1] + np.sqrt(1 - rho * rho) * e[t]
    tt = np.arange(T)[:, None] * fd.tr
    dr = sum(rng.normal(0, drift, (1, V)) * np.cos(2 * np.pi * tt / (T * fd.tr) * (j + 0.5) + rng.uniform(0, 6, (1, V)))
             for j in range(3))
    y = clean(sig + noise + dr, fd.tr)
    sd = y.std(0)
    sd[sd == 0] = 1
    truth = clean(sig, fd.tr) / sd
    return (y / sd).astype(np.float32), truth.astype(np.float32)


def simulate_movies(out_dir=None, *, n_subjects: int = 3, n_films: int = 3, n_trs: int = 120, tr: float = 1.3,
                    frames_per_tr: int = 8, size: int = 112, max_voxels: int = 1500, seed: int = 0,
                    motion: float = 1.0, progress=None) -> dict:
    """Virtual films and the group's and each subject's BOLD (see the module doc).

    Returns {"group": MovieDataset, "sub-01": ..., ...} (in memory); with ``out_dir`` also
    writes ``group.h5`` and ``sub-XX.h5`` there (atomically each). The last film is the
    held-out film; ``meta`` records the HRF peak (``delay_tr``, in TR), the films' shots
    and the settings. ``n_trs``: one int or a list per film.
    """
    from ..movie.dataset import MovieDataset, movie_splits, snr_selection
    from .subjects import make_subjects

    if n_subjects < 1 or n_films < 1:
        raise MovieSimulationError("need at least one subject and one film")
    lengths = list(np.resize(np.atleast_1d(n_trs), n_films).astype(int))
    from napari_nrf.guards import check_free_disk, check_size

    frames = int(sum(lengths)) * int(frames_per_tr)
    # one film in memory as uint8 frames plus a float64 RGB frame being drawn
    check_size(max(int(x) for x in lengths) * int(frames_per_tr) * 3 * int(size) ** 2 + 24 * int(size) ** 2,
               f"size {size} px with {frames_per_tr} frames per TR")
    if out_dir is not None:
        check_free_disk(Path(out_dir) / "group.h5", frames * 3 * int(size) ** 2 * (n_subjects + 1),
                        f"size {size} px: {n_films} film(s) for the group and {n_subjects} subject(s)")
    subs = make_subjects(n_subjects, seed=seed)
    # A random sample of the visual voxels (not the most central ones): edge voxels carry
    # little signal, as many of a visual parcellation's voxels do, so SNR selection matters.
    xyz = subs[0].voxel_coords()
    if max_voxels is not None and len(xyz) > max_voxels:
        pick = np.random.default_rng([int(seed), 41]).choice(len(xyz), int(max_voxels), replace=False)
        xyz = xyz[np.sort(pick)]
    roi = subs[0].roi_labels(xyz)
    films = [make_film(lengths[i], tr=tr, frames_per_tr=frames_per_tr, size=size, seed=seed * 100 + i,
                       name=f"film-{i + 1:02d}", motion=motion) for i in range(n_films)]
    held = films[-1].name if n_films > 1 else None
    splits = movie_splits({f.name: lengths[i] for i, f in enumerate(films)}, held_out=held)
    per_sub = {s.name: {} for s in subs}
    total = n_films * (n_subjects + 1)
    done = 0
    for fi, film in enumerate(films):
        fd = describe_film(film)
        done += 1
        if progress is not None:
            progress(done, total, f"{film.name}: frames described")
        for s in subs:
            per_sub[s.name][film.name] = simulate_subject_bold(s, fd, xyz, seed=seed * 100 + fi)
            done += 1
            if progress is not None:
                progress(done, total, f"{film.name}: {s.name}")
    h = hrf_at_frames(tr, frames_per_tr)
    peak_tr = float(np.argmax(h) / frames_per_tr)
    meta = {"source": "simulate_movies", "held_out": held, "delay_tr": int(round(peak_tr)), "hrf_peak_s": peak_tr * tr,
            "settings": {"n_subjects": n_subjects, "n_films": n_films, "n_trs": lengths, "tr": tr,
                         "frames_per_tr": frames_per_tr, "size": size, "seed": seed, "motion": motion},
            "shots": {f.name: f.shots for f in films},
            "subjects": [s.config() for s in subs]}
    roi_names = subs[0].roi_names
    stacked = {f.name: np.stack([per_sub[s.name][f.name][0] for s in subs]) for f in films}
    snr = None
    if n_subjects >= 2:
        snr, _ = snr_selection(np.concatenate([stacked[f.name] for f in films], axis=1))
    out = {}
    group_films = {}
    for f in films:
        ys = stacked[f.name]
        ts = np.stack([per_sub[s.name][f.name][1] for s in subs])
        m = ys.mean(0)
        sd = m.std(0)
        sd[sd == 0] = 1
        group_films[f.name] = {"frames": f.chunks, "responses": (m - m.mean(0)) / sd,
                               "truth": ts.mean(0) / sd, "split": splits[f.name]}
    out["group"] = MovieDataset(group_films, xyz, tr, "group", roi, roi_names, snr, meta)
    for s in subs:
        sf = {f.name: {"frames": f.chunks, "responses": per_sub[s.name][f.name][0],
                       "truth": per_sub[s.name][f.name][1], "split": splits[f.name]} for f in films}
        out[s.name] = MovieDataset(sf, xyz, tr, s.name, roi, roi_names, snr, {**meta, "subject": s.config()})
    if out_dir is not None:
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        for name, ds in out.items():
            ds.save(out_dir / f"{name}.h5")
    return out
