"""The training loop: learning, early stopping, checkpoints + resume, cancel, trainable filter."""

import numpy as np
import pytest
import torch

from napari_nrf.models.nrf import build_nrf
from napari_nrf.train import (TrainingCancelled, TrainingError, fit, loss_fn, predict_set, voxel_pearson)

from napari_nrf.data.responseset import ResponseSet

from _nrf_data import synth_set

KW = dict(batch_images=16, batch_voxels=150, lr=2e-3, steps_per_epoch=4)


@pytest.fixture(scope="module")
def data():
    return synth_set(n=80, max_n=300, n_val=15, n_test=15)


def test_loss_is_nrf_mixture():
    p = torch.tensor([[1.0, 2.0, 3.0], [0.0, 1.0, 0.0]])
    t = torch.tensor([[1.0, 2.0, 2.0], [1.0, 0.0, 0.0]])
    mse = ((p - t) ** 2).mean()
    cos = torch.nn.functional.cosine_similarity(p, t, dim=1).mean()
    torch.testing.assert_close(loss_fn(p, t, 0.1), 0.9 * mse - 0.1 * cos)


def test_voxel_pearson_matches_numpy(rng):
    a, b = rng.standard_normal((30, 5)), rng.standard_normal((30, 5))
    want = [np.corrcoef(a[:, i], b[:, i])[0, 1] for i in range(5)]
    np.testing.assert_allclose(voxel_pearson(a, b), want, atol=1e-5)
    assert np.isnan(voxel_pearson(np.ones((4, 1)), b[:4, :1]))[0]


def test_fit_learns_the_field_and_records_provenance(data):
    rs, f = data
    m = build_nrf("efficientnet-lite0", "tiny", seed=0)
    test = rs.indices("test")
    before = np.median(voxel_pearson(predict_set(m, {k: v[test] for k, v in f.items()}, rs), rs.get_truth(test)))
    hist = fit(m, [rs], features=[f], epochs=6, seed=0, **KW)
    after = np.median(voxel_pearson(predict_set(m, {k: v[test] for k, v in f.items()}, rs), rs.get_truth(test)))
    assert after > 0.5 and after > before + 0.2
    # The kept epoch is the best validation R^2 (scale-aware); best_score is its r.
    assert hist.best_r2 == max(r["val_median_r2"] for r in hist.records)
    best = next(r for r in hist.records if r["epoch"] == hist.best_epoch)
    assert hist.best_score == best["val_median_pearson"] and m.metrics["val_median_r2"] == hist.best_r2
    assert m.metrics["val_median_pearson"] == hist.best_score
    assert "sub-01" in m.subjects and m.provenance["training"]["n_train_images"] == [50]


def test_resume_after_interruption_equals_an_uninterrupted_run(data, tmp_path):
    rs, f = data
    full = build_nrf("efficientnet-lite0", "tiny", seed=0)
    fit(full, [rs], features=[f], epochs=3, seed=1, patience=99, **KW)

    m = build_nrf("efficientnet-lite0", "tiny", seed=0)
    calls = {"n": 0}

    def cancel():  # interrupt in the third epoch, after two checkpoints
        calls["n"] += 1
        return calls["n"] > 2 * KW["steps_per_epoch"] + 1

    with pytest.raises(TrainingCancelled):
        fit(m, [rs], features=[f], epochs=3, seed=1, patience=99, checkpoint_dir=tmp_path, cancel=cancel, **KW)
    assert (tmp_path / "checkpoint.safetensors").exists() and (tmp_path / "best.safetensors").exists()
    m2 = build_nrf("efficientnet-lite0", "tiny", seed=0)
    hist = fit(m2, [rs], features=[f], epochs=3, seed=1, patience=99, checkpoint_dir=tmp_path, **KW)
    assert hist.resumed_from == 1 and len(hist.records) == 3
    for (k, a), b in zip(full.state_dict().items(), m2.state_dict().values()):
        torch.testing.assert_close(a, b, msg=k)


def test_trainable_filter_freezes_the_rest(data):
    rs, f = data
    m = build_nrf("efficientnet-lite0", "tiny", seed=0)
    before = {k: v.clone() for k, v in m.state_dict().items()}
    fit(m, [rs], features=[f], epochs=1, trainable=lambda n: n.startswith("layers."), **KW)
    after = m.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before if k.startswith("merger."))
    assert not torch.equal(before["layers.0.weight"], after["layers.0.weight"])
    assert all(p.requires_grad for p in m.parameters())  # flags restored


def test_bad_input(data):
    rs, f = data
    m = build_nrf("efficientnet-lite0", "tiny")
    with pytest.raises(TrainingError, match="distinct subject"):
        fit(m, [rs, rs], features=[f, f], epochs=1)
    with pytest.raises(TrainingError, match="rows"):
        fit(m, [rs], features=[{k: v[:5] for k, v in f.items()}], epochs=1)
    with pytest.raises(TrainingError, match="accepts no parameter"):
        fit(m, [rs], features=[f], epochs=1, trainable=lambda n: False)


def test_fit_refuses_settings_that_cannot_train_and_stops_on_a_nan_loss(data, tmp_path):
    """A zero batch or 0 epochs used to save an untrained model with a NaN score."""
    rs, f = data
    for bad in ({"epochs": 0}, {"batch_voxels": 0}, {"batch_images": 0}, {"lr": 0.0}, {"alpha": 1.5},
                {"patience": 0}, {"steps_per_epoch": 0}, {"weight_decay": -1.0}):
        kw = {**KW, "epochs": 1, **bad}
        with pytest.raises(TrainingError, match=next(iter(bad)).split("_")[0]):
            fit(build_nrf("efficientnet-lite0", "tiny"), [rs], features=[f], **kw)
    y = np.array(rs.responses, copy=True)
    y[:, 0] = np.nan  # one bad voxel in every image
    bad_rs = ResponseSet(responses=y, coords=rs.coords, split=rs.split, images=rs.images, subject=rs.subject)
    # issue 21: refused before training, naming the voxel (it used to end in a NaN loss)
    from napari_nrf.data.responseset import ResponseSetError

    with pytest.raises(ResponseSetError, match="NaN or infinite.*voxels 0;"):
        fit(build_nrf("efficientnet-lite0", "tiny"), [bad_rs], features=[f], epochs=1,
            batch_voxels=rs.n_voxels, checkpoint_dir=tmp_path)
