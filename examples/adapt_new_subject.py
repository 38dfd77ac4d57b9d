"""Adapt pretrained NRF models to a new subject from a few images, as a background job.

    .venv/bin/python examples/adapt_new_subject.py --base A.safetensors B.safetensors \\
        --data new.h5 --images 200 --out new.safetensors
    NRF_EXAMPLE_TINY=1 .venv/bin/python examples/adapt_new_subject.py    # everything made on the fly

The same as ``napari-nrf finetune`` and the Training jobs widget: a job in a child process
finetunes each base on the new subject's images (early stopping on its validation
images), fits the voxelwise ensemble and writes one bundle. Ctrl-C cancels the job; an
interrupted job continues with ``napari-nrf jobs resume ID``.

Without files (or with NRF_EXAMPLE_TINY=1) it simulates 3 virtual subjects, trains a
small NRF base on each of the first two and adapts them to the third.
"""

import argparse
import os
from pathlib import Path

import numpy as np

from napari_nrf.train_jobs import submit_finetune
from napari_nrf.jobs import JobManager
from napari_nrf.models import load_model


def make_inputs(folder: Path, tiny: bool):
    """Simulate subjects, train one base per subject on all but the last; returns (bases, data)."""
    from napari_nrf.simulate import simulate
    from napari_nrf.recipes import train_nrf

    n, vox = (40, 150) if tiny else (300, 1500)
    sets = simulate(n_subjects=3, n_images=n, seed=0, max_voxels=vox, image_size=32 if tiny else 96)
    bases = []
    for rs in sets[:2]:
        path = folder / f"base-{rs.subject}.safetensors"
        train_nrf([rs], preset="tiny" if tiny else "demo", out=path, epochs=2 if tiny else 10,
                  steps_per_epoch=3 if tiny else 20, batch_voxels=100 if tiny else 500, lr=1e-3)
        bases.append(path)
        print(f"base model {path.name} trained on {rs.subject}")
    return bases, sets[2].save(folder / f"{sets[2].subject}.h5")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--base", nargs="*", help="pretrained model bundles")
    ap.add_argument("--data", help="the new subject's response set (.h5)")
    ap.add_argument("--images", type=int, default=200)
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--out", help="output bundle (default: <folder>/adapted.safetensors)")
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()
    tiny = os.environ.get("NRF_EXAMPLE_TINY") == "1"
    folder = Path(os.environ.get("NRF_EXAMPLE_OUT", "adapt_example"))
    folder.mkdir(parents=True, exist_ok=True)
    if args.base and args.data:
        bases, data = args.base, args.data
    else:
        bases, data = make_inputs(folder, tiny)
    out = Path(args.out) if args.out else folder / "adapted.safetensors"
    kw = dict(n_images=8 if tiny else args.images, epochs=2 if tiny else args.epochs)
    if tiny:
        kw.update(batch_images=4, batch_voxels=60)
    mgr = JobManager(folder / "jobs")
    job = submit_finetune(mgr, bases, data, out, device=args.device, overwrite=True, threads=1 if tiny else None,
                          **kw)
    print(f"job {job.id} started in a child process; progress:")

    def show(rec):
        parts = [f"{k}={rec[k]:.3f}" if isinstance(rec[k], float) else f"{k}={rec[k]}"
                 for k in ("stage", "base", "epoch", "loss", "val_pearson", "fraction") if k in rec]
        print("  " + " ".join(parts))

    try:
        mgr.wait(job.id, callback=show)
    except KeyboardInterrupt:
        mgr.cancel(job.id)
        mgr.wait(job.id)
    print(f"job {job.id}: {job.status}")
    if job.status != "done":
        raise SystemExit(f"the job did not finish: {job.state.get('error')}")
    model = load_model(out)
    w = model.weights.numpy()
    print(f"{out}: ensemble of {len(model.bases)} finetuned bases for {model.subject}, "
          f"{len(w)} voxels; weights per base (median over voxels): {', '.join(f'{x:.3f}' for x in np.median(w, 0))}; "
          f"validation median r {model.metrics.get('val_median_pearson', float('nan')):.3f}")


if __name__ == "__main__":
    main()
