"""Train the demo NRF model shipped in the package (src/napari_nrf/assets/demo_nrf.safetensors).

Reproducible: virtual subjects from the simulator with a fixed seed, the "demo" NRF preset
(8 channels per token, MLP 4 x 128) on the offline EfficientNet-Lite0 backbone, trained
with the project's one training loop. Prints the time it took and the bundle size.

    .venv/bin/python benchmarks/make_demo_model.py [--out PATH] [--images 300] [--epochs 10]
"""

import argparse
import sys
import time
from pathlib import Path

from napari_nrf import demo


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default=str(demo.shipped_model_path()))
    ap.add_argument("--subjects", type=int, default=demo.DEMO_SUBJECTS)
    ap.add_argument("--images", type=int, default=demo.DEMO_IMAGES)
    ap.add_argument("--epochs", type=int, default=10)
    args = ap.parse_args(argv)
    t = time.perf_counter()
    out = demo.train_demo_model(Path(args.out), n_subjects=args.subjects, n_images=args.images, epochs=args.epochs)
    print(f"wrote {out} ({out.stat().st_size / 1e6:.2f} MB) in {time.perf_counter() - t:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
