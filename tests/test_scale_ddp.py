"""Data-parallel training (issue 18): 2 gloo ranks on the CPU against 1 process, resume with
the same or another number of ranks, the feature cache with several writers."""

import json
import shutil

import numpy as np
import pytest
import torch

from napari_nrf.distributed import share, spawn_local, sums_scores, voxel_sums
from napari_nrf.models.bundle import load_bundle
from napari_nrf.train import voxel_pearson, voxel_r2

import _scale_workers as W

# Two ranks sum their shares' gradients in another order than one process sums the whole
# batch (float32 rounding), and validation adds per-voxel sums instead of centring first:
# after 16 AdamW steps the weights agree to this absolute tolerance, the curves to 1e-4.
WEIGHT_TOL = 1e-5
CURVE_TOL = 1e-4


@pytest.fixture(autouse=True)
def _single_process(monkeypatch):
    for k in ("WORLD_SIZE", "RANK", "LOCAL_RANK"):
        monkeypatch.delenv(k, raising=False)


def _weights(d):
    return load_bundle(d / "model.safetensors")[0]


def _curve(d, key="val_median_pearson"):
    return np.array([r[key] for r in json.loads((d / "history.json").read_text())["records"]])


def _close(a, b, skip=()):
    wa, wb = _weights(a), _weights(b)
    assert wa.keys() == wb.keys()
    from napari_nrf.calibration import TENSOR_PREFIX

    # the validation gain is a ratio fitted after training: it amplifies the weights'
    # rounding, so it is compared relatively (napari_nrf.testing.check_two_ranks does the same)
    cal = {k for k in wa if k.startswith(TENSOR_PREFIX)}
    diff = max(float((wa[k].float() - wb[k].float()).abs().max()) for k in wa if not k.endswith(skip) and k not in cal)
    assert diff <= WEIGHT_TOL, diff
    for k in cal:
        np.testing.assert_allclose(wb[k].numpy(), wa[k].numpy(), rtol=1e-3, atol=1e-4, err_msg=k)
    for key in ("val_median_pearson", "val_median_r2", "train_loss"):
        np.testing.assert_allclose(_curve(a, key), _curve(b, key), atol=CURVE_TOL, rtol=0)
    return diff


def test_share_splits_every_item_once():
    for n in (0, 1, 5, 8):
        parts = [share(n, r, 3) for r in range(3)]
        assert sum(p.stop - p.start for p in parts) == n
        assert [p.start for p in parts][1:] == [p.stop for p in parts][:-1]


def test_voxel_sums_give_the_loops_scores():
    rng = np.random.default_rng(0)
    p, t = rng.standard_normal((30, 7)), rng.standard_normal((30, 7))
    t[:, 3] = 1.0  # constant: NaN like voxel_pearson / voxel_r2
    r, r2 = sums_scores(voxel_sums(p[:11], t[:11]) + voxel_sums(p[11:], t[11:]))
    np.testing.assert_allclose(r, voxel_pearson(p, t), atol=1e-6, equal_nan=True)
    np.testing.assert_allclose(r2, voxel_r2(p, t), atol=1e-6, equal_nan=True)


def test_two_gloo_ranks_equal_one_rank_and_resume(tmp_path):
    """Same global batch and seed: 2 ranks give 1 rank's curves and weights (tolerances
    above); a run cancelled in its third epoch on 2 ranks resumes from its second
    epoch's checkpoint on 2 ranks and on 1 and ends where the uninterrupted run ends."""
    torch.set_num_threads(1)
    spawn_local(W.ddp_sequence, 2, str(tmp_path))
    W.fit_rank(tmp_path / "one", tmp_path / "ck1")
    diff = _close(tmp_path / "one", tmp_path / "two")
    print(f"max |w_2ranks - w_1rank| = {diff:.2e}")
    assert not (tmp_path / "ck2").exists()  # rank 0 removed the finished run's checkpoint
    assert not (tmp_path / "never").exists()
    W.fit_rank(tmp_path / "resumed1", tmp_path / "ck3")  # 2 ranks -> 1
    for d in ("resumed1", "resumed2"):
        hist = json.loads((tmp_path / d / "history.json").read_text())
        assert hist["resumed_from"] == 1
        _close(tmp_path / "one", tmp_path / d)
    # Every kind: a two-subject Universal encoder (no dropout) on 2 ranks is its 1-process self.
    # The attention keys' bias is skipped: its gradient is zero in exact arithmetic (the
    # softmax ignores a shift shared by all keys), so it is pure rounding noise, which
    # Adam turns into steps of about lr in one process as in two (2e-5 apart after 8 steps).
    W.universal_rank(tmp_path / "universal1")
    _close(tmp_path / "universal1", tmp_path / "universal2", skip=(".key.bias",))


