"""Screenshot of the Movie response widget for docs/movies.md, from the real application.

Simulates virtual movies, trains a tiny movie encoder-decoder (a minute or two), opens
napari with the widget from Plugins > napari-nrf > Movie response, predicts the held-out
film of the data set (so the measured responses are plotted too), puts the cursor's time
course on a motion-area voxel and saves ``docs/images/movie_widget.png`` (the whole window)
and ``docs/images/movie_reconstructions.png`` (film frames vs decoded frames).

    xvfb-run -a -s "-screen 0 1600x1000x24" .venv/bin/python docs/make_movie_screenshot.py
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import numpy as np

OUT = Path(__file__).resolve().parent / "images"


def _wait(cond, timeout=600.0):
    from qtpy.QtWidgets import QApplication

    t = time.perf_counter()
    while not cond():
        if time.perf_counter() - t > timeout:
            raise TimeoutError("timed out")
        QApplication.processEvents()
        time.sleep(0.02)


def main():
    import napari

    from napari_nrf.movie.evaluate import reconstruct
    from napari_nrf.recipes import train_movie
    from napari_nrf.simulate.movies import simulate_movies

    work = Path(tempfile.mkdtemp(prefix="movie_shot_"))
    sims = simulate_movies(work, n_subjects=3, n_films=3, n_trs=100, frames_per_tr=4, size=32, max_voxels=3000)
    g = sims["group"]
    model, _ = train_movie(g, size="tiny", epochs=12, lr=1e-3, out=work / "movie.safetensors")
    OUT.mkdir(parents=True, exist_ok=True)

    viewer = napari.Viewer(title="napari-nrf: Movie response", show=True)
    viewer.window.resize(1600, 1000)
    _dock, w = viewer.window.add_plugin_dock_widget("napari-nrf", "Movie response")
    w.load_model(work / "movie.safetensors")
    w.open_dataset(work / "group.h5")
    w.film.setCurrentText(g.held_out)
    got = []
    w.done.connect(got.append)
    w.predict()
    _wait(lambda: bool(got) or "failed" in w.info.text())
    viewer.dims.set_point(0, 40 * g.tr)
    viewer.dims.set_point(1, 4.0)  # the axial slice through hMT
    mt = [k for k, v in g.roi_names.items() if v.startswith("hMT")]
    v = int(np.flatnonzero(np.isin(g.roi, mt))[0]) if mt else 0
    w.show_time_course(g.coords[v])
    viewer.reset_view()
    _wait(lambda: True)
    for _ in range(30):
        from qtpy.QtWidgets import QApplication

        QApplication.processEvents()
        time.sleep(0.03)
    viewer.window.screenshot(str(OUT / "movie_widget.png"), canvas_only=False)

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    view = w.view
    ks = [k for k in range(model.delay, view.n_volumes, 12)][:6]
    rec = reconstruct(model, view.pred[ks])
    fig, ax = plt.subplots(2, len(ks), figsize=(1.7 * len(ks), 3.6), squeeze=False)
    for j, k in enumerate(ks):
        ax[0, j].imshow(view.frames[k - model.delay])
        ax[1, j].imshow(rec[j])
        ax[0, j].set_title(f"TR {k - model.delay}", fontsize=8)
        for a in ax[:, j]:
            a.axis("off")
    fig.suptitle(f"held-out film {g.held_out}: middle frames (top) and decoded from predicted voxels (bottom)",
                 fontsize=8)
    fig.tight_layout()
    fig.savefig(OUT / "movie_reconstructions.png", dpi=130)
    viewer.close()
    print(OUT / "movie_widget.png", OUT / "movie_reconstructions.png")


if __name__ == "__main__":
    main()
