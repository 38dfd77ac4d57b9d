"""Add a new subject to a trained Universal encoder from a few images (seed 002, 4.4).

    .venv/bin/python examples/transfer_new_subject.py --model uni.safetensors --new sub-05.h5 --n-images 100
    NRF_EXAMPLE_TINY=1 .venv/bin/python examples/transfer_new_subject.py    # virtual subjects, seconds

Without --model, a Universal encoder is first trained jointly on virtual subjects
(napari_nrf.simulate); without --new, the new subject is one more virtual subject. Only
the new subject's voxel embeddings learn; the transferred model is compared with a model
trained from scratch on all of the new subject's training images, on its test images.
"""

import argparse
import os
from pathlib import Path

import numpy as np

from napari_nrf.data.responseset import ResponseSet
from napari_nrf.features import FeatureCache
from napari_nrf.models import load_model
from napari_nrf.recipes import train_universal, transfer_subject
from napari_nrf.train import predict_set, set_features, voxel_pearson

TINY = bool(os.environ.get("NRF_EXAMPLE_TINY"))
OUT = Path(os.environ.get("NRF_EXAMPLE_OUT", "."))


def test_r(model, rs, cache) -> float:
    rows = rs.indices("test")
    feats = set_features(model, rs, cache=cache, rows=rows)
    return float(np.nanmedian(voxel_pearson(predict_set(model, feats, rs), rs.get_responses(rows))))


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", help="trained universal bundle (default: train one on virtual subjects)")
    p.add_argument("--new", help="the new subject's response set (.h5)")
    p.add_argument("--n-images", type=int, default=5 if TINY else 100)
    p.add_argument("--epochs", type=int, default=1 if TINY else 30)
    p.add_argument("--out", default=str(OUT / "universal_transferred.safetensors"))
    args = p.parse_args()
    cache = FeatureCache(OUT / "cache")
    fit = dict(epochs=args.epochs, batch_images=16, batch_voxels=200 if TINY else 2000, feature_cache=cache)
    cfg = dict(embed_dim=8, channels=4) if TINY else dict(embed_dim=64, channels=32)
    levels = ["s32", "embedding"] if TINY else ["s16", "s32", "embedding"]

    sim = None
    if args.model is None or args.new is None:
        from napari_nrf.simulate import simulate

        n, v = (20, 120) if TINY else (400, 2000)
        sim = simulate(n_subjects=3, n_images=n, max_voxels=v, n_shared=max(4, n // 10))
    if args.model:
        model = load_model(args.model)
    else:
        model, hist = train_universal(sim[:2], levels=levels, model_config=cfg, **fit)
        print(f"joint model on {', '.join(model.subjects)}: validation median r = {hist.best_score:.3f}")
    new = ResponseSet.load(args.new) if args.new else sim[2]

    train_rows = new.indices("train")
    few = np.sort(np.random.default_rng(0).choice(train_rows, min(args.n_images, len(train_rows)), replace=False))
    subset = new.subset(rows=np.sort(np.concatenate([few, np.flatnonzero(new.split != 0)])))
    model, h = transfer_subject(model, subset, out=args.out, **fit)
    print(f"transferred to {new.subject} with {len(few)} images: test median r = {test_r(model, new, cache):.3f}")
    scratch, _ = train_universal([new], backbone=model.backbone_name, levels=[n for n, _, _ in model.levels],
                                 model_config=cfg, **fit)
    print(f"from scratch on all {len(train_rows)} images: test median r = {test_r(scratch, new, cache):.3f}")
    print(f"saved {args.out} (subjects: {', '.join(model.subjects)})")


if __name__ == "__main__":
    main()
