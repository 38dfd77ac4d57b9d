"""The check battery of model kinds, importable: ``check_kind(kind)`` yields
``(check, name)`` pairs that a kind's tests parametrize over (after nilearn's estimator
checks)::

    @pytest.mark.parametrize("check,name", list(check_kind("my-kind")), ids=lambda x: ...)
    def test_my_kind(check, name, tmp_path):
        check(tmp_path)

Each check takes a scratch folder and raises AssertionError on failure. Together they
cover what the application asks of a kind: one epoch of ``fit`` (or the kind's clear
refusal), the bundle round trip, ``predict`` shapes, the query engine, the CLI's generic
``train --kind`` / ``evaluate`` / ``query``, the Qt-free core of a render in the Response
volume widget, a voxelwise ensemble over it, and a fit on two gloo ranks (CPU) that equals
the fit on one. The data are tiny and synthetic (numpy, seeded): 24 images, 60 brain
voxels 8 mm apart, efficientnet-lite0's feature shapes (random features; the CLI checks
run the real backbone on the random 16 x 16 images).
"""

from __future__ import annotations

import functools
import inspect
import json
from pathlib import Path

import numpy as np

from napari_nrf import calibration

# efficientnet-lite0's features (name -> shape without batch): what example() models read.
FEATURE_SHAPES = {"s8": (784, 40), "s16": (196, 112), "s32": (49, 320), "embedding": (1280,)}
FIT = dict(epochs=2, batch_images=8, batch_voxels=30, lr=1e-3, seed=3, val_every=1, patience=100)
# Two ranks sum the gradients of their shares in another order than one process sums the
# batch's (float32 rounding): after a few AdamW steps the weights agree to this.
RANK_TOL = 1e-5


def _brain_coords(step=8.0, max_n=60, seed=2):
    from napari_nrf import space

    g = space.Grid.from_extent(step)
    xyz = g.coords(space.brain_mask(g))
    keep = np.sort(np.random.default_rng(seed).choice(len(xyz), min(max_n, len(xyz)), replace=False))
    return xyz[keep].astype(np.float32)


def example_data(frames: bool = False, n: int = 24, seed: int = 2, subject: str = "sub-01"):
    """(ResponseSet, features) of a smooth linear field: random features with
    :data:`FEATURE_SHAPES` and random 16 x 16 images; ``frames``: film chunks (n, 4, 16,
    16, 3) uint8 instead, the responses reading their quadrants' brightness."""
    from napari_nrf.data.responseset import ResponseSet

    rng = np.random.default_rng(seed)
    xyz = _brain_coords(seed=seed)
    if frames:
        chunks = rng.integers(0, 255, (n, 4, 16, 16, 3), dtype=np.uint8)
        c = chunks.astype(np.float32) / 255.0
        z = np.stack([c[:, :, :8, :8].mean((1, 2, 3, 4)), c[:, :, :8, 8:].mean((1, 2, 3, 4)),
                      c[:, :, 8:, :8].mean((1, 2, 3, 4)), c[:, :, 8:, 8:].mean((1, 2, 3, 4))], 1)
        feats, images = {"frames": chunks}, chunks
    else:
        z = rng.standard_normal((n, 6))
        fixed = np.random.default_rng(12345)
        feats = {k: ((z @ fixed.standard_normal((6, int(np.prod(s))))) + 0.3 * rng.standard_normal(
            (n, int(np.prod(s))))).reshape((n,) + s).astype(np.float32) for k, s in FEATURE_SHAPES.items()}
        images = rng.integers(0, 255, (n, 16, 16, 3), dtype=np.uint8)
    centres = rng.uniform([-60, -90, -40], [60, 60, 70], (z.shape[1], 3))
    bumps = np.exp(-((xyz[:, None] - centres[None]) ** 2).sum(-1) / (2 * 25.0 ** 2))
    truth = (z - z.mean(0)) @ bumps.T
    truth = ((truth - truth.mean(0)) / (truth.std(0) + 1e-6)).astype(np.float32)
    resp = (truth + 0.3 * rng.standard_normal(truth.shape)).astype(np.float32)
    split = np.zeros(n, np.uint8)
    split[n - 10:n - 4] = 1
    split[n - 4:] = 2
    rs = ResponseSet(responses=resp, coords=xyz, split=split, images=images, truth=truth, subject=subject)
    return rs, feats


