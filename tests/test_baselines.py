"""Baselines (issue 22): robust ridge with spatial features, and fWRF trained by the NRF's loop."""

import numpy as np
import pytest
import torch

from napari_nrf.baselines import FWRF, BaselineError, RidgeBaseline, build_fwrf, fit_fwrf
from napari_nrf.data.responseset import ResponseSet
from napari_nrf.evaluate import calibration_slope, evaluate, format_table, metrics


def _feats(rng, n, side=4, c=6):
    """A token map (n, side^2, c) and a pooled embedding (n, 5)."""
    return {"s16": rng.standard_normal((n, side * side, c)).astype(np.float32),
            "embedding": rng.standard_normal((n, 5)).astype(np.float32)}


def test_ridge_stays_bounded_with_a_near_constant_training_column(rng):
    n_tr, n_te = 60, 20
    f_tr, f_te = _feats(rng, n_tr), _feats(rng, n_te)
    w = rng.standard_normal(5)
    y_tr = (f_tr["embedding"] @ w)[:, None] + 0.3 * rng.standard_normal((n_tr, 3))
    # Column 0 of the embedding: constant up to 1e-7 on the training images, but of size
    # ~1 on the test images (what 63 EfficientNet columns do on 200 natural images).
    f_tr["embedding"][:, 0] = 0.5 + 1e-7 * rng.standard_normal(n_tr)
    f_te["embedding"][:, 0] = 0.5 + rng.standard_normal(n_te)
    for spatial in (False, True):
        rb = RidgeBaseline(spatial=spatial).fit(f_tr, y_tr)
        pred = rb.predict(f_te)
        assert rb.n_dropped_ >= 1
        assert np.all(np.isfinite(pred))
        assert np.abs(pred).max() <= 3 * np.abs(y_tr).max()  # bounded by the training range
    # The old standardisation (sd + 1e-6) explodes on the same design.
    x = f_tr["embedding"].astype(np.float64)
    z_te = (f_te["embedding"][:, 0] - x[:, 0].mean()) / (x[:, 0].std() + 1e-6)
    assert np.abs(z_te).max() > 1e4


def test_ridge_refuses_designs_it_cannot_fit(rng):
    f = _feats(rng, 10)
    with pytest.raises(BaselineError, match="at least 2"):
        RidgeBaseline().fit({k: v[:1] for k, v in f.items()}, np.zeros((1, 3)))
    bad = {k: v.copy() for k, v in f.items()}
    bad["embedding"][3, 2] = np.nan
    with pytest.raises(BaselineError, match="NaN"):
        RidgeBaseline().fit(bad, rng.standard_normal((10, 3)))
    const = {k: np.ones_like(v) for k, v in f.items()}
    with pytest.raises(BaselineError, match="constant"):
        RidgeBaseline(spatial=False).fit(const, rng.standard_normal((10, 3)))


def test_spatial_ridge_sees_where_in_the_image(rng):
    """Voxels driven by the top-left token only: averaging over tokens loses most of it."""
    n_tr, n_te = 150, 50
    f_tr, f_te = _feats(rng, n_tr), _feats(rng, n_te)
    y = lambda f: f["s16"][:, 0, :2].sum(1, keepdims=True) * np.ones((1, 4))  # noqa: E731
    y_tr = y(f_tr) + 0.2 * rng.standard_normal((n_tr, 4))
    r_pool = metrics(RidgeBaseline(spatial=False).fit(f_tr, y_tr).predict(f_te), y(f_te))["pearson_median"]
    r_sp = metrics(RidgeBaseline(spatial=True).fit(f_tr, y_tr).predict(f_te), y(f_te))["pearson_median"]
    assert r_sp > 0.8 and r_sp > r_pool + 0.3


