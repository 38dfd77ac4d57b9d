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

from napari_nrf.errors import atomic_write


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
    ``progress(done, total, stage)`` (the house's progress shape, see
    :mod:`napari_nrf.errors`) reports the stages "simulate" and "train"; without it tqdm
    bars are shown on the console.
    """
    from tqdm.auto import tqdm

    from napari_nrf import train
    from napari_nrf.features import FeatureCache
    from napari_nrf.models.nrf import build_nrf
    try:
        from napari_nrf.simulate import simulate
    except ImportError:  # the full simulator cannot run: the small analytic one (simulate/fallback.py)
        simulate = None

    out = Path(out)
    bars = {}

    def report(stage):
        def cb(done, total, *_):  # the simulator also passes a message
            if progress is not None:
                progress(done, total, stage)
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
            from napari_nrf.simulate.fallback import fallback_subjects

            sets = fallback_subjects(n_subjects, n_images, seed=seed, max_voxels=max_voxels)
            data = (f"{n_subjects} fallback virtual subjects x {n_images} photograph crops "
                    f"(napari_nrf.simulate.fallback.fallback_subjects, seed {seed})")
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


def demo_library(n: int | None = None):
    """The virtual subjects' stimuli as an :class:`~napari_nrf.library.ImageLibrary`.

    Falls back to :func:`photo_crops` when the simulator's stimuli are not available.
    """
    from napari_nrf.library import ImageLibrary

    n = n or (12 if _tiny() else DEMO_LIBRARY)
    try:
        from napari_nrf.simulate.stimuli import make_stimuli

        images, cats = make_stimuli(n, DEMO_SEED, return_labels=True)
    except Exception:  # the simulator is optional for the viewer: photographs will do
        from napari_nrf.simulate.fallback import photo_crops

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
        with atomic_write(p, None, tmp_name=f".{p.name}.tmp{os.getpid()}.png") as tmp:
            Image.fromarray(data.astronaut()).save(tmp)
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