def _import_kind_module(module: str, file: str | None) -> None:
    """Import the module that registers a kind (by name, or by file for a test-local kind)."""
    import importlib
    import importlib.util
    import sys

    try:
        importlib.import_module(module)
    except ImportError:
        if file is None or module in sys.modules:
            raise
        spec = importlib.util.spec_from_file_location(module, file)
        mod = importlib.util.module_from_spec(spec)
        sys.modules[module] = mod
        spec.loader.exec_module(mod)


def _kind_class(kind: str):
    from napari_nrf.models import MODEL_KINDS, discover_kinds

    discover_kinds()
    if kind not in MODEL_KINDS:
        from napari_nrf.kinds import spec_for

        spec_for(kind).model_class()  # a spec's model module registers the class
    return MODEL_KINDS[kind]


def build_example(kind: str, rs, seed: int = 0, base: str | None = None):
    """A tiny ``kind`` (its ``example()``) for response set ``rs``'s subject; a composite
    kind over two examples of ``base``."""
    subjects = {rs.subject: rs.coords}
    bases = None
    if base is not None:
        bases = [_kind_class(base).example(FEATURE_SHAPES, subjects, seed=seed + k) for k in range(2)]
    return _kind_class(kind).example(FEATURE_SHAPES, subjects, seed=seed, bases=bases)


def _feats(feats, rows):
    import torch

    return {k: torch.from_numpy(np.asarray(v)[rows]) for k, v in feats.items()}


def _data_for(kind, base=None):
    return example_data(frames=_kind_class(base or kind).inputs == "frames")


# ---- the checks ----------------------------------------------------------------------------
def check_fit(kind, base, tmp):
    import torch

    from napari_nrf.errors import UnsupportedOperation
    from napari_nrf.train import fit

    rs, feats = _data_for(kind, base)
    model = build_example(kind, rs, base=base)
    kw = dict(features=[feats], epochs=1, batch_images=8, batch_voxels=30, seed=0)
    if not model.supports_fit:
        try:
            fit(model, [rs], **kw)
        except UnsupportedOperation as exc:
            assert kind in str(exc)
            return
        raise AssertionError(f"{kind}: fit of a kind without supports_fit did not refuse")
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    hist = fit(model, [rs], **kw)
    assert len(hist.records) == 1 and np.isfinite(hist.records[0]["train_loss"])
    assert any(not torch.equal(before[n], p) for n, p in model.named_parameters()), "fit changed no parameter"
    assert np.isfinite(hist.best_score)


def check_round_trip(kind, base, tmp):
    import torch

    from napari_nrf.models import load_model

    rs, feats = _data_for(kind, base)
    model = build_example(kind, rs, base=base).eval()
    f = _feats(feats, np.arange(3))
    back = load_model(model.save(Path(tmp) / "m.safetensors"))
    assert type(back) is type(model) and back.kind == kind and back.config() == model.config()
    assert set(back.subjects) == set(model.subjects)
    with torch.no_grad():
        idx = np.arange(rs.n_voxels)
        assert torch.equal(back.predict(f, voxels=idx, subject=rs.subject), model.predict(f, voxels=idx,
                                                                                          subject=rs.subject))
        if model.supports_points:
            xyz = rs.coords[:7] + 0.5
            a = model.predict(f, coords=xyz, subject=rs.subject)
            b = back.predict(f, coords=xyz, subject=rs.subject)
            assert torch.equal(torch.nan_to_num(a, 7.0), torch.nan_to_num(b, 7.0))


def check_shapes(kind, base, tmp):
    import torch

    from napari_nrf.errors import UnsupportedOperation

    rs, feats = _data_for(kind, base)
    model = build_example(kind, rs, base=base).eval()
    f = _feats(feats, np.arange(4))
    with torch.no_grad():
        out = model.predict(f, voxels=np.array([0, 5, 9]), subject=rs.subject)
        assert out.shape == (4, 3) and out.dtype == torch.float32 and torch.isfinite(out).all()
        if model.supports_points:
            at = model.predict(f, coords=rs.coords[[0, 5, 9]], subject=rs.subject)
            np.testing.assert_allclose(at.numpy(), out.numpy(), rtol=1e-4, atol=1e-5)
        else:
            try:
                model.predict(f, coords=rs.coords[:3], subject=rs.subject)
            except UnsupportedOperation as exc:
                assert kind in str(exc)
            else:
                raise AssertionError(f"{kind}: predict(coords=) of a voxel kind did not refuse")


