"""The movie model on pretrained frame features (kind ``movie-features``): a tiny version of
the science (it beats a constant and agrees in sign with the FIR ridge), streaming with
history, calibration, the CLI's default and the conv preset beside it."""

import json

import numpy as np
import pytest
import torch


@pytest.fixture(scope="module")
def tiny_movies(tmp_path_factory):
    from napari_nrf.simulate.movies import simulate_movies

    out = tmp_path_factory.mktemp("fsim")
    simulate_movies(out, n_subjects=2, n_films=3, n_trs=50, frames_per_tr=4, size=32, max_voxels=60, seed=0)
    return out


def _pixels_model(g, **kw):
    from napari_nrf.recipes import train_movie_features

    return train_movie_features(g, model_config={"features": "pixels", "history": 8}, seed=0, **kw)


def test_tiny_model_beats_a_constant_and_agrees_with_the_ridge(tiny_movies, tmp_path):
    """On the tiny set's noiseless responses (the simulation's truth: 150 TRs are too few
    to beat a constant through the noise with pixel features), the model's squared error
    and median R^2 on the test TRs beat the constant (0, the z-scored mean), and its r has
    the FIR ridge's sign."""
    from napari_nrf.movie import MovieDataset
    from napari_nrf.movie.evaluate import evaluate_movie, fir_ridge, predict_chunks
    from napari_nrf.train import voxel_r2

    g0 = MovieDataset.load(tiny_movies / "group.h5")
    films = {n: {"frames": f["frames"], "split": f["split"], "responses": f["truth"], "truth": f["truth"]}
             for n, f in g0.films.items()}
    g = MovieDataset(films, g0.coords, g0.tr, g0.subject, g0.roi, g0.roi_names, g0.snr, g0.meta)
    model, hist = _pixels_model(g, feature_cache=_cache(tmp_path))
    rep = evaluate_movie(model, g, n_perm=0)
    ridge = fir_ridge(g, features="pixels")
    assert rep["delay"] == 0 and np.isfinite(rep["pooled"]["median_r"])
    P, Y = [], []
    for name in g.film_names:
        rs = g.training_set(0, films=[name])
        rows = np.flatnonzero(rs.split == 2)
        P.append(predict_chunks(model, rs.images)[rows])
        Y.append(rs.get_responses(rows))
    P, Y = np.concatenate(P), np.concatenate(Y)
    assert ((P - Y) ** 2).sum() < (Y ** 2).sum()
    assert np.median(voxel_r2(P, Y)) > np.median(voxel_r2(np.zeros_like(Y), Y))
    assert rep["pooled"]["median_r"] > 0 and np.sign(rep["pooled"]["median_r"]) == np.sign(ridge["pooled"]["median_r"])
    # per-voxel gains fitted out of sample: positive, at most 1
    gain = model.gain.numpy()
    assert gain.shape == (g.n_voxels,) and (gain > 0).all() and (gain <= 1).all()
    assert "by_roi" in rep and rep["by_roi"] and all("calibration_slope" in v for v in rep["by_roi"].values())
    assert set(ridge["films"]) == set(g.film_names) and "by_roi" in ridge
    g0.close()


def _cache(tmp_path):
    from napari_nrf.features import FeatureCache

    return FeatureCache(tmp_path / "cache")


def test_history_streams_and_block_validation(tiny_movies):
    """Predictions of a film in batches (each given the chunks before it) equal one pass;
    film_volumes has no NaN (delay 0); block validation keeps the test TRs."""
    from napari_nrf.models.movie_features import MovieFeatureEncoder
    from napari_nrf.movie import MovieDataset
    from napari_nrf.movie.evaluate import film_volumes, predict_chunks
    from napari_nrf.recipes import block_split

    g = MovieDataset.load(tiny_movies / "group.h5")
    torch.manual_seed(0)
    m = MovieFeatureEncoder(g.n_voxels, frames_per_tr=4, frame_size=32, features="pixels", history=5).eval()
    torch.nn.init.normal_(m.readout.weight)
    m.subjects = {"group": g.coords}
    chunks = np.asarray(g.films[g.film_names[0]]["frames"])
    one = predict_chunks(m, chunks, batch=len(chunks))
    np.testing.assert_allclose(predict_chunks(m, chunks, batch=7), one, rtol=1e-4, atol=1e-5)
    assert np.isfinite(film_volumes(m, chunks, batch=3)).all()
    # the history matters: a TR's prediction changes with the chunks before it
    alt = chunks.copy()
    alt[10] = 255 - alt[10]
    p2 = predict_chunks(m, alt, batch=len(alt))
    assert np.abs(p2[12] - one[12]).max() > 1e-4 and np.allclose(p2[:10], one[:10], atol=1e-6)
    rs = g.training_set(0)
    sp = block_split(rs.split, rs.images.film)
    assert ((sp == 2) == (rs.split == 2)).all() and (sp == 1).sum() > 0
    for f in np.unique(rs.images.film)[:2]:  # one contiguous validation block per training film
        v = np.flatnonzero((rs.images.film == f) & (sp == 1))
        if len(v):
            assert (np.diff(v) == 1).all()
    g.close()


