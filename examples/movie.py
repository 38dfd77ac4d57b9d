"""Films to fMRI and back (seed 003): train the movie encoder-decoder, evaluate it against
FIR ridge, predict a film's 4D response and plot the decoder's reconstructions.

    .venv/bin/python examples/movie.py --data group.h5 --film clip.mp4
    NRF_EXAMPLE_TINY=1 .venv/bin/python examples/movie.py    # virtual movies, seconds

Without --data, virtual movies are simulated (3 subjects, their group average, the last
film held out); without --film, the first film of the data set is written as an MPEG-4
file and predicted from it, as a user's video would be. Outputs (in NRF_EXAMPLE_OUT or
the current folder): movie.safetensors, movie_prediction.nii.gz (time as the 4th axis,
the TR in the header) and movie_reconstructions.png.
"""

import argparse
import os
from pathlib import Path

import numpy as np

from napari_nrf.movie import MovieDataset
from napari_nrf.movie.evaluate import evaluate_movie, fir_ridge, predict_film, reconstruct
from napari_nrf.movie.video import write_video
from napari_nrf.movie.volumes import save_4d
from napari_nrf.recipes import train_movie

TINY = bool(os.environ.get("NRF_EXAMPLE_TINY"))
OUT = Path(os.environ.get("NRF_EXAMPLE_OUT", "."))


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data", help="movie data set (.h5; default: simulate virtual movies)")
    p.add_argument("--film", help="a video to predict (default: the data set's first film)")
    p.add_argument("--epochs", type=int, default=1 if TINY else 12)
    p.add_argument("--size", default="tiny", choices=["tiny", "demo", "paper"])
    args = p.parse_args()
    if args.data:
        ds = MovieDataset.load(args.data)
    else:
        from napari_nrf.simulate.movies import simulate_movies

        n, f, v = (24, 4, 40) if TINY else (100, 8, 300)
        ds = simulate_movies(OUT / "sim", n_subjects=3 if not TINY else 2, n_films=3 if not TINY else 2, n_trs=n,
                             frames_per_tr=f, size=32, max_voxels=v)["group"]
    model, hist = train_movie(ds, size=args.size, epochs=args.epochs, lr=1e-3, out=OUT / "movie.safetensors")
    print(f"trained: {model.n_voxels} voxels, delay {model.delay} TR, validation median r {hist.best_score:.3f}")
    rep = evaluate_movie(model, ds, n_perm=20 if TINY else 200)
    fir = fir_ridge(ds, features="pixels" if TINY else "efficientnet-lite0")
    for name, r in (("encoder-decoder", rep), ("FIR ridge", fir)):
        print(f"{name}: test median r pooled {r['pooled']['median_r']:.3f}, held-out film "
              f"{(r['held_out_film'] or {}).get('median_r', float('nan')):.3f}, final segments "
              f"{(r['segments'] or {}).get('median_r', float('nan')):.3f}")
    print(f"reconstruction SSIM {rep['ssim_predicted']:.3f} (from measured voxels {rep['ssim_measured']:.3f})")

    film = args.film
    if film is None:
        first = ds.films[ds.film_names[0]]["frames"]
        frames = np.asarray(first).reshape((-1,) + tuple(first.shape[2:]))
        film = write_video(OUT / "film.mp4", frames, fps=ds.frames_per_tr / ds.tr)
    mids = []
    pred = predict_film(model, film, tr=ds.tr, middle_frames=mids)
    out = save_4d(OUT / "movie_prediction.nii.gz", pred, next(iter(model.subjects.values())), ds.tr)
    print(f"{out}: {len(pred)} volumes (TR {ds.tr:g} s; the first {model.delay} NaN: the response lags the film)")

    import matplotlib.pyplot as plt

    ok = np.flatnonzero(np.isfinite(pred).all(1))[:6]
    rec = reconstruct(model, pred[ok])
    fig, ax = plt.subplots(2, len(ok), figsize=(1.6 * len(ok), 3.4), squeeze=False)
    for j, k in enumerate(ok):
        ax[0, j].imshow(mids[k - model.delay])
        ax[1, j].imshow(rec[j])
        ax[0, j].set_title(f"TR {k - model.delay}", fontsize=7)
        for a in ax[:, j]:
            a.axis("off")
    ax[0, 0].text(-0.1, 0.5, "film", transform=ax[0, 0].transAxes, ha="right", va="center", fontsize=8)
    ax[1, 0].text(-0.1, 0.5, "decoded", transform=ax[1, 0].transAxes, ha="right", va="center", fontsize=8)
    fig.tight_layout()
    fig.savefig(OUT / "movie_reconstructions.png", dpi=120)
    print(f"saved {OUT / 'movie_reconstructions.png'}")


if __name__ == "__main__":
    main()
