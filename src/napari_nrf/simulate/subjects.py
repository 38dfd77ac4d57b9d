"""Virtual subjects: a known, continuous image-to-fMRI response field in MNI space.

The noiseless response of subject ``s`` to image ``i`` at MNI point ``x`` (mm) is

    R(i, x) = e(x) * (sum_{c,p} pref_c(x) G_p(x) E_{i,c,p}) ** n(x) + sum_k H_k(x) S_{i,k}

* ``E`` (12 channels x 16 x 16) is the image's local contrast energy and ``S`` its
  content/pixel scores (:mod:`.descriptors`);
* ``G_p(x)`` is a Gaussian population receptive field over the 16 x 16 cells, centred
  by smooth eccentricity / polar-angle maps on the contralateral visual field, its size
  growing with eccentricity and along the hierarchy (V1 < V2 < V3 < hV4 < ...);
* ``pref_c(x)`` (orientation/spatial-frequency preference), ``n(x)`` (compressive
  exponent), ``e(x)`` (early weight) and ``H(x)`` (category/layout tuning) mix the areas'
  parameters with their soft memberships (:mod:`.anatomy`) and smooth random fields
  (a few mm long), shared in part across subjects and in part individual.

``U = (R - mu(x)) / sd(x)`` standardises R with its mean and sd over a fixed reference
set of 128 stimuli, so the signal has about unit variance everywhere. A trial beta is
``(U + sigma(x) * noise) / sqrt(1 + sigma(x)^2)`` with ``sigma = 1 / ncsnr(x)``, i.e. about
z-scored, and the truth stored with the data is ``U / sqrt(1 + sigma(x)^2)``: the
expectation of the betas, continuous in x, in the units of the responses.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from napari_nrf.errors import NapariNRFError

from .. import space
from ..data.responseset import ResponseSet
from . import anatomy
from .descriptors import FOV_DEG, N_CHANNELS, POOL, SCORES, Descriptors, describe
from .stimuli import DEFAULT_SIZE, make_stimulus_set

VERSION = 1
REF_SEED, REF_N = 987654321, 128
# Box (MNI mm) holding every visual area with margin; subject grids cover it.
VISUAL_BOX = (np.array([-72.0, -112.0, -42.0]), np.array([72.0, -28.0, 40.0]))
SHARED_WEIGHT = 0.6  # share of tuning variance common to all subjects


class SimulationError(NapariNRFError):
    """Bad simulator settings."""


@functools.lru_cache(maxsize=2)
def _reference_descriptors(size: int = DEFAULT_SIZE) -> Descriptors:
    st = make_stimulus_set(np.arange(REF_N), seed=REF_SEED, size=size)
    return describe(st.images, content=st.content)


@dataclass
class VirtualSubject:
    """One virtual subject; everything follows from ``(index, seed)`` and the settings.

    Parameters
    ----------
    index : int, 0-based subject number (subject name ``sub-{index+1:02d}``)
    seed : int, the population seed (shared tuning fields); the subject's own
        randomness is drawn from ``(seed, index)``
    resolution : voxel size in mm of its sampling grid (its origin gets a random offset)
    snr : median noise-ceiling SNR (NSD's ncsnr) of its voxels
    fine_mm : opt-in fine functional organisation: ``None`` (default) keeps the truth as
        smooth as ever (fields 3-8 mm long, almost nothing finer than 2 mm); a length in mm
        (e.g. 1.0-1.5) adds a smooth random field that short to each point's
        orientation/spatial-frequency preferences and category tuning. It is shared by all
        subjects of the population ``seed``, up to each subject's area displacement (each
        point reads the field at its position minus the membership-weighted displacement of
        the areas), like columns that move with the areas across brains.
    fine_amp : strength of that field (1.0: unit-variance logits added to the preference
        logits and 0.3 x the field added to the tuning weights)
    identical : opt-in idealised population (default False): the subject differs from the
        others of its population ``seed`` only in its grid (resolution, origin offset) and
        its noise draws. No area displacement or size change, no individual pole shift,
        eccentricity scale, gains or retinotopic jitter, and every smooth field is the
        population's (the shared part at full weight, so tuning variance stays that of the
        default 60 / 40 mix); the SNR field is shared too, so with equal ``snr`` two
        subjects have the same truth at the same MNI points.
    """

    index: int = 0
    seed: int = 0
    resolution: float = 2.0
    snr: float = 0.6
    displacement_mm: float = 2.5
    voxel_threshold: float = 0.05
    gm_threshold: float = 0.3
    fine_mm: float | None = None
    fine_amp: float = 1.0
    identical: bool = False
    _cache: dict = field(default_factory=dict, repr=False)

    def __post_init__(self):
        if not (0.5 <= self.resolution <= 8):
            raise SimulationError(f"resolution must be 0.5..8 mm, got {self.resolution}")
        if self.snr <= 0:
            raise SimulationError(f"snr must be > 0, got {self.snr}")
        rng = np.random.default_rng([int(self.seed), int(self.index), 11])
        if self.fine_mm is not None and not (0.2 <= self.fine_mm <= 20):
            raise SimulationError(f"fine_mm must be 0.2..20 mm or None, got {self.fine_mm}")
        self._blobs, disp = [], []
        for name, hemi, c, area in anatomy.blobs():
            d = rng.normal(0, self.displacement_mm, 3)
            r = area.radius * float(np.exp(rng.normal(0, 0.1)))
            self._blobs.append((name, hemi, c + d, r, area))
            disp.append(d)
        self._disp = np.array(disp, np.float64)  # (A, 3) area displacements (mm)
        self._pole_shift = rng.normal(0, 2.0, 3)
        self._ecc_scale = float(np.exp(rng.normal(0, 0.1)))
        self._offset = rng.uniform(0, self.resolution, 3)
        self._gain_scale = np.exp(rng.normal(0, 0.15, len(self._blobs))).astype(np.float32)
        self._roi_names = anatomy.roi_names()
        name_to_label = {v: k for k, v in self._roi_names.items()}
        self._blob_label = np.array([name_to_label[f"{n}-{h}"] for n, h, *_ in self._blobs])
        self._tuning = np.stack([anatomy.tuning_vector(a) for *_, a in self._blobs])  # (A, K)
        self._early = np.array([a.early for *_, a in self._blobs], np.float32)
        self._size = np.array([a.size for *_, a in self._blobs], np.float32)
        self._expo = np.array([a.exponent for *_, a in self._blobs], np.float32)
        s, i = int(self.seed), int(self.index)
        nk = len(SCORES)
        # Smooth fields: shared across subjects (population seed) and individual.
        self._f_pref = (anatomy.SmoothField(N_CHANNELS, 3.0, [s, 101]), anatomy.SmoothField(N_CHANNELS, 3.0, [s, i, 101]))
        self._f_tune = (anatomy.SmoothField(nk, 5.0, [s, 102]), anatomy.SmoothField(nk, 5.0, [s, i, 102]))
        self._f_gain = (anatomy.SmoothField(1, 6.0, [s, 103]), anatomy.SmoothField(1, 6.0, [s, i, 103]))
        self._f_retino = anatomy.SmoothField(2, 8.0, [s, i, 104])
        self._f_snr = anatomy.SmoothField(1, 8.0, [s, i, 105])
        # Opt-in fine field, population-shared (no subject index in its seed).
        self._f_fine = (None if self.fine_mm is None else
                        anatomy.SmoothField(N_CHANNELS + nk, float(self.fine_mm), [s, 106]))
        if self.identical:
            # Idealised population: overwrite every individual draw (after they were made, so
            # the grid offset stays the one the default subject of this index gets).
            self._blobs = [(name, hemi, c, area.radius, area) for name, hemi, c, area in anatomy.blobs()]
            self._disp = np.zeros_like(self._disp)
            self._pole_shift = np.zeros(3)
            self._ecc_scale = 1.0
            self._gain_scale = np.ones(len(self._blobs), np.float32)
            self._f_retino = anatomy.SmoothField(2, 8.0, [s, 104])
            self._f_snr = anatomy.SmoothField(1, 8.0, [s, 105])

    # ---- names -------------------------------------------------------------------------
    @property
    def name(self) -> str:
        return f"sub-{self.index + 1:02d}"

    @property
    def roi_names(self) -> dict:
        return dict(self._roi_names)

    def config(self) -> dict:
        """JSON-able settings that rebuild this subject with :meth:`from_config`."""
        cfg = {"index": self.index, "seed": self.seed, "resolution": self.resolution, "snr": self.snr,
                "displacement_mm": self.displacement_mm, "voxel_threshold": self.voxel_threshold,
                "gm_threshold": self.gm_threshold, "version": VERSION}
        if self.fine_mm is not None:  # only when set: default configs stay as they were
            cfg.update(fine_mm=float(self.fine_mm), fine_amp=float(self.fine_amp))
        if self.identical:
            cfg["identical"] = True
        return cfg

    @classmethod
    def from_config(cls, cfg: dict) -> "VirtualSubject":
        cfg = {k: v for k, v in cfg.items() if k != "version"}
        return cls(**cfg)

    # ---- anatomy -----------------------------------------------------------------------
    def membership(self, xyz) -> np.ndarray:
        """Soft membership (N, A) float32 of points in each area blob (0..1)."""
        x = np.asarray(xyz, np.float32).reshape(-1, 3)
        c = np.array([b[2] for b in self._blobs], np.float32)
        r = np.array([b[3] for b in self._blobs], np.float32)
        d2 = ((x[:, None, :] - c[None]) ** 2).sum(-1)
        return np.exp(-d2 / (2 * r * r)).astype(np.float32)

    def roi_labels(self, xyz) -> np.ndarray:
        """ROI label (N,) int32 of points: the area blob of highest membership if >= 0.3."""
        m = self.membership(xyz)
        lab = self._blob_label[m.argmax(1)].astype(np.int32)
        lab[m.max(1) < 0.3] = 0
        return lab

    @property
    def grid(self) -> space.Grid:
        """This subject's voxel grid (``resolution`` mm, own origin offset) over the visual box."""
        g = space.Grid.from_extent(self.resolution, *VISUAL_BOX)
        return space.Grid(g.shape, g.origin + self._offset, g.zooms)

    def voxel_mask(self) -> np.ndarray:
        """Bool mask on :attr:`grid`: grey matter (prob >= gm_threshold) near a visual area."""
        if "mask" not in self._cache:
            g = self.grid
            gm = space.gm_probability(g) >= self.gm_threshold
            xyz = g.coords(gm)
            support = self.membership(xyz).sum(1)
            keep = np.zeros(g.n_points, bool)
            flat = np.flatnonzero(gm)
            keep[flat[support >= self.voxel_threshold]] = True
            self._cache["mask"] = keep.reshape(g.shape)
            self._cache["support"] = support[support >= self.voxel_threshold]
        return self._cache["mask"]

    def voxel_coords(self, max_voxels: int | None = None, roi=None) -> np.ndarray:
        """MNI mm (V, 3) float32 of the subject's voxels.

        ``max_voxels`` keeps the voxels most inside the areas (highest summed
        membership); ``roi``: names (e.g. ``["V1", "FFA-L"]``) to keep.
        """
        mask = self.voxel_mask()
        xyz = self.grid.coords(mask)
        support = self._cache["support"]
        keep = np.ones(len(xyz), bool)
        if roi is not None:
            names = [roi] if isinstance(roi, str) else list(roi)
            lab = self.roi_labels(xyz)
            want = [k for k, v in self._roi_names.items() if v in names or v.split("-")[0] in names]
            if not want:
                raise SimulationError(f"unknown ROI names {names}; known: {sorted(set(self._roi_names.values()))}")
            keep &= np.isin(lab, want)
        idx = np.flatnonzero(keep)
        if max_voxels is not None and idx.size > max_voxels:
            idx = np.sort(idx[np.argsort(-support[idx], kind="stable")[: int(max_voxels)]])
        return xyz[idx]

    # ---- retinotopy and tuning fields -----------------------------------------------------
    def _mix(self, pair, xyz):
        a, b = pair
        if self.identical:  # the population's field alone, at the default mix's unit variance
            return a(xyz)
        return np.sqrt(SHARED_WEIGHT) * a(xyz) + np.sqrt(1 - SHARED_WEIGHT) * b(xyz)

    def prf(self, xyz, m=None):
        """pRF centre (N, 2) in degrees (x right, y up) and size sigma (N,) degrees."""
        x = np.asarray(xyz, np.float32).reshape(-1, 3)
        m = self.membership(x) if m is None else m
        pole = np.array([12.0, -102.0, 0.0], np.float32) + self._pole_shift.astype(np.float32)
        hemi = np.tanh(x[:, 0] / 2.0)
        rel = x - pole * np.array([1, 1, 1], np.float32)
        rel[:, 0] = np.abs(x[:, 0]) - pole[0]  # mirror: both hemispheres share the map
        jit = self._f_retino(x)
        d = np.linalg.norm(rel, axis=1)
        ecc = (0.2 + self._ecc_scale * (np.exp(d / 15.0) - 1.0)) * np.exp(0.15 * jit[:, 0])
        theta = (np.pi / 2) * np.tanh((x[:, 2] - pole[2]) / 10.0 + 0.2 * jit[:, 1])
        vx = -hemi * ecc * np.cos(theta)  # contralateral hemifield
        vy = -ecc * np.sin(theta)  # above the calcarine -> lower field
        w = m + 1e-3
        size_mult = (w * self._size).sum(1) / w.sum(1)
        sigma = np.maximum(0.25, size_mult * (0.12 + 0.12 * ecc))
        return np.stack([vx, vy], 1).astype(np.float32), sigma.astype(np.float32)

    def ncsnr(self, xyz) -> np.ndarray:
        """Configured noise-ceiling SNR (N,) of points (NSD's ncsnr)."""
        return (self.snr * np.exp(0.3 * self._f_snr(xyz)[:, 0])).astype(np.float32)

    def _fine(self, x, m):
        """The shared fine field (N, C + K) read at ``x`` minus the local area displacement."""
        if self._f_fine is None:
            return None
        w = m.astype(np.float64) + 1e-6
        shift = (w @ self._disp) / w.sum(1, keepdims=True)
        return self._f_fine(x.astype(np.float64) - shift)

    def _point_params(self, xyz):
        x = np.asarray(xyz, np.float32).reshape(-1, 3)
        m = self.membership(x)
        centre, sigma = self.prf(x, m)
        gain = np.exp(0.25 * self._mix(self._f_gain, x)[:, 0])
        mg = m * self._gain_scale[None]
        early = (mg * self._early).sum(1) * gain
        w = m + 1e-3
        expo = (w * self._expo).sum(1) / w.sum(1)
        prefs = self._mix(self._f_pref, x)
        fine = self._fine(x, m)
        if fine is not None:
            prefs = prefs + self.fine_amp * fine[:, :N_CHANNELS]
        prefs = np.exp(prefs - prefs.max(1, keepdims=True))
        prefs = 0.5 / N_CHANNELS + 0.5 * prefs / prefs.sum(1, keepdims=True)
        tune = mg @ self._tuning  # (N, K)
        tune = tune * gain[:, None] + 0.1 * m.sum(1, keepdims=True).clip(0, 1) * self._mix(self._f_tune, x)
        if fine is not None:
            tune = tune + 0.3 * self.fine_amp * m.sum(1, keepdims=True).clip(0, 1) * fine[:, N_CHANNELS:]
        tune[:, SCORES.index("contrast")] += 0.05  # every visual voxel follows overall contrast a little
        return early.astype(np.float32), expo.astype(np.float32), centre, sigma, prefs.astype(np.float32), \
            tune.astype(np.float32)

    def _raw(self, descs, xyz) -> list:
        """R (B, N) float32 for each Descriptors in ``descs``, at points ``xyz``."""
        early, expo, centre, sigma, prefs, tune = self._point_params(xyz)
        cell = FOV_DEG / POOL
        g = (np.arange(POOL, dtype=np.float32) + 0.5) * cell - FOV_DEG / 2
        gy, gx = np.meshgrid(-g, g, indexing="ij")  # row 0 at the top of the image
        d2 = (gx.reshape(1, -1) - centre[:, :1]) ** 2 + (gy.reshape(1, -1) - centre[:, 1:]) ** 2
        s2 = (sigma * sigma)[:, None]
        G = np.exp(-d2 / (2 * s2)) * (cell * cell / (2 * np.pi * s2))  # (N, P*P): ~1 inside the image
        W = (prefs[:, :, None] * G[:, None, :]).reshape(len(G), -1).astype(np.float32)  # (N, C*P*P)
        out = []
        for desc in descs:
            drive = desc.energy.reshape(len(desc), -1) @ W.T  # (B, N)
            drive = np.power(np.maximum(drive, 0) + 1e-3, expo[None]) * early[None]
            out.append((drive + desc.scores @ tune.T).astype(np.float32))
        return out

    def truth(self, stimuli, xyz, chunk: int = 4096) -> np.ndarray:
        """Noiseless response (B, N) float32 to ``stimuli`` at MNI points ``xyz`` (N, 3) mm.

        ``stimuli``: a :class:`Descriptors` (fast; see :func:`describe`), or images
        (B, H, W, 3) uint8 (content then estimated from pixels, see
        :func:`~napari_nrf.simulate.descriptors.estimate_content`), or a
        :class:`~napari_nrf.simulate.stimuli.StimulusSet`. Any points, any resolution:
        the result is a smooth function of position, in the units of the responses.
        """
        desc = as_descriptors(stimuli)
        ref = _reference_descriptors()
        xyz = np.asarray(xyz, np.float32).reshape(-1, 3)
        out = np.empty((len(desc), len(xyz)), np.float32)
        for s in range(0, len(xyz), chunk):
            p = xyz[s:s + chunk]
            r_ref, r = self._raw([ref, desc], p)
            mu, sd = r_ref.mean(0), r_ref.std(0) + 1e-6
            sig = 1.0 / self.ncsnr(p)
            out[:, s:s + chunk] = (r - mu) / (sd * np.sqrt(1 + sig * sig))
        return out


