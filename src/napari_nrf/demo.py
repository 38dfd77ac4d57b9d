"""The embedded demo: ``napari-nrf demo``.

Opens napari with the plugin's widgets docked, the MNI152 template, a small NRF model
trained on virtual subjects with the offline EfficientNet-Lite0 backbone, a sample image
dropped and its response volume rendered, and the virtual subjects' stimuli as the image
library of the region explorer. Works offline.

The demo model is looked up in this order: the bundle shipped in the package
(``napari_nrf/assets/demo_nrf.safetensors``, made reproducibly by
``benchmarks/make_demo_model.py``), the user cache (``<cache>/demo_nrf-v1.safetensors``),
else it is trained once on virtual subjects (with a progress bar) and cached.

This module is Qt-free library code (model lookup, training, library, sample); the viewer
side (``build_demo``, ``run_demo``) lives in :mod:`napari_nrf.widgets.demo_app`.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

DEMO_VERSION = 1
DEMO_SEED = 0
DEMO_SUBJECTS = 2
DEMO_IMAGES = 300           # stimuli per virtual subject used to train the shipped demo model
DEMO_LIBRARY = 240          # stimuli in the region explorer's library
SHIPPED_NAME = "demo_nrf.safetensors"
SAMPLE_NAME = "astronaut.png"
TINY_ENV = ("NRF_EXAMPLE_TINY", "NAPARI_NRF_DEMO_TINY")


def _tiny() -> bool:
    return any(os.environ.get(k, "") not in ("", "0") for k in TINY_ENV)


def shipped_model_path() -> Path:
    """Path of the demo bundle shipped in the package (may not exist)."""
    return Path(__file__).resolve().parent / "assets" / SHIPPED_NAME


def cached_model_path() -> Path:
    """Path of the demo bundle trained on this machine, in the user cache folder."""
    from napari_nrf.features import default_cache_dir

    return default_cache_dir() / f"demo_nrf-v{DEMO_VERSION}.safetensors"


def demo_model_path(train: bool = True, progress=None) -> Path:
    """The demo model bundle: shipped, else cached, else trained now (when ``train``)."""
    for p in (shipped_model_path(), cached_model_path()):
        if p.is_file():
            return p
    if not train:
        raise FileNotFoundError("no demo model is shipped or cached; run `napari-nrf demo` once to train it")
    return train_demo_model(cached_model_path(), progress=progress)


def load_demo_model(device="cpu", progress=None):
    """``(model, path)`` of the demo NRF model (see :func:`demo_model_path`)."""
    from napari_nrf.models import load_model

    path = demo_model_path(progress=progress)
    return load_model(path, device=device), path


def train_demo_model(out, n_subjects: int = DEMO_SUBJECTS, n_images: int = DEMO_IMAGES, epochs: int = 10,
                     seed: int = DEMO_SEED, max_voxels: int = 6000, progress=None, **model_overrides) -> Path:
    """Train the small demo NRF on virtual subjects and save it to ``out`` (atomic).

    Virtual subjects (:func:`napari_nrf.simulate.simulate`) with ``n_images`` stimuli and at
    most ``max_voxels`` voxels each; the model is :func:`napari_nrf.models.nrf.build_nrf`'s
    "demo" preset with 8 channels per token and an MLP of 4 x 128 (a 3 MB bundle) on
    efficientnet-lite0,
    trained with :func:`napari_nrf.train.fit` (frozen backbone, cached features).
    ``progress(stage, done, total)`` reports the stages "simulate" and "train"; without it
    tqdm bars are shown on the console.
    """
    from tqdm.auto import tqdm

    from napari_nrf import train
    from napari_nrf.features import FeatureCache
    from napari_nrf.models.nrf import build_nrf
    try:
        from napari_nrf.simulate import simulate
    except ImportError:  # the simulator is not installed: the small analytic fallback below
        simulate = None

    out = Path(out)
    bars = {}

    def report(stage):
        def cb(done, total, *_):  # the simulator also passes a message
            if progress is not None:
                progress(stage, done, total)
                return
            if stage not in bars:
                bars[stage] = tqdm(total=total, desc=f"demo model: {stage}", unit="step" if stage == "train" else "")
            b = bars[stage]
            if total and b.total != total:
                b.total = total
            b.n = done
            b.refresh()
        return cb

    try:
        if simulate is not None:
            sets = simulate(n_subjects=n_subjects, n_images=n_images, seed=seed, max_voxels=max_voxels,
                            progress=report("simulate"))
            data = f"{n_subjects} virtual subjects x {n_images} stimuli (napari_nrf.simulate, seed {seed})"
        else:
            sets = fallback_subjects(n_subjects, n_images, seed=seed, max_voxels=max_voxels)
            data = (f"{n_subjects} fallback virtual subjects x {n_images} photograph crops "
                    f"(napari_nrf.demo.fallback_subjects, seed {seed})")
        # small enough for a < 5 MB bundle and a whole-brain 2 mm volume in about 1 s on 2 CPU cores
        cfg = {"downsample_dim": 8, "width": 128, "depth": 4}
        cfg.update(model_overrides)
        model = build_nrf("efficientnet-lite0", "demo", seed=seed, **cfg)
        train.fit(model, sets, None, epochs=epochs, seed=seed, feature_cache=FeatureCache(),
                         progress=report("train"))
    finally:
        for b in bars.values():
            b.close()
    model.provenance = {**(model.provenance or {}),
                        "data": data,
                        "made_by": "napari_nrf.demo.train_demo_model", "epochs": epochs}
    out.parent.mkdir(parents=True, exist_ok=True)
    model.save(out)
    return out


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
    """Small analytic virtual subjects for the demo when :mod:`napari_nrf.simulate` is absent.

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
                                meta={"source": "napari_nrf.demo.fallback_subjects"}))
    return sets


