"""The model contract test battery (napari_nrf.models.base), run over every registered kind.

Cases: every kind that provides ``example()`` (NRF, Universal, each file of tests/kinds/,
any later kind), and every composite kind (the ensemble) over each of them. Each case:
build tiny, one epoch of ``fit``, save/load round trip with identical predictions,
``predict`` shapes, ``QueryEngine.points`` and ``.volume`` (at two resolutions for
continuous kinds, on the voxels otherwise), ``napari-nrf query`` and a render in the
Response volume widget. What a kind does not support must raise UnsupportedOperation.
"""

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from napari_nrf import space
from napari_nrf.errors import UnsupportedOperation
from napari_nrf.models import MODEL_KINDS, discover_kinds, load_model
from napari_nrf.models.base import EncodingModel
from napari_nrf.query import QueryEngine
from napari_nrf.train import fit

from _movie_data import synth_movie_set
from _nrf_data import SHAPES, synth_set

KINDS_DIR = Path(__file__).parent / "kinds"


def _import_test_kinds() -> list[str]:
    """Import every file of tests/kinds/ (each registers its kind); their module names."""
    names = []
    for path in sorted(KINDS_DIR.glob("*.py")):
        name = f"napari_nrf_test_kinds.{path.stem}"
        if name not in sys.modules:
            spec = importlib.util.spec_from_file_location(name, path)
            mod = importlib.util.module_from_spec(spec)
            sys.modules[name] = mod
            spec.loader.exec_module(mod)
        names.append(name)
    return names


TEST_KIND_MODULES = _import_test_kinds()


def _cases() -> list[tuple[str, str | None]]:
    discover_kinds()
    # every registered kind that can build a tiny instance (a test-local helper kind
    # registered by another test module, without example(), is not a product kind)
    kinds = {k: c for k, c in MODEL_KINDS.items() if c.example.__func__ is not EncodingModel.example.__func__}
    simple = sorted(k for k, c in kinds.items() if not c.composite)
    composite = sorted(k for k, c in kinds.items() if c.composite)
    return [(k, None) for k in simple] + [(k, b) for k in composite for b in simple]


CASES = _cases()
IDS = [k if b is None else f"{k}[{b}]" for k, b in CASES]


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def image_data():
    """A 24-image response set on 60 brain voxels (8 mm apart) and its features."""
    rs, feats = synth_set(n=24, step=8.0, max_n=60, n_val=6, n_test=4, seed=2)
    return rs, feats


@pytest.fixture(scope="module")
def movie_data(image_data):
    """The same voxels seen through 24 TRs of film chunks (4 frames of 16 x 16 px each),
    for kinds that read frames (``inputs == "frames"``: the movie encoder-decoder)."""
    rs, _ = image_data
    return synth_movie_set(rs.coords, n=24, frames=4, size=16, seed=2, subject=rs.subject)


def _inputs(kind, base=None) -> str:
    return getattr(MODEL_KINDS[base or kind], "inputs", "images")


def _build(case, rs, seed=0):
    kind, base = case
    subjects = {rs.subject: rs.coords}
    bases = None
    if base is not None:
        bases = [MODEL_KINDS[base].example(SHAPES, subjects, seed=seed + k) for k in range(2)]
    model = MODEL_KINDS[kind].example(SHAPES, subjects, seed=seed, bases=bases)
    assert isinstance(model, EncodingModel) and model.kind == kind
    return model.eval()


def _feats(feats, rows):
    return {k: torch.from_numpy(v[rows]) for k, v in feats.items()}


@pytest.fixture(params=CASES, ids=IDS)
def case(request, image_data):
    rs, _ = image_data
    return request.param, _build(request.param, rs)


@pytest.fixture
def data(case, image_data, movie_data):
    """The case's data: image features, or film chunks for a kind that reads frames."""
    (kind, base), _ = case
    return movie_data if _inputs(kind, base) == "frames" else image_data


def test_the_battery_covers_every_kind():
    ids = set(IDS)
    assert {"nrf", "universal", "toy-voxel-readout", "ensemble[nrf]", "ensemble[universal]"} <= ids
    discover_kinds()
    for k, c in MODEL_KINDS.items():  # every kind shipped with the package can be built tiny
        if c.__module__.startswith("napari_nrf.models."):
            assert k in {kk for kk, _ in CASES}, f"kind {k!r} provides no example()"


def test_fit_one_epoch_or_a_clear_refusal(case, data):
    (kind, _), model = case
    rs, feats = data
    kw = dict(features=[feats], epochs=1, batch_images=8, batch_voxels=30, seed=0)
    if not model.supports_fit:
        with pytest.raises(UnsupportedOperation, match=kind):
            fit(model, [rs], **kw)
        return
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    hist = fit(model, [rs], **kw)
    assert len(hist.records) == 1 and np.isfinite(hist.records[0]["train_loss"])
    assert any(not torch.equal(before[n], p) for n, p in model.named_parameters())
    assert np.isfinite(hist.best_score)


def test_save_load_round_trip_gives_identical_predictions(case, data, tmp_path):
    (kind, _), model = case
    rs, feats = data
    f = _feats(feats, np.arange(3))
    path = model.save(tmp_path / "m.safetensors")
    back = load_model(path)
    assert type(back) is type(model) and back.kind == kind and back.config() == model.config()
    assert set(back.subjects) == set(model.subjects)
    with torch.no_grad():
        assert torch.equal(back.predict(f, voxels=np.arange(rs.n_voxels), subject=rs.subject),
                           model.predict(f, voxels=np.arange(rs.n_voxels), subject=rs.subject))
        if model.supports_points:
            xyz = rs.coords[:7] + 0.5
            a = model.predict(f, coords=xyz, subject=rs.subject)
            b = back.predict(f, coords=xyz, subject=rs.subject)
            assert torch.equal(torch.nan_to_num(a, 7.0), torch.nan_to_num(b, 7.0))