def check_engine(kind, base, tmp):
    """QueryEngine.points / .volume: a continuous kind's volumes (two resolutions) equal its
    predictions at the grid points, NaN outside the mask; a voxel kind's voxels land in
    their nearest cells and it refuses the continuous query with a clear error."""
    import torch

    from napari_nrf import space
    from napari_nrf.errors import UnsupportedOperation
    from napari_nrf.query import QueryEngine

    rs, feats = _data_for(kind, base)
    model = build_example(kind, rs, base=base).eval()
    f = _feats(feats, np.arange(2))
    eng = QueryEngine(model, device="cpu")
    with torch.no_grad():
        at_voxels = model.predict(f, voxels=np.arange(rs.n_voxels), subject=rs.subject).numpy()
    if model.supports_points:
        np.testing.assert_allclose(eng.points(f, rs.coords, subject=rs.subject), at_voxels, rtol=1e-4, atol=1e-5)
    else:
        try:
            eng.points(f, rs.coords, subject=rs.subject)
        except UnsupportedOperation as exc:
            assert kind in str(exc)
        else:
            raise AssertionError(f"{kind}: points of a voxel kind did not refuse")
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
        grid = space.Grid.from_extent(5.0, [-80, -120, -60], [80, 90, 90])
        vol = eng.volume(f, grid, subject=rs.subject)
        ijk, _ = grid.nearest_index(rs.coords)
        np.testing.assert_allclose(vol[:, ijk[:, 0], ijk[:, 1], ijk[:, 2]], at_voxels, rtol=1e-5, atol=1e-6)
        assert np.isfinite(vol).sum() == 2 * rs.n_voxels
        try:
            model.query_images(f)
        except UnsupportedOperation as exc:
            assert kind in str(exc)
        else:
            raise AssertionError(f"{kind}: query_images of a voxel kind did not refuse")


