"""Python in five lines: an image in, a ``nibabel.Nifti1Image`` in MNI space out.

>>> import napari_nrf
>>> model = napari_nrf.load_model("demo")             # or a .safetensors bundle
>>> img = napari_nrf.predict(model, "cat.png")        # nibabel.Nifti1Image, 2 mm MNI152
>>> img.to_filename("cat_response.nii.gz")            # any NIfTI tool reads it
>>> napari_nrf.save(img, "out/space-MNI152NLin6Asym_res-2mm_desc-cat_response.nii.gz")  # + JSON sidecar

The image's header carries the MNI sform/qform (code 4); ``img.extra["sidecar"]`` holds
the same JSON sidecar the CLI writes (:mod:`napari_nrf.volume_meta`), which :func:`save`
writes beside the file together with ``dataset_description.json``.
"""

from __future__ import annotations

import os
import weakref
from pathlib import Path

# The bundle each model of load_model came from (the sidecars' Sources), without adding
# an attribute to the model.
_BUNDLE_PATHS: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


def load_model(model="demo", device=None):
    """A model from a ``.safetensors`` bundle path, or ``"demo"`` for the shipped demo NRF.
    ``device``: "cpu", "cuda", "cuda:1" (default: cuda when available)."""
    from napari_nrf.errors import choose_device
    from napari_nrf.models import load_model as _load

    if isinstance(model, str) and model == "demo":
        from napari_nrf.demo import demo_model_path

        model = demo_model_path()
    m = _load(model, device=choose_device(device))
    _BUNDLE_PATHS[m] = Path(model)
    return m


def predict(model, image, resolution: float = 2.0, mask: str = "data", subject: str | None = None,
            device=None):
    """The predicted response volume of ``image`` as a ``nibabel.Nifti1Image``.

    Parameters
    ----------
    model : a loaded model, a bundle path or "demo"
    image : an image file path, a PIL image or an (H, W, 3) uint8 array; a list gives a list
    resolution : grid spacing in mm of the MNI grid (FSL's MNI152 box; 2 mm: 91 x 109 x 91)
    mask : "data" (where the model has data, default), "brain", "gm", "none" or a NIfTI path;
        float32 NaN outside
    subject : for voxel-indexed models with several subjects
    """
    from napari_nrf import space
    from napari_nrf.query import query_volumes
    from napari_nrf.volume_meta import description, volume_sidecar

    if isinstance(model, (str, os.PathLike)):
        model = load_model(model, device)
    many = isinstance(image, (list, tuple))
    images = list(image) if many else [image]
    if mask == "data" and not model.subjects:
        mask = "brain"  # no training voxels recorded: the whole brain (extrapolation)
    vols, grid = query_volumes(model, images, resolution=resolution, mask=None if mask == "none" else mask,
                               device=device, subject=subject)
    out = []
    for im, vol in zip(images, vols):
        src = str(im) if isinstance(im, (str, Path)) else None
        side = volume_sidecar("response", grid, model=model, model_path=_BUNDLE_PATHS.get(model),
                              image=src, mask=mask, outside="NaN")
        nii = space.to_nifti(vol, grid, description=description(side), intent=space.INTENT_ESTIMATE,
                             intent_name="nrf response")
        nii.extra["sidecar"] = side
        out.append(nii)
    return out if many else out[0]


def save(img, path) -> Path:
    """Write ``img`` (from :func:`predict`) to ``path`` with its JSON sidecar beside it and
    ``dataset_description.json`` in its folder. Returns the path."""
    from napari_nrf import space
    from napari_nrf.bids import write_dataset_description
    from napari_nrf.volume_meta import write_volume

    vol, grid = space.load_nifti(img)
    side = dict(img.extra.get("sidecar") or {"kind": "response"})
    out = write_volume(path, vol, grid, side)
    write_dataset_description(Path(path).parent)
    return out
