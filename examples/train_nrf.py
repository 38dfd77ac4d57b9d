"""Train an NRF on response sets, evaluate it against ridge, save the bundle.

    .venv/bin/python examples/train_nrf.py sub-01.h5 sub-02.h5 --out nrf.safetensors
    NRF_EXAMPLE_TINY=1 .venv/bin/python examples/train_nrf.py     # a tiny virtual subject

Without data files a small virtual subject is made on the fly (the generator of
benchmarks/nrf_vs_ridge.py: photos and faces from scikit-image, a smooth response field
over the occipital MNI brain driven by hand-made image descriptors).
"""

import argparse
import os
import sys
from pathlib import Path

import numpy as np

from napari_nrf.data.responseset import ResponseSet
from napari_nrf.evaluate import evaluate, format_table
from napari_nrf.features import FeatureCache
from napari_nrf.train import train_nrf


def virtual_subject(n_images: int, voxel_mm: float) -> ResponseSet:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    from nrf_vs_ridge import Field, descriptors, make_images, make_subject

    from napari_nrf import space

    images, face = make_images(n_images, seed=0)
    desc = descriptors(images, face)
    g = space.Grid.mni(voxel_mm)
    xyz = g.coords(space.brain_mask(g))
    xyz = xyz[xyz[:, 1] < -60]
    split = np.zeros(n_images, np.uint8)
    split[int(n_images * 0.7):int(n_images * 0.85)] = 1
    split[int(n_images * 0.85):] = 2
    return make_subject("sub-01", Field(desc.shape[1]), desc, images, xyz, split, seed=1)


def main(argv=None) -> int:
    tiny = os.environ.get("NRF_EXAMPLE_TINY") == "1"
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("data", nargs="*", help="response sets (.h5); none: a virtual subject")
    ap.add_argument("--out", default="nrf.safetensors")
    ap.add_argument("--epochs", type=int, default=2 if tiny else 10)
    ap.add_argument("--preset", default="tiny" if tiny else "demo")
    args = ap.parse_args(argv)
    sets = [ResponseSet.load(p) for p in args.data] or [virtual_subject(40 if tiny else 400, 8.0 if tiny else 4.0)]
    cache = FeatureCache()
    model, hist = train_nrf(sets, preset=args.preset, out=args.out, epochs=args.epochs, feature_cache=cache,
                            batch_voxels=200 if tiny else 1000, steps_per_epoch=2 if tiny else 20, lr=1e-3,
                            on_epoch=lambda r: print(r))
    print(f"best epoch {hist.best_epoch}: validation median r = {hist.best_score:.3f}; saved {args.out}")
    print(format_table([evaluate(model, rs, feature_cache=cache, n_candidates=10 if tiny else 50) for rs in sets]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