def _probe(tmp) -> Path:
    from PIL import Image

    p = Path(tmp) / "probe.png"
    Image.fromarray(np.random.default_rng(1).integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(p)
    return p


def check_cli_query(kind, base, tmp):
    """``napari-nrf query --kind K``: volumes where the model has data by default, the
    whole brain one flag away (continuous kinds)."""
    from napari_nrf import space
    from napari_nrf.cli import main
    from napari_nrf.query import coverage_mask

    rs, _ = _data_for(kind, base)
    model = build_example(kind, rs, base=base)
    path = model.save(Path(tmp) / "m.safetensors")
    probe = _probe(tmp)
    rc = main(["query", str(path), str(probe), "--kind", kind, "--resolution", "4", "--out",
               str(Path(tmp) / "q"), "--subject", rs.subject, "--device", "cpu", "--names", "plain"])
    assert rc == 0
    vol, grid = space.load_nifti(Path(tmp) / "q" / "probe.nii.gz")
    n = np.isfinite(vol).sum()
    assert n > 0 and grid.resolution == 4.0
    if model.continuous:
        assert n == coverage_mask(model, grid).sum()
        assert main(["query", str(path), str(probe), "--resolution", "4", "--out", str(Path(tmp) / "b"),
                     "--mask", "brain", "--device", "cpu", "--names", "plain"]) == 0
        whole, _ = space.load_nifti(Path(tmp) / "b" / "probe.nii.gz")
        assert np.isfinite(whole).sum() > max(1000, n)


def check_cli_train_evaluate(kind, base, tmp):
    """``train --kind K`` (the real backbone on the random images), then ``evaluate`` of
    the bundle (kind taken from it)."""
    from napari_nrf.cli import main
    from napari_nrf.kinds import spec_for
    from napari_nrf.models import load_model

    spec = spec_for(kind)
    rs, _ = example_data()
    data = rs.save(Path(tmp) / f"{rs.subject}.h5")
    out = Path(tmp) / "trained.safetensors"
    args = ["train", "--kind", kind, str(data), "--out", str(out), "--epochs", "1", "--batch-images", "8",
            "--batch-voxels", "30", "--device", "cpu", "--cache", str(Path(tmp) / "cache")]
    if spec.panel.get("presets"):
        args += ["--preset", spec.panel["presets"][0]]
    assert main(args) == 0
    assert load_model(out).kind == kind
    report = Path(tmp) / "eval.json"
    assert main(["evaluate", str(out), str(data), "--device", "cpu", "--no-ridge", "--json", str(report),
                 "--cache", str(Path(tmp) / "cache")]) == 0
    assert json.loads(report.read_text())["reports"]


def check_render(kind, base, tmp):
    """The Response volume widget's Qt-free core: volumes on a grid, then the layer data."""
    from napari_nrf import space
    from napari_nrf.widgets._render import compute_volumes, volume_layer_data

    rs, feats = _data_for(kind, base)
    model = build_example(kind, rs, base=base).eval()
    grid = space.Grid.from_extent(8.0, [-80, -120, -60], [80, 90, 90])
    vols = compute_volumes(model, _feats(feats, np.arange(1)), grid,
                           mask="brain" if model.continuous else None, subject=rs.subject)
    data, kw, _ = volume_layer_data(np.asarray(vols[0]), grid, "probe")
    assert np.isfinite(np.asarray(data)).sum() > 0


def check_ensemble_over_it(kind, base, tmp):
    import torch

    from napari_nrf.models import MODEL_KINDS

    rs, feats = _data_for(kind)
    bases = [build_example(kind, rs, seed=k).eval() for k in range(2)]
    ens = MODEL_KINDS["ensemble"].example(FEATURE_SHAPES, {rs.subject: rs.coords}, bases=bases)
    tr = rs.indices("train")
    with torch.no_grad():
        ens.fit(_feats(feats, tr), rs.get_responses(tr))
        out = ens.predict(_feats(feats, np.arange(3)), voxels=np.arange(rs.n_voxels), subject=rs.subject)
    assert out.shape == (3, rs.n_voxels) and torch.isfinite(out).all()


def rank_fit(kind, module, file, out_dir):
    """Fit ``kind``'s example on its example data on this rank; rank 0 writes the model
    (``model.safetensors``) and the history. Module level: spawned ranks import it."""
    import torch

    from napari_nrf.train import fit

    torch.set_num_threads(1)
    _import_kind_module(module, file)
    rs, feats = _data_for(kind)
    model = build_example(kind, rs)
    save_run(model, fit(model, [rs], features=[feats], device="cpu", **FIT), out_dir)


def save_run(model, hist, out_dir) -> None:
    """On rank 0: ``out_dir/model.safetensors`` and ``out_dir/history.json`` of a fit."""
    from napari_nrf.distributed import is_main

    if is_main():
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        model.save(out / "model.safetensors")
        (out / "history.json").write_text(json.dumps(hist.to_dict()))


def check_two_ranks(kind, base, tmp):
    """Two gloo ranks (CPU) train the kind to its one-process weights and loss curve."""
    from napari_nrf.distributed import spawn_local
    from napari_nrf.models.bundle import load_bundle

    cls = _kind_class(kind)
    args = (kind, cls.__module__, inspect.getsourcefile(cls))
    spawn_local(rank_fit, 2, *args, str(Path(tmp) / "two"))
    rank_fit(*args, str(Path(tmp) / "one"))
    a, b = (load_bundle(Path(tmp) / d / "model.safetensors")[0] for d in ("one", "two"))
    assert a.keys() == b.keys()
    # an attention key's bias gets a zero gradient in exact arithmetic (the softmax ignores
    # a shift shared by all keys): pure rounding noise, which Adam turns into steps of lr
    # the validation gain (napari_nrf.calibration) is a ratio of sums over the predictions:
    # fitted after training, it amplifies the weights' rounding, so it gets a relative check
    cal = {k for k in a if k.startswith(calibration.TENSOR_PREFIX)}
    diff = max((float((a[k].float() - b[k].float()).abs().max()) for k in a
                if not k.endswith(".key.bias") and k not in cal), default=0.0)
    assert diff <= RANK_TOL, f"{kind}: two ranks differ from one by {diff:.2e}"
    for k in cal:
        np.testing.assert_allclose(b[k].numpy(), a[k].numpy(), rtol=1e-3, atol=1e-4, err_msg=f"{kind}: {k}")
    curves = [[r["train_loss"] for r in json.loads((Path(tmp) / d / "history.json").read_text())["records"]]
              for d in ("one", "two")]
    np.testing.assert_allclose(curves[0], curves[1], atol=1e-4, rtol=0)


def check_kind(kind: str, base: str | None = None):
    """Yield ``(check, name)``: each ``check(tmp_path)`` tests one part of the contract for
    ``kind`` (a composite kind over ``base``, default "nrf"). Checks a kind cannot take
    are left out (the CLI's training for kinds that read rest maps or films; the two-rank
    fit and the ensemble for kinds the loop does not train)."""
    from napari_nrf.kinds import spec_for

    cls = _kind_class(kind)
    spec = spec_for(kind)
    if cls.composite:
        base = base or "nrf"
    checks = [check_fit, check_round_trip, check_shapes, check_engine, check_cli_query, check_render]
    if spec.data == "response-sets" and spec.trainable and not cls.composite:
        checks.append(check_cli_train_evaluate)
    if not cls.composite and cls.supports_fit:
        checks += [check_ensemble_over_it, check_two_ranks]
    for c in checks:
        yield functools.partial(c, kind, base), c.__name__[len("check_"):]
