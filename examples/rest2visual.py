"""Rest2Visual end to end: rest maps, one model over subjects, a new person, a figure.

    .venv/bin/python examples/rest2visual.py                 # virtual subjects, demo sizes (CPU, minutes)
    NRF_EXAMPLE_TINY=1 .venv/bin/python examples/rest2visual.py   # seconds

1. virtual subjects with resting-state runs (areas displaced by 5 mm), their PCC seed maps
   made by the same code as ``napari-nrf rest-map`` (:func:`napari_nrf.data.restmap.rest_map`);
2. one Rest2Visual model (the default "field" design: the shared image field plus the
   person's rest-map term) trained over all but the last subject (``train_rest2visual``,
   through the one training loop);
3. the last subject is a new person: written as a rest-map NIfTI, added to the model from
   that file alone (no training), and their test maps are scored against their measured
   responses (spatial Pearson, MAE, SSIM, V1-V5) next to the stimulus-only prediction;
4. a figure (axial slices at z = 0 mm, the models read as fields on a 2 mm grid): the
   person's noiseless truth for one test image, Rest2Visual's prediction, the image-only
   prediction (the shared field: the population pseudo-subject) and their difference
   (``rest2visual.png``).
"""

import os
import sys
from pathlib import Path

import numpy as np


def main() -> int:
    tiny = os.environ.get("NRF_EXAMPLE_TINY") == "1"
    out = Path(os.environ.get("NRF_EXAMPLE_OUT", "."))
    out.mkdir(parents=True, exist_ok=True)
    import torch

    from napari_nrf import mapmetrics as mm
    from napari_nrf import space
    from napari_nrf.features import FeatureCache
    from napari_nrf.models.rest2visual import POPULATION, subject_from_rest_map
    from napari_nrf.recipes import train_rest2visual
    from napari_nrf.simulate.rest import simulate_with_rest
    from napari_nrf.simulate.subjects import VISUAL_BOX

    n_sub = 3 if tiny else 5
    sets = simulate_with_rest(n_subjects=n_sub, n_images=20 if tiny else 120, n_shared=4 if tiny else 20,
                              max_voxels=300 if tiny else 3000, image_size=32 if tiny else 64,
                              n_sessions=1 if tiny else 2, n_volumes=60 if tiny else 300)
    train, person = sets[:-1], sets[-1]
    cache = FeatureCache()
    model, hist = train_rest2visual(train, preset="field-tiny" if tiny else "field", extent=VISUAL_BOX,
                                    steps=3 if tiny else None, feature_cache=cache)
    print(f"trained on {', '.join(rs.subject for rs in train)}: validation median r {hist.best_score:.3f}")
    path = model.save(out / "rest2visual.safetensors")
    # the new person: their rest map as a file, then the model needs nothing else
    rmap = out / f"{person.subject}_restmap.nii.gz"
    space.save_nifti(person.rest_maps.mean(0), person.rest_grid, rmap)
    name = subject_from_rest_map(model, rmap)
    rows = person.indices("test")
    from napari_nrf.train import set_features

    feats = {k: torch.from_numpy(np.asarray(v)) for k, v in set_features(model, person, cache=cache, rows=rows).items()}
    with torch.no_grad():  # at the person's measured voxels: theirs, and the stimulus-only reference
        pred = model.predict(feats, coords=person.coords, subject=name).numpy()
        ref = model.predict(feats, coords=person.coords, subject=POPULATION).numpy()
    true = person.get_responses(rows)
    roi = mm.roi_points(person)
    for label, p in (("Rest2Visual (their rest map)", pred), ("stimulus-only (mean rest map)", ref)):
        s = mm.score_maps(p, true, person.coords)
        v = mm.score_maps(p[:, roi], true[:, roi], person.coords[roi]) if roi.sum() >= 10 else s
        print(f"{label:32s} Pearson {s['pearson']:.3f}  MAE {s['mae']:.3f}  SSIM {s['ssim']:.3f}  "
              f"V1-V5 Pearson {v['pearson']:.3f}")
    _figure(model, person, name, rows, feats, true, out / "rest2visual.png")
    print(f"saved {path}, {rmap} and {out / 'rest2visual.png'}")
    return 0


def _figure(model, rs, name, rows, feats, true, path):
    from napari_nrf import space
    from napari_nrf.models.rest2visual import POPULATION
    from napari_nrf.kinds.rest2visual.evaluate import predict_at
    from napari_nrf.simulate.subjects import truth_at

    g = space.Grid.from_extent(2.0, [-72, -112, 0], [72, -28, 0])  # the axial slice z = 0 mm
    keep = space.gm_probability(g).ravel() >= 0.3
    xyz = g.coords(np.ones(g.shape, bool))[keep]
    k = int(np.argmax(np.abs(true).mean(1)))  # the test image with the strongest response
    f = {n: v[k:k + 1].numpy() for n, v in feats.items()}
    z = lambda v: (v - v.mean()) / (v.std() + 1e-9)  # noqa: E731
    pred = z(predict_at(model, f, xyz, name)[0])
    shared = z(predict_at(model, f, xyz, POPULATION)[0])
    truth = z(truth_at(rs, xyz, rows[k:k + 1])[0])
    r = lambda a, b: float(np.corrcoef(a, b)[0, 1])  # noqa: E731
    panels = [(f"{rs.subject}'s truth", truth), (f"Rest2Visual (r {r(pred, truth):.2f})", pred),
              (f"image-only field (r {r(shared, truth):.2f})", shared), ("Rest2Visual - image-only", pred - shared)]
    draw_slices(panels, g, keep, f"{rs.subject} (new to the model, added from a rest-map NIfTI), test image "
                f"{int(rs.image_ids[rows[k]])}, z = 0 mm, maps z-scored", path)


def draw_slices(panels, g, keep, title, path):
    """One row of axial slices: ``panels`` [(title, values at the ``keep`` points of the
    one-slice grid ``g``)], saved to ``path``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(panels), figsize=(3 * len(panels), 3.0))
    for ax, (name, v) in zip(axes, panels):
        vol = np.full(g.n_points, np.nan)
        vol[keep] = v
        sl = vol.reshape(g.shape)[..., 0]
        lim = np.nanpercentile(np.abs(sl), 99) or 1.0
        ax.imshow(sl.T, origin="lower", cmap="RdBu_r", vmin=-lim, vmax=lim,
                  extent=[g.origin[0], g.extent[1][0], g.origin[1], g.extent[1][1]])
        ax.set_title(name, fontsize=9)
        ax.set_xlabel("x (mm)")
    axes[0].set_ylabel("y (mm)")
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    sys.exit(main())
