"""Train an NRF on response sets, evaluate it against ridge, save the bundle.

    .venv/bin/python examples/train_nrf.py sub-01.h5 sub-02.h5 --out nrf.safetensors
    NRF_EXAMPLE_TINY=1 .venv/bin/python examples/train_nrf.py     # a tiny virtual subject

Without data files a small virtual subject is made on the fly by the project's simulator
(``napari_nrf.simulate``, docs/simulator.md).
"""

import argparse
import os
import sys

from napari_nrf.data.responseset import ResponseSet
from napari_nrf.evaluate import evaluate, format_table
from napari_nrf.features import FeatureCache
from napari_nrf.recipes import train_nrf


def virtual_subject(n_images: int, max_voxels: int, image_size: int = 96) -> ResponseSet:
    from napari_nrf.simulate import simulate

    return simulate(n_subjects=1, n_images=n_images, max_voxels=max_voxels, image_size=image_size, seed=0)[0]


def main(argv=None) -> int:
    tiny = os.environ.get("NRF_EXAMPLE_TINY") == "1"
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("data", nargs="*", help="response sets (.h5); none: a virtual subject")
    ap.add_argument("--out", default="nrf.safetensors")
    ap.add_argument("--epochs", type=int, default=2 if tiny else 10)
    ap.add_argument("--preset", default="tiny" if tiny else "demo")
    args = ap.parse_args(argv)
    sets = [ResponseSet.load(p) for p in args.data] or [virtual_subject(40 if tiny else 400, 200 if tiny else 2000, 32 if tiny else 96)]
    cache = FeatureCache()
    model, hist = train_nrf(sets, preset=args.preset, out=args.out, epochs=args.epochs, feature_cache=cache,
                            batch_voxels=200 if tiny else 1000, steps_per_epoch=2 if tiny else 20, lr=1e-3,
                            on_epoch=lambda r: print(r))
    print(f"best epoch {hist.best_epoch}: validation median r = {hist.best_score:.3f}; saved {args.out}")
    print(format_table([evaluate(model, rs, feature_cache=cache, n_candidates=10 if tiny else 50) for rs in sets]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
