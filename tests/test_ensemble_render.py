"""A finetune job's ensemble (EnsembleModel of NRF bases) renders like any continuous model:
QueryEngine.points / .volume at 2 and 1 mm, ``napari-nrf query`` on the saved bundle, and
the Response volume widget (issue 14: it raised AttributeError 'image_half')."""

import numpy as np
import pytest
import torch

from napari_nrf import space
from napari_nrf.train_jobs import finetune_job
from napari_nrf.jobs import JobContext
from napari_nrf.models import load_model
from napari_nrf.query import QueryEngine

from _adapt_data import make_adaptation_files

TINY = dict(n_images=8, epochs=1, batch_images=4, batch_voxels=30, patience=2, seed=0, steps_per_epoch=2)


@pytest.fixture(scope="module")
def finetuned(tmp_path_factory):
    """The bundle written by a finished finetune job over two tiny NRF bases, and an image."""
    torch.set_num_threads(1)
    d = tmp_path_factory.mktemp("ens-render")
    bases, data = make_adaptation_files(d)
    out = d / "finetuned.safetensors"
    finetune_job(JobContext(d / "job"), [str(b) for b in bases], str(data), str(out),
                 feature_cache=str(d / "cache"), **TINY)
    from PIL import Image

    img = np.random.default_rng(3).integers(0, 255, (40, 40, 3), dtype=np.uint8)
    Image.fromarray(img).save(d / "probe.png")
    return out, d / "probe.png", img


def test_finetuned_ensemble_renders_with_the_engine_at_2_and_1_mm(finetuned):
    from napari_nrf.calibration import apply_model

    out, _, img = finetuned
    ens = load_model(out)
    assert ens.kind == "ensemble" and ens.continuous
    eng = QueryEngine(ens, device="cpu")
    feats = eng.image_features([img])
    xyz = np.asarray(ens.subjects[ens.subject][:10], np.float32)
    # points: at the subject's voxels and between them, equal to the model's own predict
    pts = np.concatenate([xyz, xyz + 1.3])
    got = eng.points(feats, pts)
    # the engine applies the bundle's validation gain (napari_nrf.calibration), predict does not
    want = apply_model(ens, ens.predict(feats, coords=pts).numpy(), coords=pts)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)
    for res, mask in ((2.0, "brain"), (1.0, "data")):
        grid = space.Grid.mni(res)
        vol = eng.volume(feats, grid, mask=mask)
        assert vol.shape == (1,) + grid.shape and vol.dtype == np.float32
        m = space.brain_mask(grid) if mask == "brain" else np.isfinite(vol[0])
        assert np.isfinite(vol[0][m]).all() and m.sum() > 100
        # a sample of grid points agrees with predict at their MNI coordinates
        idx = np.flatnonzero(m)[:: max(1, m.sum() // 300)]
        ijk = np.stack(np.unravel_index(idx, grid.shape), -1)
        at = grid.index_to_world(ijk).astype(np.float32)
        ref = apply_model(ens, ens.predict(feats, coords=at).numpy(), coords=at)[0]
        np.testing.assert_allclose(vol[0].reshape(-1)[idx], ref, rtol=1e-4, atol=1e-5)


def test_cli_query_renders_the_finetuned_ensemble(finetuned, tmp_path):
    from napari_nrf.cli import main

    out, probe, _ = finetuned
    for res, mask in (("2", "brain"), ("1", "data")):
        dst = tmp_path / f"q{res}"
        rc = main(["query", str(out), str(probe), "--resolution", res, "--mask", mask, "--out", str(dst),
                   "--device", "cpu", "--names", "plain"])
        assert rc == 0
        vol, grid = space.load_nifti(dst / "probe.nii.gz")
        assert grid.resolution == float(res) and np.isfinite(vol).sum() > 100


@pytest.mark.gui
def test_response_volume_widget_renders_the_finetuned_ensemble(finetuned, make_napari_viewer, qtbot):
    from _plugin import open_widgets
    from napari_nrf.widgets._state import state_for

    out, _, img = finetuned
    viewer = make_napari_viewer()
    vw = open_widgets(viewer, ["Response volume"])["Response volume"]
    state_for(viewer).set_model(load_model(out))
    rendered = []
    vw.on_rendered(rendered.extend)
    vw.contrast_check.setChecked(False)
    for i, res in enumerate((2.0, 1.0)):
        vw.resolution.setValue(res)
        vw.render_images([img], [f"probe{res:g}"])
        qtbot.waitUntil(lambda: len(rendered) == i + 1 or "failed" in vw.status.text(), timeout=60000)
        assert "failed" not in vw.status.text(), vw.status.text()
        layer = rendered[-1]
        assert np.isfinite(np.asarray(layer.data)).sum() > 100
        assert np.allclose(layer.scale, res)