def test_kernels_start_as_the_canonical_hrf():
    from napari_nrf.models.movie_features import hrf_kernels

    k = hrf_kernels(1.3, 10, 4)
    assert k.shape == (4, 10) and int(np.argmax(k[0])) == 4  # SPM peak at 5 s: 4 TR of 1.3 s
    assert int(np.argmax(k[1])) == 5 and int(np.argmax(k[2])) == 3  # the delayed and advanced copies


def test_cli_default_is_the_feature_model_and_conv_is_a_preset(tiny_movies, tmp_path, capsys):
    from napari_nrf.cli import main
    from napari_nrf.models import load_model
    from napari_nrf.movie.video import write_video
    from napari_nrf.simulate.movies import make_film
    import nibabel as nib

    m = tmp_path / "m.safetensors"
    assert main(["train-movie", str(tiny_movies / "group.h5"), "--out", str(m), "--epochs", "2",
                 "--device", "cpu"]) == 0
    model = load_model(m)
    assert model.kind == "movie-features" and model.w == 1.0 and model.features == "efficientnet-lite0"
    capsys.readouterr()
    assert main(["evaluate-movie", str(m), str(tiny_movies / "group.h5"), "--ridge", "pixels", "--perm", "0",
                 "--json", str(tmp_path / "e.json")]) == 0
    text = capsys.readouterr().out
    assert "FIR ridge" in text and "held-out film" in text and "ROI " in text
    rep = json.loads((tmp_path / "e.json").read_text())
    for k in ("model", "fir_ridge"):
        assert {"median_r", "median_r2", "calibration_slope"} <= set(rep[k]["pooled"])
    film = write_video(tmp_path / "f.mp4", make_film(8, tr=1.3, frames_per_tr=4, size=32, seed=5).frames, fps=4 / 1.3)
    pred = tmp_path / "pred.nii.gz"
    assert main(["query-movie", str(m), str(film), "--out", str(pred), "--batch", "3"]) == 0
    data = np.asarray(nib.load(str(pred)).dataobj)
    assert data.shape[3] == 8 and np.isfinite(data).sum() == 8 * model.n_voxels  # delay 0: no empty volume
    c = tmp_path / "c.safetensors"
    assert main(["train-movie", str(tiny_movies / "group.h5"), "--out", str(c), "--arch", "conv", "--size", "tiny",
                 "--epochs", "1"]) == 0
    conv = load_model(c)
    assert conv.kind == "movie" and conv.w == 0.5 and conv.delay == 4
    assert conv.provenance["training"]["mode"] == "movie"


@pytest.mark.gui
def test_movie_widget_predicts_with_the_feature_model(tiny_movies, make_napari_viewer, qtbot, tmp_path):
    """The Movie response widget runs the default kind: a dropped video, delay 0 (every
    volume predicted), the measured time course of a data-set film beside it."""
    from _plugin import open_widgets
    from napari_nrf.models.movie_features import MovieFeatureEncoder
    from napari_nrf.movie import MovieDataset
    from napari_nrf.movie.video import write_video
    from napari_nrf.simulate.movies import make_film

    g = MovieDataset.load(tiny_movies / "group.h5")
    torch.manual_seed(0)
    m = MovieFeatureEncoder(g.n_voxels, frames_per_tr=4, frame_size=32, features="pixels", history=4)
    m.subjects = {"group": g.coords}
    m.backbone_name = "efficientnet-lite0"
    m.save(tmp_path / "m.safetensors")
    film = write_video(tmp_path / "film.mp4", make_film(10, tr=1.3, frames_per_tr=4, size=32, seed=9).frames,
                       fps=4 / 1.3)
    viewer = make_napari_viewer()
    w = open_widgets(viewer, ["Movie response"])["Movie response"]
    w.load_model(tmp_path / "m.safetensors")  # a worker, through the viewer's one shared model
    qtbot.waitUntil(lambda: w.state.model is not None, timeout=30000)
    assert w.run_btn.isEnabled() and "delay 0 TR" in w.model_label.text()
    w.set_source(film)
    got = []
    w.done.connect(got.append)
    w.predict()
    qtbot.waitUntil(lambda: bool(got) or "failed" in w.info.text(), timeout=60000)
    assert got, w.info.text()
    data = viewer.layers["movie prediction"].data
    assert data.shape[0] == 10 and np.isfinite(data[0]).any()  # delay 0: the first volume is predicted
    w.open_dataset(tiny_movies / "group.h5")
    w.film.setCurrentText(g.film_names[1])
    got.clear()
    w.predict()
    qtbot.waitUntil(lambda: bool(got) or "failed" in w.info.text(), timeout=60000)
    assert got and w.show_time_course(g.coords[0])
    w.dataset.close()
    g.close()