def test_fwrf_finds_a_receptive_field_through_the_training_loop(rng):
    """Voxel responses = channel 0 of the token map near one image corner; fWRF trained by
    train.fit with its defaults recovers the responses and moves its field there."""
    side, n = 6, 160
    feats = {"s16": rng.standard_normal((n, side * side, 4)).astype(np.float32)}
    corner = [0, 1, side, side + 1]  # top-left 2 x 2 tokens
    sig = feats["s16"][:, corner, 0].mean(1)
    y = sig[:, None] * np.ones((1, 3)) + 0.2 * rng.standard_normal((n, 3))
    y = ((y - y.mean(0)) / y.std(0)).astype(np.float32)
    split = np.zeros(n, np.uint8)
    split[120:140], split[140:] = 1, 2
    rs = ResponseSet(responses=y, coords=np.zeros((3, 3), np.float32), split=split,
                     images=np.zeros((n, 2, 2, 3), np.uint8), subject="sub-x")
    model, hist = fit_fwrf(rs, feats, steps=300, token_maps={"s16": None})
    assert isinstance(model, FWRF) and hist.best_epoch >= 0
    te = rs.indices("test")
    with torch.no_grad():
        pred = model.predict({"s16": torch.from_numpy(feats["s16"][te])}).numpy()
    m = metrics(pred, y[te])
    assert m["pearson_median"] > 0.8
    assert 0.7 <= m["calibration_slope"] <= 1.4
    assert np.all(model.mu.detach().numpy() < 0)  # the field moved towards the top-left corner


def test_calibration_slope_measures_shrinkage(rng):
    t = rng.standard_normal((30, 50))
    t -= t.mean(0)
    assert calibration_slope(t, t) == pytest.approx(1.0)
    assert calibration_slope(0.1 * t + 3.0, t) == pytest.approx(10.0)
    m = metrics(0.5 * t, t, truth=t)
    assert m["calibration_slope"] == pytest.approx(2.0) and m["r2_median"] == pytest.approx(0.75, abs=1e-5)
    assert m["truth_calibration_slope"] == pytest.approx(2.0)
    nc = np.full(50, 50.0)
    assert metrics(t, t, noise_ceiling=nc)["nc_r2_median"] == pytest.approx(2.0)


def test_evaluate_reports_both_baselines(rng):
    from napari_nrf.models.nrf import build_nrf

    n, v = 80, 6
    feats = {"s16": rng.standard_normal((n, 16, 6)).astype(np.float32),
             "embedding": rng.standard_normal((n, 5)).astype(np.float32)}
    y = (feats["s16"][:, :4, 0].mean(1)[:, None] * np.ones((1, v))
         + 0.3 * rng.standard_normal((n, v))).astype(np.float32)
    split = np.zeros(n, np.uint8)
    split[56:68], split[68:] = 1, 2
    rs = ResponseSet(responses=y, coords=rng.uniform(-40, 40, (v, 3)).astype(np.float32), split=split,
                     images=np.zeros((n, 2, 2, 3), np.uint8), subject="sub-e")
    model = build_nrf("efficientnet-lite0", "tiny", feature_shapes={"s16": (16, 6), "embedding": (5,)},
                      token_maps={"s16": None})
    rep = evaluate(model, rs, features=feats, baselines=("ridge", "fwrf"), fit_kwargs={"steps": 60})
    for b in ("ridge", "fwrf"):
        assert {"r2_median", "calibration_slope", "mse", "pearson_median"} <= set(rep[b])
    assert "calibration_slope" in rep and "r2_median" in rep
    table = format_table([rep])
    assert "fwrf" in table and "slope" in table and "R2 median" in table


def test_ridge_improves_with_more_training_images(rng):
    """A fair baseline does not get worse with more data: held-out r and R^2 of the ridge
    (pooled and spatial) rise from 40 to 80 to 160 training images on a noisy linear world
    with more feature columns (250) than images, NRF-like sizes in miniature.

    Fails on a ridge whose leave-one-out alpha choice ignores the centring (fit_intercept
    False on centred data: it picks the smallest alpha and interpolates the noise)."""
    d, v = 250, 8
    w = rng.standard_normal((d, v)) / np.sqrt(d)

    def world(n):
        f = {"embedding": rng.standard_normal((n, d)).astype(np.float32),
             "s16": rng.standard_normal((n, 16, 4)).astype(np.float32)}
        t = f["embedding"] @ w
        return f, t, t + 0.7 * rng.standard_normal((n, v))

    f_te, t_te, _ = world(100)
    f_all, _, y_all = world(160)
    for spatial in (False, True):
        rs_, r2s = [], []
        for n in (40, 80, 160):
            rb = RidgeBaseline(spatial=spatial).fit({k: a[:n] for k, a in f_all.items()}, y_all[:n])
            m = metrics(rb.predict(f_te), t_te)
            rs_.append(m["pearson_median"])
            r2s.append(m["r2_median"])
        assert rs_[0] < rs_[1] < rs_[2], (spatial, rs_)
        assert r2s[0] < r2s[1] < r2s[2], (spatial, r2s)
        assert r2s[2] > 0.2, (spatial, r2s)