@pytest.fixture(scope="module")
def two_rank_kinds(tmp_path_factory):
    """Every fittable kind fitted on 2 gloo ranks (one spawn for all): (folder, kinds)."""
    from _kinds import fittable_kinds

    torch.set_num_threads(1)
    tmp = tmp_path_factory.mktemp("kinds2")
    kinds = fittable_kinds()
    spawn_local(W.kinds_fits, 2, str(tmp), kinds)
    return tmp, kinds


def test_every_fittable_kind_on_two_ranks_is_its_one_rank_self(two_rank_kinds, tmp_path):
    """Each kind's own loss (``loss_dict``) runs on every rank: the movie encoder-decoder
    (a frame-reconstruction term, batch norm) on 2 ranks ends with its 1-process weights
    and loss curve; before the one step function the ranks trained it on the default loss."""
    from _kinds import fittable_kinds

    tmp, kinds = two_rank_kinds
    assert {"nrf", "universal", "rest2visual", "movie", "toy-voxel-readout"} <= set(kinds)
    assert kinds == fittable_kinds()
    for kind in kinds:
        W.kind_fit(kind, tmp_path / kind)
        # the attention keys' bias: pure rounding noise (see the test above)
        print(kind, f"{_close(tmp_path / kind, tmp / kind, skip=('.key.bias',)):.2e}")


def test_cli_train_nproc_2_is_one_process_model(tmp_path):
    """The user's path: ``napari-nrf train ... --nproc 2`` re-launches itself through
    torchrun (gloo on the CPU); the ranks encode their halves of the images through the
    shared feature cache; rank 0 writes the bundle, which matches a one-process run."""
    import os
    import subprocess
    import sys

    from _nrf_data import synth_set
    from napari_nrf.cli import main

    rs, _ = synth_set(n=40, max_n=120, n_val=6, n_test=2, step=8.0)
    data = rs.save(tmp_path / "sub-01.h5")
    args = ["train", str(data), "--preset", "tiny", "--epochs", "2", "--batch-images", "8", "--batch-voxels", "50",
            "--device", "cpu", "--lr", "1e-3"]
    assert main(args + ["--out", str(tmp_path / "one.safetensors"), "--cache", str(tmp_path / "c1")]) == 0
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=os.pathsep.join(sys.path))
    r = subprocess.run([sys.executable, "-m", "napari_nrf.cli", *args, "--out", str(tmp_path / "two.safetensors"),
                        "--cache", str(tmp_path / "c2"), "--nproc", "2"], env=env, capture_output=True, text=True,
                       timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stdout.count("saved ") == 1  # rank 0 alone reports and writes
    a, ma = load_bundle(tmp_path / "one.safetensors")
    b, mb = load_bundle(tmp_path / "two.safetensors")
    assert max(float((a[k] - b[k]).abs().max()) for k in a) <= WEIGHT_TOL
    assert mb["provenance"]["training"]["ranks"] == 2
    import h5py

    (cache_file,) = (tmp_path / "c2").glob("features-*.h5")  # the ranks' shared cache
    with h5py.File(cache_file, "r") as f:
        assert f["hash"].shape == (40,)  # every image once: rank 0 encoded 32, rank 1 8

def test_feature_cache_with_several_writers(tmp_path):
    """Two processes appending to one cache file at once lose no row and corrupt none."""
    import multiprocessing as mp

    from napari_nrf.features import FeatureCache

    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=W.cache_writer, args=(str(tmp_path), s, 15)) for s in (1, 2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
        assert p.exitcode == 0
    assert FeatureCache(tmp_path).count("toy") == 30
