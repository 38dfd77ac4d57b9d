"""Which images drive a brain region most? The region explorer's computation, without Qt.

Loads the demo NRF model (trained on virtual subjects), encodes an image library (the
virtual subjects' stimuli; features are cached on disk), takes a sphere of 8 mm around an
MNI point and ranks the images by the model's mean predicted response in it. Saves a
contact sheet of the top and bottom images.

    .venv/bin/python examples/region_top_images.py [--x 40 --y -56 --z -18] [--n 240]

With ``NRF_EXAMPLE_TINY=1`` it uses a tiny untrained model and 16 images (the test run).
Output folder: ``$NRF_EXAMPLE_OUT`` or the current folder.
"""

import argparse
import os
from pathlib import Path

import numpy as np

from napari_nrf import space
from napari_nrf.analysis import top_images
from napari_nrf.demo import demo_library


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--x", type=float, default=40.0)
    ap.add_argument("--y", type=float, default=-56.0)
    ap.add_argument("--z", type=float, default=-18.0)
    ap.add_argument("--radius", type=float, default=8.0, help="sphere radius, mm")
    ap.add_argument("--n", type=int, default=240, help="library size")
    ap.add_argument("--k", type=int, default=6)
    args = ap.parse_args()
    tiny = os.environ.get("NRF_EXAMPLE_TINY") == "1"
    out = Path(os.environ.get("NRF_EXAMPLE_OUT", "."))

    if tiny:
        from napari_nrf.models.nrf import build_nrf

        model, n = build_nrf("efficientnet-lite0", "tiny"), 16
    else:
        from napari_nrf.demo import load_demo_model

        model, _ = load_demo_model()
        n = args.n
    images = demo_library(n).images  # (n, H, W, 3) uint8: the virtual subjects' stimuli
    feats = model.encode_images(images)  # (n, ...) backbone features

    # the region: grey-matter voxels of a 2 mm grid within `radius` of the point
    grid = space.Grid.mni(2.0)
    mask = space.sphere_mask(grid, [args.x, args.y, args.z], args.radius) & space.brain_mask(grid)
    region = grid.coords(mask)
    res = top_images(model, feats, coords=region, k=args.k)
    print(f"region: {len(region)} voxels around MNI ({args.x:g}, {args.y:g}, {args.z:g}) mm, r = {args.radius:g} mm")
    print("top:   ", ", ".join(f"{i} ({s:+.3f})" for i, s in zip(res.top, res.top_scores)))
    print("bottom:", ", ".join(f"{i} ({s:+.3f})" for i, s in zip(res.bottom, res.bottom_scores)))

    from PIL import Image

    sheet = np.concatenate([np.concatenate([images[i] for i in res.top], 1),
                            np.concatenate([images[i] for i in res.bottom], 1)], 0)
    out.mkdir(parents=True, exist_ok=True)
    Image.fromarray(sheet).save(out / "region_top_images.png")
    print("contact sheet (top row: most activating):", out / "region_top_images.png")


if __name__ == "__main__":
    main()