def test_predict_shapes_and_unsupported_points(case, data):
    (kind, _), model = case
    rs, feats = data
    f = _feats(feats, np.arange(4))
    with torch.no_grad():
        out = model.predict(f, voxels=np.array([0, 5, 9]), subject=rs.subject)
        assert out.shape == (4, 3) and out.dtype == torch.float32 and torch.isfinite(out).all()
        full = model.predict(f, voxels=np.arange(rs.n_voxels), subject=rs.subject)
        assert full.shape == (4, rs.n_voxels)
        if model.supports_points:
            at = model.predict(f, coords=rs.coords[[0, 5, 9]], subject=rs.subject)
            assert at.shape == (4, 3)
            np.testing.assert_allclose(at.numpy(), out.numpy(), rtol=1e-4, atol=1e-5)
        else:
            with pytest.raises(UnsupportedOperation, match=kind):
                model.predict(f, coords=rs.coords[:3], subject=rs.subject)


def test_query_engine_points_and_volumes(case, data):
    (kind, _), model = case
    rs, feats = data
    f = _feats(feats, np.arange(2))
    eng = QueryEngine(model, device="cpu")
    with torch.no_grad():
        at_voxels = model.predict(f, voxels=np.arange(rs.n_voxels), subject=rs.subject).numpy()
    if model.supports_points:
        np.testing.assert_allclose(eng.points(f, rs.coords, subject=rs.subject), at_voxels, rtol=1e-4, atol=1e-5)
    else:
        with pytest.raises(UnsupportedOperation, match=kind):
            eng.points(f, rs.coords, subject=rs.subject)
    if model.continuous:
        for res in (8.0, 5.0):
            grid = space.Grid.from_extent(res, [-60, -90, -40], [60, 60, 70])
            vol = eng.volume(f, grid, mask="brain")
            m = space.brain_mask(grid)
            assert vol.shape == (2,) + grid.shape and np.isfinite(vol[:, m]).all() and np.isnan(vol[:, ~m]).all()
            idx = np.flatnonzero(m)[::17]
            xyz = grid.index_to_world(np.stack(np.unravel_index(idx, grid.shape), -1)).astype(np.float32)
            with torch.no_grad():
                ref = model.predict(f, coords=xyz).numpy()
            np.testing.assert_allclose(vol.reshape(2, -1)[:, idx], ref, rtol=1e-4, atol=1e-5)
    else:
        # voxel kinds: each voxel's prediction lands in its nearest cell (8 mm apart: one a 5 mm cell)
        grid = space.Grid.from_extent(5.0, [-80, -120, -60], [80, 90, 90])
        vol = eng.volume(f, grid, subject=rs.subject)
        ijk, _ = grid.nearest_index(rs.coords)
        np.testing.assert_allclose(vol[:, ijk[:, 0], ijk[:, 1], ijk[:, 2]], at_voxels, rtol=1e-5, atol=1e-6)
        assert np.isfinite(vol).sum() == 2 * rs.n_voxels
        with pytest.raises(UnsupportedOperation, match=kind):
            model.query_images(f)


@pytest.fixture(scope="module")
def probe_png(tmp_path_factory):
    from PIL import Image

    p = tmp_path_factory.mktemp("probe") / "probe.png"
    Image.fromarray(np.random.default_rng(1).integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(p)
    return p


def test_cli_query(case, data, probe_png, tmp_path):
    from napari_nrf.cli import main

    (kind, _), model = case
    rs, _ = data
    path = model.save(tmp_path / "m.safetensors")
    rc = main(["query", str(path), str(probe_png), "--resolution", "4", "--out", str(tmp_path / "q"),
               "--subject", rs.subject, "--device", "cpu", "--names", "plain"])
    assert rc == 0
    vol, grid = space.load_nifti(tmp_path / "q" / "probe.nii.gz")
    n = np.isfinite(vol).sum()
    assert n > 0 and grid.resolution == 4.0
    if model.continuous:
        # the default extent is where the model has data; the whole brain is one flag away
        from napari_nrf.query import coverage_mask

        assert n == coverage_mask(model, grid).sum()
        rc = main(["query", str(path), str(probe_png), "--resolution", "4", "--out", str(tmp_path / "b"),
                   "--mask", "brain", "--device", "cpu", "--names", "plain"])
        assert rc == 0
        whole, _ = space.load_nifti(tmp_path / "b" / "probe.nii.gz")
        assert np.isfinite(whole).sum() > max(1000, n)


@pytest.mark.gui
def test_response_volume_widget_renders(case, data, probe_png, effnet, make_napari_viewer, qtbot):
    from PIL import Image

    from _plugin import open_widgets
    from napari_nrf.widgets._state import state_for

    (kind, _), model = case
    rs, _ = data
    object.__setattr__(model, "_backbone", effnet)  # the session's backbone: no rebuild
    viewer = make_napari_viewer()
    vw = open_widgets(viewer, ["Response volume"])["Response volume"]
    state_for(viewer).set_model(model)
    vw.resolution.setValue(4.0)
    if not model.continuous:
        vw.subject.setCurrentText(rs.subject)
    rendered = []
    vw.on_rendered(rendered.extend)
    vw.render_images([np.asarray(Image.open(probe_png))], ["probe"])
    qtbot.waitUntil(lambda: bool(rendered) or "failed" in vw.status.text(), timeout=60000)
    assert rendered, vw.status.text()
    assert np.isfinite(np.asarray(rendered[0].data)).sum() > 0
