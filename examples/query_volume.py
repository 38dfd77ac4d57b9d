"""Predict MNI response volumes of images with a trained model and save them as NIfTI.

    .venv/bin/python examples/query_volume.py nrf.safetensors cat.png --resolution 1.5 --out volumes/
    .venv/bin/python examples/query_volume.py nrf.safetensors cat.png --resolution 1 --plot cat.png.png
    NRF_EXAMPLE_TINY=1 .venv/bin/python examples/query_volume.py     # untrained tiny NRF, 8 mm

The engine computes each image's half of the first MLP layer once, streams the grid in
chunks and writes one ``<image>.nii.gz`` per image (MNI sform/qform, NaN outside the mask).
"""

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np

from napari_nrf import space
from napari_nrf.models import load_model
from napari_nrf.query import QueryEngine, volume_file_names


def main(argv=None) -> int:
    tiny = os.environ.get("NRF_EXAMPLE_TINY") == "1"
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model", nargs="?", help="model bundle (.safetensors); none: an untrained tiny NRF")
    ap.add_argument("images", nargs="*", help="image files; none: scikit-image's chelsea and coffee")
    ap.add_argument("--resolution", type=float, default=8.0 if tiny else 2.0)
    ap.add_argument("--mask", default="brain")
    ap.add_argument("--out", default="volumes")
    ap.add_argument("--plot", metavar="PNG", help="also draw the first volume on the MNI152 template (nilearn)")
    args = ap.parse_args(argv)
    if args.model:
        model = load_model(args.model)
    else:
        from napari_nrf.models.nrf import build_nrf

        model = build_nrf("efficientnet-lite0", "tiny")
    if args.images:
        from napari_nrf.features import load_image_file

        names, images = volume_file_names(args.images), [load_image_file(p) for p in args.images]
    else:
        import skimage.data

        names, images = ["chelsea.nii.gz", "coffee.nii.gz"], [skimage.data.chelsea(), skimage.data.coffee()]
    grid = space.Grid.mni(args.resolution)
    eng = QueryEngine(model)
    t = time.perf_counter()
    vols = eng.volume(images, grid, mask=args.mask)
    print(f"{len(images)} volume(s) on {grid} in {time.perf_counter() - t:.2f} s ({eng.device})")
    for name, vol in zip(names, vols):
        path = space.save_nifti(vol, grid, Path(args.out) / name)
        print(f"{path}: min {np.nanmin(vol):.3f} max {np.nanmax(vol):.3f}")
    if args.plot:
        import matplotlib

        matplotlib.use("Agg")
        from nilearn import plotting

        vol = np.nan_to_num(vols[0])  # NaN outside the mask: nothing to draw there
        # A tiny threshold hides only the points outside the mask; the cuts go through the peak.
        disp = plotting.plot_stat_map(space.to_nifti(vol, grid), threshold=1e-6, draw_cross=False,
                                      title=f"{names[0].split('.')[0]}, {args.resolution:g} mm, mask {args.mask}")
        disp.savefig(args.plot, dpi=90)
        disp.close()
        print(f"plot: {args.plot}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