def as_descriptors(stimuli) -> Descriptors:
    from .stimuli import StimulusSet

    if isinstance(stimuli, Descriptors):
        return stimuli
    if isinstance(stimuli, StimulusSet):
        return describe(stimuli.images, content=stimuli.content)
    return describe(stimuli)


def noise_ceiling(trials: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """NSD's noise ceiling from repeated trials (n_images, n_reps, V).

    Betas are z-scored per voxel over all trials (as NSD z-scores each session), the
    noise sd is ``sqrt(mean over images of the across-repeat variance)``,
    ``ncsnr = sqrt(max(0, 1 - noise_sd^2)) / noise_sd`` and, for responses averaged over
    ``n`` repeats, ``NC = 100 * ncsnr^2 / (ncsnr^2 + 1 / n)`` percent.
    Returns ``(nc (V,), ncsnr (V,))`` float32.
    """
    t = np.asarray(trials, np.float32)
    if t.ndim != 3 or t.shape[1] < 2:
        raise SimulationError(f"trials must be (images, repeats >= 2, voxels), got {t.shape}")
    flat = t.reshape(-1, t.shape[2])
    z = (t - flat.mean(0)) / (flat.std(0) + 1e-8)
    nv = z.var(axis=1, ddof=1).mean(0)
    ncsnr = np.sqrt(np.maximum(0, 1 - nv)) / np.sqrt(nv)
    n = t.shape[1]
    nc = 100 * ncsnr ** 2 / (ncsnr ** 2 + 1.0 / n)
    return nc.astype(np.float32), ncsnr.astype(np.float32)


def make_subjects(n_subjects: int = 4, seed: int = 0, resolution=None, snr=None, fine_mm: float | None = None,
                  fine_amp: float = 1.0, identical: bool = False) -> list[VirtualSubject]:
    """``n_subjects`` virtual subjects of the population ``seed``.

    ``resolution``: one value or a sequence cycled over subjects (default 2.0, 1.8 mm
    alternately). ``snr``: one value or a sequence (default: median ncsnr drawn
    between 0.45 and 0.8 per subject). ``fine_mm`` / ``fine_amp``: opt-in shared
    sub-2 mm structure (see :class:`VirtualSubject`; default None: none).
    ``identical``: opt-in idealised population (see :class:`VirtualSubject`): subjects
    differ only in grid and noise draws; with ``snr=None`` all get the first subject's
    drawn SNR, so their truths agree at every MNI point.
    """
    if n_subjects < 1:
        raise SimulationError("need at least one subject")
    res = [2.0, 1.8] if resolution is None else list(np.atleast_1d(resolution))
    rng = np.random.default_rng([int(seed), 12])
    snrs = rng.uniform(0.45, 0.8, n_subjects) if snr is None else np.resize(np.atleast_1d(snr), n_subjects)
    extra = {} if fine_mm is None else {"fine_mm": float(fine_mm), "fine_amp": float(fine_amp)}
    if identical:
        extra["identical"] = True
        if snr is None:
            snrs = np.full(n_subjects, snrs[0])
    return [VirtualSubject(index=i, seed=int(seed), resolution=float(res[i % len(res)]), snr=float(snrs[i]), **extra)
            for i in range(n_subjects)]


def subject_image_ids(index: int, n_images: int, n_shared: int) -> np.ndarray:
    """Stimulus ids (n_images,) of a subject: the shared ids first, then its own."""
    own = n_images - n_shared
    return np.concatenate([np.arange(n_shared), n_shared + index * own + np.arange(own)]).astype(np.int64)


def simulate(n_subjects: int = 4, n_images: int = 1000, seed: int = 0, out=None, *, n_shared: int | None = None,
             n_reps: int = 3, max_voxels: int | None = 15000, resolution=None, snr=None, roi=None,
             image_size: int = DEFAULT_SIZE, val_fraction: float = 0.1, subjects=None,
             return_trials: bool = False, workers: int | None = None, progress=None) -> list[ResponseSet]:
    """Simulate an NSD-like experiment; returns one :class:`ResponseSet` per subject.

    Every subject sees ``n_images`` stimuli, each ``n_reps`` times: ``n_shared`` of them
    (default a tenth) are the same for all subjects and form the test split (like NSD's
    shared 1000); the rest are the subject's own, ``val_fraction`` of them for
    validation. Voxels are visual-cortex grey matter on the subject's own grid (at most
    ``max_voxels``, most-inside-an-area first; ``roi`` restricts to named areas).

    Each response set holds images (n, size, size, 3) uint8, image_ids (stimulus ids of
    the set ``seed``), responses (n, V) float32 (repeat means of about-z-scored betas),
    truth (n, V) float32 (their expectation), coords (V, 3) MNI mm, roi + roi_names,
    noise_ceiling (V,) percent (NSD's formula) and the split; ``meta["simulator"]``
    rebuilds the subject (:func:`subject_from_meta`). With ``out``, writes
    ``out/sub-01.h5`` ... atomically. ``progress(done, total, message)``: optional.
    With ``return_trials``, also ``rs.meta["_trials"]`` (n, reps, V) (not saved).
    ``workers``: processes for making and describing the stimuli (default 1; 2 uses a
    spawned helper process for half of them when there are >= 1024, so call it from a
    script with an ``if __name__ == "__main__":`` guard); the data do not depend on it.
    """
    if n_images < 3:
        raise SimulationError(f"need at least 3 images per subject, got {n_images}")
    if n_reps < 2:
        raise SimulationError("need n_reps >= 2 repeats to estimate the noise ceiling")
    from napari_nrf.guards import check_free_disk, check_size

    # a stimulus is drawn in float64 RGB (24 bytes a pixel), a worker each; all are kept as uint8
    check_size(24 * int(image_size) ** 2 * max(1, workers or 1) + 3 * int(image_size) ** 2 * int(n_images),
               f"image_size {image_size} with {n_images} images")
    if out is not None:
        check_free_disk(Path(out) / "sub-01.h5", 3 * int(image_size) ** 2 * int(n_images) * max(1, n_subjects),
                        f"image_size {image_size}: {n_subjects} subject(s) x {n_images} stored stimuli")
    n_shared = max(1, n_images // 10) if n_shared is None else int(n_shared)
    if not (0 < n_shared < n_images):
        raise SimulationError(f"n_shared must be between 1 and n_images - 1, got {n_shared}")
    subjects = make_subjects(n_subjects, seed, resolution, snr) if subjects is None else list(subjects)
    stim_seed = int(seed)
    total = 2 + len(subjects) * 2
    done = 0

    def tick(msg):
        nonlocal done
        done += 1
        if progress is not None:
            progress(done, total, msg)

    ids_per = [subject_image_ids(s.index, n_images, n_shared) for s in subjects]
    all_ids = np.unique(np.concatenate(ids_per))
    st, desc = _stimuli_and_descriptors(all_ids, stim_seed, image_size, workers)
    tick("stimuli")
    tick("descriptors")
    pos = {int(i): k for k, i in enumerate(all_ids)}
    results = []
    for subj, ids in zip(subjects, ids_per):
        rows = np.array([pos[int(i)] for i in ids])
        xyz = subj.voxel_coords(max_voxels=max_voxels, roi=roi)
        truth = subj.truth(desc[rows], xyz)  # (n, V)
        tick(f"{subj.name} truth")
        rng = np.random.default_rng([int(seed), subj.index, 13])
        sig = 1.0 / subj.ncsnr(xyz)
        scale = 1.0 / np.sqrt(1 + sig * sig)
        # Noise: 80 % independent per voxel, 20 % in 8 smooth spatial patterns (mm scale 10)
        # with random weights per trial, as global/physiological fluctuations are.
        patterns = anatomy.SmoothField(8, 10.0, [int(seed), subj.index, 14])(xyz) / np.sqrt(8)  # (V, 8)
        n, v = truth.shape
        trials = np.empty((n, n_reps, v), np.float32)
        for r in range(n_reps):
            e = rng.standard_normal((n, v), dtype=np.float32) * np.float32(np.sqrt(0.8))
            e += (rng.standard_normal((n, 8), dtype=np.float32) @ patterns.T) * np.float32(np.sqrt(0.2))
            trials[:, r] = truth + e * (sig * scale)[None]
        responses = trials.mean(1)
        nc, _ = noise_ceiling(trials)
        split = np.zeros(n, np.uint8)
        split[:n_shared] = 2
        own = np.arange(n_shared, n)
        n_val = int(round(val_fraction * own.size))
        if n_val:
            split[own[-n_val:]] = 1
        meta = {"source": "napari-nrf simulate", "simulator": subj.config(), "stimulus_seed": stim_seed,
                "image_size": image_size, "n_reps": n_reps, "n_shared": n_shared,
                "categories": st.categories[rows].tolist(), "grid_origin": subj.grid.origin.tolist(),
                "grid_zooms": subj.grid.zooms.tolist()}
        rs = ResponseSet(responses=responses, coords=xyz, split=split, images=st.images[rows], image_ids=ids,
                         roi=subj.roi_labels(xyz), roi_names=subj.roi_names, noise_ceiling=nc, truth=truth,
                         subject=subj.name, meta=meta)
        if out is not None:
            rs.save(Path(out) / f"{subj.name}.h5")
        if return_trials:
            rs.meta["_trials"] = trials
        results.append(rs)
        tick(f"{subj.name} noise")
    return results


def _stim_desc(ids, seed, size, threads=None):
    if threads is not None:
        import torch

        torch.set_num_threads(threads)
    st = make_stimulus_set(ids, seed=seed, size=size)
    return st, describe(st.images, content=st.content)


def _stimuli_and_descriptors(ids, seed, size, workers=None):
    """Stimuli and descriptors of ``ids``; with 2 workers a spawned process does the
    second half. The split is at a multiple of 512 images, describe's block size, so
    the numbers are the same as in one process."""
    import os

    n = len(ids)
    if workers is None:
        workers = 1
    workers = min(int(workers), os.cpu_count() or 1)
    half = (n // 2) // 512 * 512
    if workers < 2 or half == 0:
        return _stim_desc(ids, seed, size)
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    import torch

    from .stimuli import StimulusSet

    threads = torch.get_num_threads()
    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as ex:
        fut = ex.submit(_stim_desc, ids[half:], seed, size, 1)
        torch.set_num_threads(1)  # one core each while both halves run
        try:
            st1, d1 = _stim_desc(ids[:half], seed, size)
        finally:
            torch.set_num_threads(threads)
        st2, d2 = fut.result()
    st = StimulusSet(np.concatenate([st1.images, st2.images]), np.concatenate([st1.ids, st2.ids]),
                     np.concatenate([st1.categories, st2.categories]), np.concatenate([st1.content, st2.content]),
                     int(seed))
    return st, Descriptors.concat([d1, d2])


def subject_from_meta(meta: dict) -> VirtualSubject:
    """The :class:`VirtualSubject` that produced a simulated response set (its ``meta``)."""
    cfg = meta.get("simulator")
    if not cfg:
        raise SimulationError("this response set was not made by the simulator (no meta['simulator'])")
    return VirtualSubject.from_config(cfg)


def stimulus_descriptors(rs: ResponseSet) -> Descriptors:
    """Exact descriptors (with recorded content) of a simulated response set's images."""
    st = make_stimulus_set(rs.image_ids, seed=int(rs.meta["stimulus_seed"]), size=int(rs.meta["image_size"]))
    return describe(st.images, content=st.content)


def truth_at(rs: ResponseSet, xyz, rows=None) -> np.ndarray:
    """Noiseless responses (n, N) float32 of a simulated response set's images at any MNI
    points ``xyz`` (N, 3) mm, e.g. a 1 mm grid: the ground truth to score a model queried
    at another resolution. ``rows``: image rows (default all). Uses the stimuli's recorded
    content, so at ``rs.coords`` it equals ``rs.truth``.
    """
    subj = subject_from_meta(rs.meta)
    sub = rs if rows is None else rs.subset(rows=np.asarray(rows))
    return subj.truth(stimulus_descriptors(sub), xyz)
