"""Movies (seed 003): video in, movie data sets, virtual films, the encoder-decoder kind,
its training through the one loop, evaluation, the FIR ridge baseline and the CLI."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

from napari_nrf.movie import ChunkView, MovieDataset, MovieError, film_info, movie_splits, read_film, snr_selection
from napari_nrf.movie.video import write_video


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


# ---- video in ----------------------------------------------------------------------------
def _frame_folder(path, n=20, size=16):
    """Frame i lights pixel (i // size, i % size) only: which frame was picked is readable."""
    path.mkdir()
    for i in range(n):
        a = np.zeros((size, size, 3), np.uint8)
        a[i // size, i % size] = 200
        Image.fromarray(a).save(path / f"f{i:04d}.png")
    return path


def _which(frame, size=16):
    return int(np.argmax(frame[..., 0].ravel()))


def test_frame_folder_uniform_selection_and_minmax(tmp_path):
    d = _frame_folder(tmp_path / "frames")
    c = read_film(d, tr=0.4, frames_per_tr=4, size=16, fps=10)  # 2 s -> 5 TR of 4 frames, frame 4t + k
    assert c.shape == (5, 4, 16, 16, 3) and c.dtype == np.uint8
    assert [[_which(f) for f in ch] for ch in c] == [[4 * t + k for k in range(4)] for t in range(5)]
    assert c.max() == 255 and c.min() == 0  # min-max scaled per frame
    c2 = read_film(d, tr=0.4, frames_per_tr=2, size=16, fps=10, onset=0.2, n_trs=3)
    assert [[_which(f) for f in ch] for ch in c2] == [[2, 4], [6, 8], [10, 12]]


def test_frame_folder_needs_fps_and_readable_frames(tmp_path):
    d = _frame_folder(tmp_path / "frames", n=4)
    with pytest.raises(MovieError, match="frame rate"):
        read_film(d, tr=0.4, frames_per_tr=2, size=16)
    (d / "f9999.png").write_bytes(b"not a png")
    with pytest.raises(MovieError, match="f9999.png"):
        read_film(d, tr=0.1, frames_per_tr=2, size=16, fps=10)


def _bar_frames(n, size=64):
    """Frame i shows a bright vertical bar at columns 4i..4i+3 (survives MPEG-4)."""
    fr = np.full((n, size, size, 3), 30, np.uint8)
    for i in range(n):
        fr[i, :, 4 * i:4 * i + 4] = 230
    return fr


def _bar_of(frame):
    return int(round(np.argmax(frame[..., 0].mean(0).reshape(-1, 4).mean(1))))


def test_video_variable_frame_rate_is_sampled_by_timestamps(tmp_path):
    times = np.cumsum(np.r_[0, [0.05 if i % 2 else 0.15 for i in range(15)]])  # 16 frames, irregular
    p = write_video(tmp_path / "vfr.mp4", _bar_frames(16), fps=10, times=times)
    info = film_info(p)
    assert info.n_frames == 16 and info.variable_rate
    c = read_film(p, tr=0.4, frames_per_tr=4, size=64, n_trs=3)
    for t in range(3):
        for k in range(4):
            target = t * 0.4 + k * 0.1
            assert _bar_of(c[t, k]) == int(np.searchsorted(times, target + 1e-9, side="right") - 1)


def test_video_constant_rate_resized(tmp_path):
    p = write_video(tmp_path / "c.mp4", _bar_frames(16), fps=10)
    c = read_film(p, tr=0.4, frames_per_tr=4, size=32)
    assert c.shape == (4, 4, 32, 32, 3)
    big = read_film(p, tr=0.4, frames_per_tr=4, size=64)
    assert [_bar_of(f) for f in big.reshape(-1, 64, 64, 3)] == list(range(16))
    # the one reused scaler gives exactly what FFmpeg's per-frame reformat gives
    import av

    from napari_nrf.movie.video import minmax_uint8

    with av.open(str(p)) as cont:
        ref = [minmax_uint8(f.reformat(width=32, height=32, format="rgb24", interpolation="BILINEAR").to_ndarray())
               for f in cont.decode(video=0)]
    np.testing.assert_array_equal(c.reshape(-1, 32, 32, 3), np.stack(ref))


def test_bad_films_get_clear_errors(tmp_path):
    bad = tmp_path / "broken.mp4"
    bad.write_bytes(b"\x00\x01garbage" * 100)
    with pytest.raises(MovieError, match="broken.mp4: not a readable video"):
        read_film(bad, tr=1.0, frames_per_tr=2, size=16)
    p = write_video(tmp_path / "ok.mp4", _bar_frames(16), fps=10)
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(p.read_bytes()[: p.stat().st_size // 2])
    with pytest.raises(MovieError, match="cut.mp4"):
        read_film(cut, tr=0.4, frames_per_tr=2, size=16)
    with pytest.raises(MovieError, match=r"lasts 1.60 s; 10 TR of 0.4 s"):
        read_film(p, tr=0.4, frames_per_tr=2, size=16, n_trs=10)
    with pytest.raises(MovieError, match="even"):
        read_film(p, tr=0.4, frames_per_tr=3, size=16)
    with pytest.raises(FileNotFoundError):
        read_film(tmp_path / "nope.mp4", tr=0.4)


# ---- data sets -------------------------------------------------------------------------------
def test_splits_follow_the_paper():
    s = movie_splits({"a": 100, "b": 30}, held_out="b")
    assert (s["b"] == 2).all()
    a = s["a"]
    assert (a[80:] == 2).all() and (a[:80] != 2).all()
    assert np.flatnonzero(a == 1).tolist() == list(range(4, 80, 5))


def test_snr_selection_prefers_shared_signal():
    rng = np.random.default_rng(0)
    sig = rng.standard_normal((50, 1))
    y = np.concatenate([sig + 0.3 * rng.standard_normal((4, 50, 5)),  # 5 voxels with a shared signal
                        rng.standard_normal((4, 50, 15))], axis=2)      # 15 of noise alone
    snr, keep = snr_selection(y, top=0.25)
    assert keep.sum() == 5 and keep[:5].all()
    with pytest.raises(MovieError, match="2 subjects"):
        snr_selection(y[:1])


@pytest.fixture(scope="module")
def sim(tmp_path_factory):
    from napari_nrf.simulate.movies import simulate_movies

    out = tmp_path_factory.mktemp("sim")
    ds = simulate_movies(out, n_subjects=2, n_films=2, n_trs=36, frames_per_tr=4, size=32, max_voxels=80, seed=1)
    return out, ds


def test_simulated_films_and_bold(sim):
    from napari_nrf.simulate.movies import make_film

    f = make_film(10, tr=1.3, frames_per_tr=4, size=32, seed=2)
    assert f.chunks.shape == (10, 4, 32, 32, 3) and len(f.shots) >= 2
    assert f.onset[0] == 1 and (f.onset[f.shots[1]["start"]]) == 1 and f.motion[f.shots[1]["start"]] == 0
    assert f.motion.max() > 0  # pans and moving patches
    _, ds = sim
    g = ds["group"]
    assert set(ds) == {"group", "sub-01", "sub-02"} and g.meta["delay_tr"] == 4 and g.held_out == "film-02"
    y, t = g.films["film-01"]["responses"], g.films["film-01"]["truth"]
    np.testing.assert_allclose(y.std(0), 1, atol=1e-3)  # z-scored per film
    r = [np.corrcoef(y[:, v], t[:, v])[0, 1] for v in range(g.n_voxels)]
    assert np.median(r) > 0.5  # the truth is the noiseless part, in the responses' units
    assert g.snr is not None and g.snr.shape == (g.n_voxels,)


def test_dataset_round_trip_is_lazy_and_delays_pair_chunks_with_later_responses(sim):
    out, ds = sim
    g = MovieDataset.load(out / "group.h5")
    try:
        assert g.film_names == ["film-01", "film-02"] and g.frames_per_tr == 4 and g.tr == 1.3
        assert not isinstance(g.films["film-01"]["frames"], np.ndarray)  # h5py: on disk
        rs = g.training_set(delay=3)
        assert isinstance(rs.images, ChunkView) and rs.n_images == 2 * (36 - 3)
        row = 36 - 3 + 5  # film-02, TR 5
        np.testing.assert_array_equal(rs.get_responses([row])[0], g.films["film-02"]["responses"][8])
        np.testing.assert_array_equal(np.asarray(rs.images[[row]])[0], ds["group"].films["film-02"]["frames"][5])
        assert (rs.split[36 - 3:] == 2).all()
        still = g.training_set(delay=3, still=True)
        ch = np.asarray(still.images[:2])
        assert (ch == ch[:, 2:3]).all()
    finally:
        g.close()


def test_writing_is_atomic(tmp_path):
    from napari_nrf.movie import write_movie_dataset

    fr = np.zeros((5, 2, 16, 16, 3), np.uint8)
    films = {"a": {"frames": iter(fr[:4]), "responses": np.zeros((5, 3)), "split": np.zeros(5)}}
    with pytest.raises(MovieError, match="4 chunks of frames for 5 TR"):
        write_movie_dataset(tmp_path / "m.h5", films, np.zeros((3, 3)), 1.0)
    assert list(tmp_path.iterdir()) == []


# ---- the model kind through the one loop --------------------------------------------------
def test_paper_size_has_the_papers_parameter_counts():
    from napari_nrf.models.movie import MovieEncoderDecoder

    with torch.device("meta"):
        m = MovieEncoderDecoder(4609, size="paper")
    enc = sum(p.numel() for n, p in m.named_parameters() if not n.startswith("dec"))
    dec = sum(p.numel() for n, p in m.named_parameters() if n.startswith("dec"))
    assert round(enc / 1e6, 1) == 63.8 and round(m.readout.weight.numel() / 1e6, 1) == 57.8
    assert round(dec / 1e6, 1) == 43.5
    with torch.device("meta"):
        e = MovieEncoderDecoder(4609, size="paper", w=1.0)
    assert not e.has_decoder and not any(n.startswith("dec") for n, _ in e.named_parameters())


@pytest.mark.parametrize("size", ["tiny", "demo"])
def test_fast_encoder_path_equals_the_reference_layers(size):
    """encode (channels-last 2D convs, strided max, one grouped conv) == encode_reference
    (the paper's Conv3d / MaxPool3d / AvgPool3d / per-slice Conv2d), in eval and in
    training (same outputs, gradients and BatchNorm running statistics)."""
    from napari_nrf.models.movie import MovieEncoderDecoder

    torch.manual_seed(0)
    m = MovieEncoderDecoder(37, frames_per_tr=6, frame_size=32, size=size, w=1.0, perceptual="none")
    for mod in m.modules():  # BatchNorm statistics away from the identity
        if isinstance(mod, torch.nn.BatchNorm2d):
            mod.running_mean.uniform_(-0.1, 0.1)
            mod.running_var.uniform_(0.01, 0.1)
    x = torch.randint(0, 256, (3, 6, 32, 32, 3), dtype=torch.uint8)
    m.eval()
    with torch.inference_mode():
        ref, fast = m.encode_reference(x), m.encode(x)
    assert ref.abs().max() > 0.1
    torch.testing.assert_close(fast, ref, rtol=1e-5, atol=1e-5 * float(ref.abs().max()))
    m.train()
    m2 = MovieEncoderDecoder(37, frames_per_tr=6, frame_size=32, size=size, w=1.0, perceptual="none")
    m2.load_state_dict(m.state_dict())
    m2.train()
    outs = []
    for net, f in ((m, m.encode_reference), (m2, m2.encode)):
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(1)  # the same dropout mask
            y = f(x)
        y.square().mean().backward()
        outs.append((y.detach(), net.conv1.weight.grad.clone(), net.slices[2][0].weight.grad.clone()))
    for a, b in zip(*outs):
        torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-5 * float(a.abs().max()))
    for k, v in m.state_dict().items():
        if "running" in k:
            torch.testing.assert_close(m2.state_dict()[k], v, rtol=1e-5, atol=1e-6)


def test_combined_loss_and_perceptual_term(effnet):
    from napari_nrf.models.movie import MovieEncoderDecoder

    torch.manual_seed(0)
    frames = torch.randint(0, 255, (3, 4, 32, 32, 3), dtype=torch.uint8)
    y = torch.randn(3, 10)
    ed = MovieEncoderDecoder(10, frames_per_tr=4, frame_size=32, size="tiny", perceptual="efficientnet-lite0")
    object.__setattr__(ed, "_backbone", effnet)
    ed.backbone_name = "efficientnet-lite0"
    terms = ed.loss_dict({"frames": frames}, y, "group", torch.arange(10), None)
    assert set(terms) == {"encoding", "frame"}
    loss = sum(terms.values())
    loss.backward()
    assert torch.isfinite(loss) and ed.conv1.weight.grad is not None and ed.dec_in.weight.grad is not None
    assert not any(p.grad is not None for p in effnet.parameters())  # the backbone stays frozen
    with torch.no_grad():
        rec = ed.decode(ed.encode(frames))
    assert rec.shape == (3, 3, 32, 32) and float(rec.min()) >= 0 and float(rec.max()) <= 1
    # w = 1 is the encoder alone: E only
    e = MovieEncoderDecoder(10, frames_per_tr=4, frame_size=32, size="tiny", w=1.0, perceptual="none")
    e.load_state_dict({k: v for k, v in ed.state_dict().items() if not k.startswith("dec")})
    from napari_nrf.models.movie import voxel_loss

    e.eval()
    with torch.no_grad():
        assert torch.allclose(sum(e.loss_dict({"frames": frames}, y, "g", slice(None), None).values()),
                              voxel_loss(e.encode(frames), y))


def test_train_movie_lazy_batches_and_evaluation(sim, monkeypatch):
    from napari_nrf.movie.evaluate import evaluate_movie, fir_ridge
    from napari_nrf.recipes import train_movie

    out, _ = sim
    g = MovieDataset.load(out / "group.h5")
    reads = []
    orig = ChunkView.__array__

    def spy(self, dtype=None, copy=None):
        reads.append(len(self))
        return orig(self, dtype, copy)

    monkeypatch.setattr(ChunkView, "__array__", spy)
    try:
        model, hist = train_movie(g, size="tiny", delay=4, epochs=2, lr=1e-3, batch_images=8)
        assert len(hist.records) == 2 and np.isfinite(hist.records[-1]["train_loss"])
        assert reads and max(reads) <= 8  # never the whole film: one batch at a time
        assert model.delay == 4 and model.n_voxels == g.n_voxels
        rep = evaluate_movie(model, g, n_perm=10)
        assert rep["held_out_film"]["n_trs"] == 36 - 4 and rep["segments"]["n_trs"] > 0
        assert 0 <= rep["ssim_predicted"] <= 1 and "fraction_p05" in rep["pooled"]
        from napari_nrf.movie.evaluate import decoder_saliency

        sal = decoder_saliency(model, g)
        assert sal["per_voxel"].shape == (g.n_voxels,) and (sal["per_voxel"] >= 0).all()
        assert abs(sum(sal["by_roi"].values()) - 1) < 1e-6 and set(sal["by_roi"]) <= set(g.roi_names.values()) | {"none"}
        fr = fir_ridge(g, features="pixels")
        assert fr["delays"] == [1, 2, 3, 4] and np.isfinite(fr["pooled"]["median_r"])
    finally:
        g.close()


def test_static_baselines_on_middle_frames_read_lazily_and_score_like_the_movie_model(sim, monkeypatch, tmp_path):
    from napari_nrf.features import FeatureCache
    from napari_nrf.movie.baselines import evaluate_static, middle_frame_set, train_static
    from napari_nrf.movie.evaluate import evaluate_movie

    cache = FeatureCache(tmp_path / "cache")  # the films' middle frames are encoded once
    out, ds = sim
    g = MovieDataset.load(out / "group.h5")
    subs = [MovieDataset.load(out / f"sub-0{i}.h5") for i in (1, 2)]
    try:
        rs = middle_frame_set(g, delay=4)
        assert isinstance(rs.images, ChunkView) and rs.images.frame == 2
        assert rs.images.shape == (2 * (36 - 4), 32, 32, 3)
        row = 36 - 4 + 7  # film-02, TR 7: its middle frame, paired with the response of TR 11
        np.testing.assert_array_equal(rs.get_images([row])[0], ds["group"].films["film-02"]["frames"][7][2])
        np.testing.assert_array_equal(rs.get_responses([row])[0], g.films["film-02"]["responses"][11])
        np.testing.assert_array_equal(rs.split, g.training_set(4).split)
        read = ChunkView._read

        def frames_only(self, source, rows):
            if self.frame is None:
                pytest.fail("read whole chunks")
            return read(self, source, rows)

        monkeypatch.setattr(ChunkView, "_read", frames_only)
        nrf, hist = train_static(g, "nrf", delay=4, steps=4, preset="tiny", feature_cache=cache)
        assert nrf.kind == "nrf" and nrf.provenance["training"]["movie_baseline"]["delay_tr"] == 4
        rep = evaluate_static(nrf, g, delay=4, n_perm=5, feature_cache=cache)
        monkeypatch.undo()
        ref = evaluate_movie(_tiny_movie(g), g, n_perm=0)
        for part in ("pooled", "held_out_film", "segments"):
            assert rep[part]["n_trs"] == ref[part]["n_trs"]
            assert {"median_r", "mean_r", "median_r2", "calibration_slope", "spatial_r_mean"} <= set(rep[part])
        assert np.isfinite(rep["pooled"]["median_r"]) and "fraction_p05" in rep["pooled"]
        # the Universal encoder jointly over the single subjects (each its own voxel embeddings)
        uni, _ = train_static(subs, "universal", delay=4, epochs=1, model_config=dict(embed_dim=8, channels=8),
                              feature_cache=cache)
        assert set(uni.voxel_embeddings) == {"sub-01", "sub-02"}
        r1 = evaluate_static(uni, subs[0], delay=4, feature_cache=cache)
        assert r1["kind"] == "universal" and np.isfinite(r1["pooled"]["median_r"])
        with pytest.raises(MovieError, match="kind"):
            train_static(g, "ridge")
    finally:
        g.close()
        for s_ in subs:
            s_.close()


def _tiny_movie(g, delay=4):
    from napari_nrf.models.movie import MovieEncoderDecoder

    m = MovieEncoderDecoder(g.n_voxels, frames_per_tr=4, frame_size=32, size="tiny", delay=delay, w=1.0,
                            perceptual="none")
    m.subjects = {"group": g.coords}
    return m


def test_cli_simulate_train_evaluate_query(tmp_path):
    import nibabel as nib

    from napari_nrf.cli import main
    from napari_nrf.simulate.movies import make_film

    sim = tmp_path / "sim"
    assert main(["simulate-movie", "--out", str(sim), "--subjects", "2", "--films", "2", "--trs", "24",
                 "--frames-per-tr", "4", "--size", "32", "--max-voxels", "40"]) == 0
    m = tmp_path / "m.safetensors"
    assert main(["train-movie", str(sim / "group.h5"), "--out", str(m), "--arch", "conv", "--size", "tiny",
                 "--epochs", "1",
                 "--snr-top", "0.5", "--device", "cpu"]) == 0
    assert main(["evaluate-movie", str(m), str(sim / "group.h5"), "--ridge", "pixels", "--perm", "5",
                 "--json", str(tmp_path / "e.json"), "--device", "cpu", "--saliency", "--baselines", "fir,nrf",
                 "--baseline-steps", "3"]) == 0
    rep = json.loads((tmp_path / "e.json").read_text())
    assert {"model", "fir_ridge", "saliency_by_roi", "static_nrf"} <= set(rep) and rep["model"]["delay"] == 4
    # the static baseline is scored on the same test TRs and voxels as the movie model
    assert rep["static_nrf"]["pooled"]["n_trs"] == rep["model"]["pooled"]["n_trs"]
    assert rep["static_nrf"]["delay"] == 4 and "calibration_slope" in rep["static_nrf"]["pooled"]
    assert main(["evaluate-movie", str(m), str(sim / "group.h5"), "--baselines", "fir,svm",
                 "--json", str(tmp_path / "e2.json")]) != 0
    film = write_video(tmp_path / "f.mp4", make_film(8, tr=1.3, frames_per_tr=4, size=32, seed=5).frames, fps=4 / 1.3)
    pred = tmp_path / "pred.nii.gz"
    assert main(["query-movie", str(m), str(film), "--out", str(pred), "--device", "cpu"]) == 0
    img = nib.load(str(pred))
    assert img.ndim == 4 and img.shape[3] == 8 and float(img.header.get_zooms()[3]) == pytest.approx(1.3)
    assert int(img.header["sform_code"]) == 4
    data = np.asarray(img.dataobj)
    assert np.isnan(data[..., :4]).all() and np.isfinite(data[..., 4:]).sum() == 4 * 20  # delay 4, 20 voxels
    # bad inputs: one line, nothing written
    bad = tmp_path / "bad.mp4"
    bad.write_bytes(b"junk" * 50)
    assert main(["query-movie", str(m), str(bad), "--out", str(tmp_path / "x.nii.gz")]) != 0
    assert not (tmp_path / "x.nii.gz").exists()
    assert main(["train-movie", str(sim / "sub-01.h5"), "--out", str(tmp_path / "y.safetensors"), "--w", "2"]) == 2


# ---- import-movie from NIfTI runs --------------------------------------------------------------
def _runs(tmp_path, n_subjects=3, T=30, seed=0):
    """BOLD runs on a 6 mm grid over the occipital lobe: 20 voxels share a signal, the rest noise."""
    from napari_nrf import space

    grid = space.Grid.from_extent(6.0, [-30, -100, -20], [30, -60, 20])
    rng = np.random.default_rng(seed)
    sig = rng.standard_normal(T)
    mask = np.zeros(grid.shape, bool)
    mask.reshape(-1)[:20] = True
    paths = []
    for s in range(n_subjects):
        y = 100 + rng.standard_normal(grid.shape + (T,))
        y[mask] += 2 * sig[None]
        p = tmp_path / f"sub-{s + 1:02d}_bold.nii.gz"
        space.save_nifti(y.astype(np.float32), grid, p)
        paths.append(p)
    return grid, mask, paths


def test_import_movie_group_average_snr_selection_and_bad_inputs(tmp_path):
    from napari_nrf.cli import main
    from napari_nrf.simulate.movies import make_film

    grid, mask, runs = _runs(tmp_path)
    film = write_video(tmp_path / "film.mp4", make_film(32, tr=1.0, frames_per_tr=4, size=32, seed=1).frames, fps=4)
    out = tmp_path / "m.h5"
    assert main(["import-movie", str(film), "--bold", *map(str, runs), "--tr", "1.0", "--frames-per-tr", "4",
                 "--size", "32", "--mask", "none", "--snr-top", "0.03", "--out", str(out)]) == 0
    ds = MovieDataset.load(out)
    try:
        assert ds.subject == "group" and ds.n_trs(ds.film_names[0]) == 30 and ds.frames_per_tr == 4
        want = grid.coords(mask)
        kept = {tuple(c) for c in np.round(ds.coords, 3)}
        assert ds.n_voxels == round(0.03 * grid.n_points) and kept <= {tuple(c) for c in np.round(want, 3)}
        np.testing.assert_allclose(ds.films[ds.film_names[0]]["responses"].std(0), 1, atol=1e-3)
    finally:
        ds.close()
    # a film shorter than the runs, a single run with --snr-top: refused, nothing written
    short = write_video(tmp_path / "short.mp4", make_film(8, tr=1.0, frames_per_tr=4, size=32).frames, fps=4)
    assert main(["import-movie", str(short), "--bold", str(runs[0]), "--tr", "1.0", "--mask", "none",
                 "--out", str(tmp_path / "s.h5")]) == 2
    assert main(["import-movie", str(film), "--bold", str(runs[0]), "--tr", "1.0", "--snr-top", "0.3",
                 "--out", str(tmp_path / "t.h5")]) == 2
    assert not (tmp_path / "s.h5").exists() and not (tmp_path / "t.h5").exists()


def test_movie_layers_import_one_way():
    """movie.video / movie.dataset sit with data (models may import them); nothing in
    movie/ imports the CLI, the widgets or Qt."""
    import ast
    from pathlib import Path

    import napari_nrf

    src = Path(napari_nrf.__file__).parent / "movie"
    for p in src.glob("*.py"):
        mods = set()
        for node in ast.walk(ast.parse(p.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module:
                mods.add(("." * node.level) + node.module)
            elif isinstance(node, ast.Import):
                mods.update(a.name for a in node.names)
        bad = {m for m in mods if m.startswith(("napari_nrf.cli", "napari_nrf.widgets", "qtpy", "napari."))}
        if p.stem in ("video", "dataset"):
            bad |= {m for m in mods if m.startswith(("napari_nrf.train", "napari_nrf.models", "napari_nrf.recipes"))}
        assert not bad, f"movie/{p.name} imports {sorted(bad)}"
