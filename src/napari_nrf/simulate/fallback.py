"""A small analytic mini-simulator: photograph crops and five image statistics mapped
onto occipito-temporal voxels (the demo's fallback, and a generic image set for benchmarks).

Independent of the full simulator (:mod:`napari_nrf.simulate.subjects`): no stimulus
generator and no anatomy model, only scikit-image's photographs and closed-form maps.
"""

from __future__ import annotations

import numpy as np


def photo_crops(n: int, seed: int = 0, size: int = 128) -> np.ndarray:
    """``n`` deterministic crops of scikit-image's photographs, (n, size, size, 3) uint8.

    Random square crops (a third to all of the shorter side), flips and resizes of the
    astronaut, coffee, chelsea, rocket, motorcycle and camera images: a generic image set
    for benchmarks and a fallback library that needs no simulator.
    """
    from PIL import Image
    from skimage import data

    srcs = [data.astronaut(), data.coffee(), data.chelsea(), data.rocket(), data.stereo_motorcycle()[0],
            np.repeat(data.camera()[..., None], 3, 2)]
    out = np.empty((n, size, size, 3), np.uint8)
    for i in range(n):
        rng = np.random.default_rng([seed, i])
        a = srcs[int(rng.integers(len(srcs)))]
        h, w = a.shape[:2]
        c = int(rng.integers(min(h, w) // 3, min(h, w) + 1))
        y, x = int(rng.integers(0, h - c + 1)), int(rng.integers(0, w - c + 1))
        crop = a[y:y + c, x:x + c]
        if rng.random() < 0.5:
            crop = crop[:, ::-1]
        out[i] = np.asarray(Image.fromarray(np.ascontiguousarray(crop)).resize((size, size), Image.BILINEAR))
    return out


def _image_descriptors(images: np.ndarray) -> np.ndarray:
    """(N, 5) float64 z-scored image statistics: contrast of the left and right halves,
    colour saturation, edge energy, centre-minus-surround luminance."""
    x = images.astype(np.float64) / 255.0
    lum = x.mean(-1)
    w = lum.shape[2]
    left, right = lum[:, :, : w // 2].std((1, 2)), lum[:, :, w // 2:].std((1, 2))
    sat = (x.max(-1) - x.min(-1)).mean((1, 2))
    edges = np.abs(np.diff(lum, axis=1)).mean((1, 2)) + np.abs(np.diff(lum, axis=2)).mean((1, 2))
    c = slice(w // 4, 3 * w // 4)
    centre = lum[:, c, c].mean((1, 2)) - lum.mean((1, 2))
    d = np.stack([left, right, sat, edges, centre], 1)
    return (d - d.mean(0)) / (d.std(0) + 1e-9)


def fallback_subjects(n_subjects: int = 2, n_images: int = 400, seed: int = 0, max_voxels: int = 6000,
                      noise: float = 0.5) -> list:
    """Small analytic virtual subjects (the demo's fallback when :func:`napari_nrf.simulate.simulate` cannot run).

    Stimuli: :func:`photo_crops`. Voxels: the occipito-temporal brain (y < -40 mm,
    z < 30 mm) of a 3 mm grid shifted by a sub-voxel offset per subject. Truth: each voxel
    weighs five image statistics (:func:`_image_descriptors`) with smooth spatial maps:
    contralateral half-field contrast (left hemisphere x < 0 sees the right half),
    colour in ventral cortex (z < -10), edges laterally (|x| > 35), centre-surround
    medially. Responses: truth + Gaussian noise (SNR 1/``noise``), z-scored per voxel.
    Split: the last 10% of images validate.
    """
    from napari_nrf import space
    from napari_nrf.data.responseset import ResponseSet

    sets = []
    for s in range(n_subjects):
        rng = np.random.default_rng([seed, s])
        g = space.Grid.mni(3.0)
        g = space.Grid(g.shape, g.origin + rng.uniform(-1.5, 1.5, 3), g.zooms)
        xyz = g.coords(space.brain_mask(space.Grid.mni(3.0)))
        xyz = xyz[(xyz[:, 1] < -40) & (xyz[:, 2] < 30)]
        if len(xyz) > max_voxels:
            xyz = xyz[np.sort(rng.choice(len(xyz), max_voxels, replace=False))]
        x, y, z = xyz.T.astype(np.float64)
        sig = lambda t: 1 / (1 + np.exp(-t))  # noqa: E731
        occ = sig((-70 - y) / 6)  # occipital pole
        wmap = np.stack([
            occ * sig(x / 4),                 # left-half contrast -> right hemisphere
            occ * sig(-x / 4),                # right-half contrast -> left hemisphere
            sig((-10 - z) / 5) * (1 - occ),   # colour: ventral
            sig((np.abs(x) - 35) / 5),        # edges: lateral
            sig((15 - np.abs(x)) / 5) * 0.7,  # centre-surround: medial
        ], 1)
        images = photo_crops(n_images, seed=seed * 1000 + s)
        truth = _image_descriptors(images) @ wmap.T
        resp = truth + noise * rng.standard_normal(truth.shape)
        resp = (resp - resp.mean(0)) / (resp.std(0) + 1e-9)
        tz = (truth - truth.mean(0)) / (truth.std(0) + 1e-9)
        split = np.zeros(n_images, np.uint8)
        split[int(n_images * 0.9):] = 1
        sets.append(ResponseSet(responses=resp.astype(np.float32), coords=xyz.astype(np.float32), split=split,
                                images=images, truth=tz.astype(np.float32), subject=f"sub-{s + 1:02d}",
                                meta={"source": "napari_nrf.simulate.fallback.fallback_subjects"}))
    return sets