def demo_library(n: int | None = None):
    """The virtual subjects' stimuli as an :class:`~napari_nrf.widgets._library.ImageLibrary`.

    Falls back to :func:`photo_crops` when the simulator's stimuli are not available.
    """
    from napari_nrf.widgets._library import ImageLibrary

    n = n or (12 if _tiny() else DEMO_LIBRARY)
    try:
        from napari_nrf.simulate.stimuli import make_stimuli

        images, cats = make_stimuli(n, DEMO_SEED, return_labels=True)
    except Exception:  # the simulator is optional for the viewer: photographs will do
        return ImageLibrary(photo_crops(n, DEMO_SEED), names=[f"photo {i}" for i in range(n)],
                            label="photograph crops")
    names = [f"{c} {i}" for i, c in enumerate(cats)]
    return ImageLibrary(images, names=names, label="virtual subjects' stimuli")


def sample_image_path() -> Path:
    """A sample photograph (scikit-image's astronaut) as a PNG file in the cache folder."""
    from PIL import Image
    from skimage import data

    from napari_nrf.features import default_cache_dir

    p = default_cache_dir() / "demo" / SAMPLE_NAME
    if not p.is_file():
        p.parent.mkdir(parents=True, exist_ok=True)
        tmp = p.with_name(f".{p.name}.tmp{os.getpid()}.png")
        Image.fromarray(data.astronaut()).save(tmp)
        os.replace(tmp, p)
    return p


def demo_sample_volume(resolution: float = 2.0):
    """``(volume (X, Y, Z) float32, grid, name)``: the demo model's response to the sample image, where
    the model has data (its training voxels; NaN elsewhere, where it would only extrapolate)."""
    from napari_nrf import space
    from napari_nrf.features import FeatureCache
    from napari_nrf.query import QueryEngine

    model, _ = load_demo_model()
    img = sample_image_path()
    feats = model.encode_images([str(img)], cache=FeatureCache())
    grid = space.Grid.mni(resolution)
    vol = QueryEngine(model, device="cpu").volume(feats, grid, mask="data" if model.subjects else "brain")[0]
    return vol, grid, img.stem


def warm_up(model, resolution: float = 2.0):
    """Prepare what the first render needs in a background thread while napari opens.

    The brain mask and template (read from the disk cache after the first run) and the
    sample image's features through ``encode_images``, which builds the backbone only when
    they are not cached yet (first run). Returns the thread.
    """
    import threading

    from napari_nrf import space
    from napari_nrf.features import FeatureCache

    def work():
        grid = space.Grid.mni(resolution)
        space.brain_mask(grid)
        space.template(grid)
        try:
            cache = FeatureCache()
        except OSError:  # unwritable cache folder: the render computes the features
            return
        model.encode_images([str(sample_image_path())], cache=cache)

    th = threading.Thread(target=work, name="napari-nrf-demo-warm-up", daemon=True)
    th.start()
    return th
