"""Virtual subjects: simulate, then look at the areas, a response map, retinotopy and the noise ceiling.

    .venv/bin/python examples/plot_virtual_subjects.py [--out docs/images] [--images 300]

``NRF_EXAMPLE_TINY=1`` (or ``--tiny``) runs it on tiny settings (tests). Figures are PNG
files written with matplotlib's Agg backend and nilearn's plotting on the MNI152 template.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from napari_nrf import space  # noqa: E402
from napari_nrf.simulate import (make_parametric, make_stimulus_set, simulate, stimulus_descriptors,  # noqa: E402
                                 subject_from_meta)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="docs/images")
    p.add_argument("--images", type=int, default=300)
    p.add_argument("--subjects", type=int, default=2)
    p.add_argument("--tiny", action="store_true")
    args = p.parse_args(argv)
    tiny = args.tiny or os.environ.get("NRF_EXAMPLE_TINY") == "1"
    n_img, max_vox = (12, 800) if tiny else (args.images, 15000)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    from nilearn import plotting

    rs = simulate(n_subjects=args.subjects, n_images=n_img, seed=0, max_voxels=max_vox,
                  n_shared=max(2, n_img // 10))
    r = rs[0]
    subj = subject_from_meta(r.meta)
    grid = subj.grid
    written = []

    # 1. The areas of subject 1 (argmax membership; the soft memberships overlap).
    lab = space.points_to_volume(r.coords, r.roi.astype(np.float32), grid, fill=0)
    disp = plotting.plot_roi(space.to_nifti(lab, grid), cut_coords=(-40, -80, -10), cmap="tab20",
                             title=f"{r.subject}: simulated visual areas", draw_cross=False)
    written.append(out / "sim_areas.png")
    disp.savefig(str(written[-1]), dpi=90)
    disp.close()

    # 2. One response map: the noiseless response to a face stimulus, and its noisy data.
    face_row = int(np.flatnonzero(np.array(r.meta["categories"]) == "face")[0]) if "face" in r.meta["categories"] else 0
    for name, values in (("truth", r.truth[face_row]), ("data", r.responses[face_row])):
        vol = space.points_to_volume(r.coords, values, grid, fill=0)
        disp = plotting.plot_stat_map(space.to_nifti(vol, grid), cut_coords=(40, -55, -18), threshold=0.2,
                                      title=f"{r.subject}, image {r.image_ids[face_row]} (face): {name}",
                                      draw_cross=False)
        written.append(out / f"sim_face_{name}.png")
        disp.savefig(str(written[-1]), dpi=90)
        disp.close()

    # 3. Retinotopy: left minus right hemifield checkerboard, at 1 mm from the continuous truth.
    left = np.stack([make_parametric("checkerboard", side="left", cycles=c) for c in (4, 8)])
    right = np.stack([make_parametric("checkerboard", side="right", cycles=c) for c in (4, 8)])
    g1 = space.Grid.from_extent(2.0 if tiny else 1.0, [-40, -106, -20], [40, -70, 24])
    m = space.gm_mask(g1, 0.3)
    xyz = g1.coords(m)
    diff = subj.truth(left, xyz).mean(0) - subj.truth(right, xyz).mean(0)
    vol = np.zeros(g1.shape, np.float32)
    vol[m] = diff
    disp = plotting.plot_stat_map(space.to_nifti(vol, g1), display_mode="z", cut_coords=(-8, 0, 8),
                                  threshold=0.1, title="left minus right hemifield (truth at 1 mm)",
                                  draw_cross=False)
    written.append(out / "sim_hemifield.png")
    disp.savefig(str(written[-1]), dpi=90)
    disp.close()

    # 4. Stimuli and 5. noise ceilings.
    st = make_stimulus_set(np.arange(24), seed=0)
    fig, axes = plt.subplots(3, 8, figsize=(12, 5))
    for a, img, c in zip(axes.flat, st.images, st.categories):
        a.imshow(img)
        a.set_title(c, fontsize=8)
        a.axis("off")
    fig.tight_layout()
    written.append(out / "sim_stimuli.png")
    fig.savefig(written[-1], dpi=80)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(5, 3))
    for x in rs:
        ax.hist(x.noise_ceiling, bins=40, histtype="step", label=f"{x.subject} (snr {x.meta['simulator']['snr']:.2f})")
    ax.set_xlabel("noise ceiling (%)")
    ax.set_ylabel("voxels")
    ax.legend(fontsize=7)
    fig.tight_layout()
    written.append(out / "sim_noise_ceiling.png")
    fig.savefig(written[-1], dpi=90)
    plt.close(fig)

    # Check the stored truth against the continuous function (prints the max difference).
    t = subj.truth(stimulus_descriptors(r), r.coords)
    print(f"max |truth(voxels) - stored truth| = {np.abs(t - r.truth).max():.2e}")
    for w in written:
        print("wrote", w)
    return written


if __name__ == "__main__":
    main()
