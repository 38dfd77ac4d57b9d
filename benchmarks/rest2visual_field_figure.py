"""The docs figure of the field Rest2Visual (docs/images/rest2visual_field.png): for one
person and one shared test image, axial slice z = 0 mm of their noiseless truth, the
field Rest2Visual's prediction, the image-only NRF's and the difference (field minus
NRF), each model read as a field on a 2 mm grid of grey matter in the visual box.

    PYTHONPATH=src python benchmarks/rest2visual_field_figure.py FIELD.safetensors NRF.safetensors \\
        sub-07.h5 --features FEATS.npy --index 6 --out docs/images/rest2visual_field.png

``--features``: the (subjects, images, 1280) efficientnet-lite0 embeddings the models were
trained with (else they are computed from the set's images); ``--index`` the person's row.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np


def main(argv=None):
    from napari_nrf import space
    from napari_nrf.data.responseset import ResponseSet
    from napari_nrf.models import load_model
    from napari_nrf.kinds.rest2visual.evaluate import predict_at
    from napari_nrf.simulate.subjects import truth_at

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("field")
    ap.add_argument("nrf")
    ap.add_argument("data")
    ap.add_argument("--features", default=None, help="embeddings .npy (default: computed)")
    ap.add_argument("--index", type=int, default=0, help="the person's row in --features (default: 0)")
    ap.add_argument("--out", default="rest2visual_field.png", help="figure (default: %(default)s)")
    a = ap.parse_args(argv)
    field, nrf, rs = load_model(a.field), load_model(a.nrf), ResponseSet.load(a.data)
    if rs.subject not in field.rest_maps:
        field.add_subject(rs.subject, rs.rest_maps, rs.rest_grid)
    rows = rs.indices("test")
    if a.features:
        emb = np.load(a.features)[a.index][rows]
    else:
        from napari_nrf.train import set_features

        emb = np.asarray(set_features(nrf, rs, rows=rows)["embedding"])
    g = space.Grid.from_extent(2.0, [-72, -112, 0], [72, -28, 0])
    keep = space.gm_probability(g).ravel() >= 0.3
    xyz = g.coords(np.ones(g.shape, bool))[keep]
    truth = truth_at(rs, xyz, rows)
    k = int(np.argmax(truth.std(1)))
    f = {"embedding": emb[k:k + 1]}
    z = lambda v: (v - v.mean()) / (v.std() + 1e-9)  # noqa: E731
    p = predict_at(field, f, xyz, rs.subject)[0]
    q = predict_at(nrf, f, xyz)[0]
    t = truth[k]
    r = lambda u, v: float(np.corrcoef(u, v)[0, 1])  # noqa: E731
    panels = [(f"{rs.subject}'s truth", z(t)), (f"Rest2Visual field (r {r(p, t):.2f})", z(p)),
              (f"image-only NRF (r {r(q, t):.2f})", z(q)), ("field - NRF", z(p) - z(q))]
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples"))
    from rest2visual import draw_slices  # the example's figure, the same drawing

    draw_slices(panels, g, keep, f"{rs.subject}, test image {int(rs.image_ids[rows[k]])}, z = 0 mm, maps z-scored",
                a.out)
    print(f"{a.out}: field r {r(p, t):.3f}, NRF r {r(q, t):.3f} to {rs.subject}'s truth")


if __name__ == "__main__":
    main()
