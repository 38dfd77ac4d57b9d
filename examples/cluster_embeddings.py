"""k-means maps of a Universal encoder's voxel embeddings, in MNI space, with top images.

    .venv/bin/python examples/cluster_embeddings.py --model uni.safetensors -k 20 --images sub-01.h5
    NRF_EXAMPLE_TINY=1 .venv/bin/python examples/cluster_embeddings.py   # virtual subjects, seconds

Writes one label NIfTI per subject (0 background, cluster c as c + 1) on the 2 mm MNI
grid, the cluster table (size per subject, MNI centroid) as CSV, and prints per cluster
the categories of the images with the highest mean predicted response. Without --model
a small model is trained on virtual subjects (napari_nrf.simulate) first.
"""

import argparse
import csv
import os
from pathlib import Path

import numpy as np

from napari_nrf import space
from napari_nrf.analysis import cluster_maps, cluster_top_images
from napari_nrf.data.responseset import ResponseSet
from napari_nrf.features import FeatureCache
from napari_nrf.models import load_model
from napari_nrf.recipes import train_universal

TINY = bool(os.environ.get("NRF_EXAMPLE_TINY"))
OUT = Path(os.environ.get("NRF_EXAMPLE_OUT", "."))


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", help="universal bundle (default: train a small one on virtual subjects)")
    p.add_argument("-k", type=int, default=4 if TINY else 20)
    p.add_argument("--images", help="response set whose images form the library (default: virtual subject 1)")
    p.add_argument("--top", type=int, default=5)
    p.add_argument("--out", default=str(OUT / "clusters"))
    args = p.parse_args()
    cache = FeatureCache(OUT / "cache")
    sim = None
    if args.model is None or args.images is None:
        from napari_nrf.simulate import simulate

        n, v = (20, 120) if TINY else (400, 2000)
        sim = simulate(n_subjects=2, n_images=n, max_voxels=v, n_shared=max(4, n // 10))
    if args.model:
        model = load_model(args.model)
    else:
        model, _ = train_universal(sim, levels=["s32", "embedding"] if TINY else ["s16", "s32", "embedding"],
                                   model_config=dict(embed_dim=8, channels=4) if TINY else dict(embed_dim=64, channels=32),
                                   epochs=1 if TINY else 30, batch_images=16, batch_voxels=200 if TINY else 2000,
                                   feature_cache=cache)
    lib = ResponseSet.load(args.images) if args.images else sim[0]

    maps = cluster_maps(model, args.k)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for s, vol in maps.volumes.items():
        space.save_nifti(vol, maps.grid, out / f"{s}_clusters.nii.gz", dtype=np.int16)
    with open(out / "clusters.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(list(maps.table))
        for i in range(maps.result.k):
            w.writerow([maps.table[c][i] for c in maps.table])
    feats = model.encode_images(lib.get_images(np.arange(lib.n_images)), cache=cache)
    top = cluster_top_images(model, feats, maps.result, top=args.top)
    cats = lib.meta.get("categories")
    for c in range(maps.result.k):
        t = maps.table
        where = f"MNI ({t['x_mm'][c]:.0f}, {t['y_mm'][c]:.0f}, {t['z_mm'][c]:.0f})"
        best = [cats[i] if cats else str(i) for i in top[c][0]]
        print(f"cluster {c + 1}: {t['size'][c]} voxels at {where}; top images: {', '.join(best)}")
    print(f"wrote {out}/<subject>_clusters.nii.gz and clusters.csv")


if __name__ == "__main__":
    main()
