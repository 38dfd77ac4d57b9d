"""NRF out of the box (issue 22): a model trained with the defaults predicts in its data's units.

The world here is not napari_nrf.simulate's: a lateralised set on a coarse MNI grid.
Occipital voxels (y < -72 mm) at x < 0 follow the image's brightness, those at x > 0 its
negative, plus noise of sd 0.3, then every voxel is z-scored over images (as import-nifti
and the NSD importer store betas). The user's path: a response set file, ``napari-nrf
train`` with no schedule flags, ``napari-nrf query`` of a bright and a dark image to MNI
NIfTI volumes, and the left-minus-right difference read off those volumes.
"""

import numpy as np
import pytest
from PIL import Image

from napari_nrf import space
from napari_nrf.cli import main
from napari_nrf.data.responseset import ResponseSet


def textures(brightness, size=48, seed=0):
    """(n, size, size, 3) uint8 images: a random plaid around each ``brightness`` (0-1)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size] / size
    out = np.empty((len(brightness), size, size, 3), np.uint8)
    for i, b in enumerate(brightness):
        f, ph, col = rng.uniform(1, 6, 2), rng.uniform(0, 6.3, 2), rng.uniform(0.6, 1.0, 3)
        tex = np.sin(2 * np.pi * (f[0] * xx + f[1] * yy) + ph[0]) * np.cos(2 * np.pi * f[1] * xx + ph[1])
        out[i] = (np.clip(b + 0.125 * tex, 0, 1)[..., None] * col * 255).astype(np.uint8)
    return out


def lateral_set(n=200, res=8.0, noise=0.3, seed=0):
    """Response set, per-voxel sign (+1 at x < 0, -1 at x > 0) and image brightness."""
    g = space.Grid.mni(res)
    xyz = g.coords(space.brain_mask(g))
    occ = xyz[(xyz[:, 1] < -72) & (np.abs(xyz[:, 0]) > 3)]
    rng = np.random.default_rng(seed)
    b = rng.uniform(0.1, 0.9, n)
    sign = np.where(occ[:, 0] < 0, 1.0, -1.0)
    truth = ((b - b.mean()) / b.std())[:, None] * sign[None]
    y = truth + noise * rng.standard_normal(truth.shape)
    y = (y - y.mean(0)) / y.std(0)
    split = np.zeros(n, np.uint8)
    split[int(0.8 * n):int(0.9 * n)] = 1
    split[int(0.9 * n):] = 2
    rs = ResponseSet(responses=y.astype(np.float32), coords=occ, split=split, images=textures(b, seed=seed + 1),
                     truth=truth.astype(np.float32), subject="sub-lat")
    return rs, sign, b


def test_default_nrf_predicts_in_the_data_units(tmp_path):
    rs, sign, b = lateral_set()
    data = rs.save(tmp_path / "lat.h5")
    model = tmp_path / "nrf.safetensors"
    assert main(["train", str(data), "--out", str(model), "--device", "cpu"]) == 0
    imgs = tmp_path / "img"
    imgs.mkdir()
    for name, v in (("bright", 0.88), ("dark", 0.12)):
        Image.fromarray(textures([v], seed=99)[0]).save(imgs / f"{name}.png")
    out = tmp_path / "vol"
    assert main(["query", str(model), str(imgs / "bright.png"), str(imgs / "dark.png"), "--out", str(out),
                 "--device", "cpu", "--names", "plain"]) == 0

    # What the data say for such images: left minus right of the z-scored responses of the
    # training images at least as bright (dark) as the queried ones (about +-3).
    tr = rs.indices("train")
    y = rs.get_responses(tr)
    lr_data = y[:, sign > 0].mean(1) - y[:, sign < 0].mean(1)
    want_bright, want_dark = lr_data[b[tr] >= 0.85].mean(), lr_data[b[tr] <= 0.15].mean()
    assert want_bright > 2 and want_dark < -2
    for name, want in (("bright", want_bright), ("dark", want_dark)):
        vol, grid = space.load_nifti(out / f"{name}.nii.gz")
        vals = space.sample_volume(np.nan_to_num(np.asarray(vol, np.float32)), grid, rs.coords, order=0)
        got = vals[sign > 0].mean() - vals[sign < 0].mean()
        assert np.sign(got) == np.sign(want), (name, got, want)
        assert abs(got) >= 0.5 * abs(want), (name, got, want)  # at least half the data's amplitude
        assert abs(got) <= 1.5 * abs(want), (name, got, want)  # and not inflated either


@pytest.mark.parametrize("n_train", [200])
def test_default_fit_is_calibrated_on_the_lateral_world(n_train):
    """Calibration slope (measured test responses regressed on the predictions, pooled over
    voxels) within [0.8, 1.25] and test MSE at most the ridge baseline's, defaults only."""
    from napari_nrf.evaluate import RidgeBaseline, calibration_slope
    from napari_nrf.features import get_backbone, extract_features
    from napari_nrf.models.nrf import build_nrf
    from napari_nrf.train import fit, predict_set

    rs, _, _ = lateral_set(n=int(n_train / 0.8) + 1)
    feats = extract_features(get_backbone("efficientnet-lite0"), rs.images, batch_size=32)
    model = build_nrf("efficientnet-lite0", "demo")
    fit(model, [rs], features=[feats])
    te, tr = rs.indices("test"), rs.indices("train")
    ft = {k: v[te] for k, v in feats.items()}
    pred, y = predict_set(model, ft, rs), rs.get_responses(te)
    assert 0.8 <= calibration_slope(pred, y) <= 1.25
    ridge = RidgeBaseline().fit({k: v[tr] for k, v in feats.items()}, rs.get_responses(tr)).predict(ft)
    assert np.mean((pred - y) ** 2) <= np.mean((ridge - y) ** 2)
