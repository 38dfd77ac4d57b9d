"""Image descriptors: the image half of the virtual subjects' ground truth.

The noiseless response of a virtual subject to an image depends on the image only
through a :class:`Descriptors` record computed here, once per image:

* ``energy`` (B, 12, 16, 16) float32: local contrast energy of a log-Gabor pyramid
  (3 spatial frequencies x 4 orientations), pooled on a 16 x 16 grid over the image.
  Early visual areas read it through population receptive fields.
* ``scores`` (B, 13) float32 over :data:`SCORES`: five *content* scores (face, body,
  scene, object, text; in [0, 1]) recorded by the stimulus generator while composing
  the image (or estimated from pixels for other images), and eight standardised pixel
  statistics computed with hand-made operators (layout, rectilinearity, spread of
  contrast, centre-surround energy, colourfulness, coarse/fine energy shares, overall
  contrast). None of them is a feature of any backbone of napari-nrf, so no model reads
  the truth straight off its features.

Images of any size are resized to ``DESCRIPTOR_SIZE`` (64) pixels first, and the image
is taken to span ``FOV_DEG`` (8.4) degrees of visual angle, as NSD's stimuli do.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np

from napari_nrf.errors import NapariNRFError

DESCRIPTOR_SIZE = 64
POOL = 16  # pooled energy grid (POOL x POOL cells of 4 x 4 px)
FOV_DEG = 8.4
N_ORI = 4
SF_CYCLES = (4.0, 8.0, 16.0)  # log-Gabor centre frequencies, cycles per image
N_CHANNELS = N_ORI * len(SF_CYCLES)
CONTENT = ("face", "body", "scene", "object", "text")
PIXEL_STATS = ("layout", "rectilinear", "spread", "centre", "colour", "coarse", "fine", "contrast")
SCORES = CONTENT + PIXEL_STATS

# Median / interquartile range of the pixel statistics over the stimulus distribution
# (calibrated once on make_stimuli(700, seed=12345)); stats enter as (raw - centre) / scale.
_STAT_CENTRE = np.array([0.0, 0.0364, 0.9545, 0.2355, 0.1451, 0.4716, 0.1927, -1.2619], np.float32)
_STAT_SCALE = np.array([0.0596, 0.0687, 0.0654, 1.1165, 0.2424, 0.148, 0.0967, 0.9026], np.float32)
_ENERGY_SCALE = 0.028  # mean pooled energy of the stimuli -> energy ~ 1 on average


class DescriptorError(NapariNRFError):
    """Images that cannot be described (wrong shape or dtype)."""


@dataclass
class Descriptors:
    """Per-image descriptors; index with an int array or slice to select images."""

    energy: np.ndarray  # (B, N_CHANNELS, POOL, POOL) float32, >= 0
    scores: np.ndarray  # (B, len(SCORES)) float32, standardised

    def __len__(self):
        return int(self.energy.shape[0])

    def __getitem__(self, idx):
        return Descriptors(self.energy[idx], self.scores[idx])

    @staticmethod
    def concat(items) -> "Descriptors":
        items = list(items)
        return Descriptors(np.concatenate([d.energy for d in items]), np.concatenate([d.scores for d in items]))


def _as_float_images(images) -> np.ndarray:
    a = np.asarray(images)
    if a.ndim == 3 and a.shape[-1] in (3, 4) and a.shape[0] > 4:  # a single image (H, W, C)
        a = a[None]
    if a.ndim == 3:  # (B, H, W) grey
        a = np.repeat(a[..., None], 3, axis=3)
    if a.ndim != 4 or a.shape[-1] not in (3, 4):
        raise DescriptorError(f"images must be (B, H, W, 3) uint8, got shape {a.shape}")
    a = a[..., :3]
    if a.dtype == np.uint8:
        return a.astype(np.float32) / 255.0
    a = a.astype(np.float32)
    if a.size and (a.min() < -1e-3 or a.max() > 1.001):
        raise DescriptorError("float images must be in [0, 1]; pass uint8 for 0..255")
    return a


def _to_size(x, size):
    """(B, H, W, 3) float32 -> (B, 3, size, size) torch tensor (anti-aliased bilinear)."""
    import torch
    import torch.nn.functional as F

    t = torch.from_numpy(np.ascontiguousarray(x)).permute(0, 3, 1, 2)
    if t.shape[2:] != (size, size):
        t = F.interpolate(t, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
    return t


@functools.lru_cache(maxsize=2)
def _filters(n: int):
    """(N_CHANNELS, n, n) float32 one-sided log-Gabor filters (quadrature pairs)."""
    f = np.fft.fftfreq(n) * n  # cycles per image
    fy, fx = np.meshgrid(f, f, indexing="ij")
    r = np.hypot(fx, fy)
    r[0, 0] = 1.0
    theta = np.arctan2(fy, fx)
    out = []
    for sf in SF_CYCLES:
        radial = np.exp(-(np.log(r / sf) ** 2) / (2 * np.log(1.6) ** 2))
        radial[0, 0] = 0.0
        for k in range(N_ORI):
            th0 = k * np.pi / N_ORI  # grating orientation of the *frequency* vector
            d = np.angle(np.exp(1j * (theta - th0)))
            ang = np.exp(-(d ** 2) / (2 * (np.pi / N_ORI / 1.2) ** 2))  # one side only -> analytic
            out.append(2 * radial * ang)
    return np.stack(out).astype(np.float32)


def _raw(images, chunk: int = 128):
    """Unstandardised (energy (B, C, P, P), pixel statistics (B, len(PIXEL_STATS)))."""
    import torch

    x = _as_float_images(images)
    n = DESCRIPTOR_SIZE
    filt = torch.from_numpy(_filters(n))
    energies, stats = [], []
    yy, xx = np.mgrid[0:POOL, 0:POOL]
    rr = np.hypot(yy - (POOL - 1) / 2, xx - (POOL - 1) / 2) / POOL
    for s in range(0, len(x), chunk):
        t = _to_size(x[s:s + chunk], n)  # (b, 3, n, n)
        lum = 0.299 * t[:, 0] + 0.587 * t[:, 1] + 0.114 * t[:, 2]  # (b, n, n)
        c = lum - lum.mean(dim=(1, 2), keepdim=True)
        q = torch.view_as_real(torch.fft.ifft2(torch.fft.fft2(c)[:, None] * filt[None]))
        mag = torch.sqrt((q * q).sum(-1))  # (b, C, n, n) quadrature-pair energy
        b = mag.shape[0]
        e = mag.reshape(b, N_CHANNELS, POOL, n // POOL, POOL, n // POOL).mean(dim=(3, 5)).numpy()
        per = e.reshape(b, len(SF_CYCLES), N_ORI, POOL, POOL).mean(axis=(3, 4))  # (b, SF, ORI)
        tot = per.sum(axis=(1, 2)) + 1e-4
        # Rectilinearity: cardinal over oblique energy at the two coarser scales.
        card = per[:, :2, [0, 2]].sum(axis=(1, 2))
        obl = per[:, :2, [1, 3]].sum(axis=(1, 2))
        emap = e.sum(1) + 1e-6  # (b, P, P)
        p = emap.reshape(b, -1) / emap.reshape(b, -1).sum(1, keepdims=True)
        lum_np = lum.numpy()
        sat = (t.max(1).values - t.min(1).values).mean(dim=(1, 2)).numpy()
        stats.append(np.stack([
            lum_np[:, : n // 2].mean((1, 2)) - lum_np[:, n // 2:].mean((1, 2)),  # layout: bright above
            np.log((card + 1e-4) / (obl + 1e-4)),  # rectilinear
            -(p * np.log(p)).sum(1) / np.log(p.shape[1]),  # spread of contrast over the image
            np.log((emap * (rr < 0.25)).sum((1, 2)) / (rr < 0.25).sum()
                   / ((emap * (rr > 0.4)).sum((1, 2)) / (rr > 0.4).sum())),  # centre vs surround
            sat,  # colourfulness
            per[:, 0].sum(1) / tot,  # coarse share
            per[:, 2].sum(1) / tot,  # fine share
            np.log(tot),  # overall contrast energy
        ], 1).astype(np.float32))
        energies.append(e.astype(np.float32))
    if not energies:
        return np.zeros((0, N_CHANNELS, POOL, POOL), np.float32), np.zeros((0, len(PIXEL_STATS)), np.float32)
    return np.concatenate(energies), np.concatenate(stats)


def estimate_content(stats: np.ndarray) -> np.ndarray:
    """A rough content vector (B, 5) for images that are not simulator stimuli.

    Only what pixels show plainly: scene-ness from contrast spread and layout, text from
    fine achromatic strokes. Face, body and object content are left at 0: pass
    ``content=`` to :func:`describe` when they are known.
    """
    z = np.asarray(stats, np.float32)
    sig = lambda v: 1 / (1 + np.exp(-v))  # noqa: E731
    out = np.zeros((len(z), 5), np.float32)
    out[:, 2] = sig(1.5 * (z[:, 2] + 0.5 * z[:, 1] + 0.5 * z[:, 0]) - 1.0)
    out[:, 4] = sig(2.0 * (z[:, 6] - z[:, 4]) - 2.0)
    return out


def describe(images, content=None, chunk: int = 128, progress=None) -> Descriptors:
    """Descriptors of ``images`` ((B, H, W, 3) uint8, or float in [0, 1]).

    ``content`` (B, 5) float in [0, 1] over (face, body, scene, object, text): what the
    images show, as :class:`~napari_nrf.simulate.stimuli.StimulusSet` records it for
    simulator stimuli. Without it, :func:`estimate_content` guesses from pixels.
    Deterministic and independent of batching. ``progress``: ``progress(done, total)``.
    """
    x = _as_float_images(images)
    if content is not None:
        content = np.asarray(content, np.float32).reshape(len(x), -1)
        if content.shape[1] != 5:
            raise DescriptorError(f"content must be (B, 5) over face/body/scene/object/text, got {content.shape}")
    outs = []
    for s in range(0, len(x), 512):
        e, st = _raw(x[s:s + 512], chunk=chunk)
        z = (st - _STAT_CENTRE) / _STAT_SCALE
        c = estimate_content(z) if content is None else content[s:s + 512]
        outs.append(Descriptors(e / _ENERGY_SCALE, np.concatenate([c, z], 1).astype(np.float32)))
        if progress is not None:
            progress(min(s + 512, len(x)), len(x))
    if not outs:
        return Descriptors(np.zeros((0, N_CHANNELS, POOL, POOL), np.float32), np.zeros((0, len(SCORES)), np.float32))
    return Descriptors.concat(outs)
