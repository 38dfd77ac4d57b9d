"""Universal encoder training through train.fit: joint subjects, transfer, and the CLI."""

import copy
import json

import numpy as np
import pytest
import torch

from napari_nrf.data.responseset import ResponseSet
from napari_nrf.models import load_model
from napari_nrf.models.universal import UniversalModelError, build_universal
from napari_nrf.recipes import train_universal, transfer_subject

P, C = 16, 8
SHAPES = {"tok": (P, C), "embedding": (C,)}
TYPES = np.random.default_rng(0).normal(size=(3, C))  # three functional voxel types


@pytest.fixture(autouse=True)
def _one_thread():
    # Tiny models: thread hand-offs cost more than the arithmetic on a shared 2-core box.
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _subject(name, n, v, seed, noise=0.5):
    """A virtual subject whose voxels respond to the pooled feature through one of 3 types."""
    r = np.random.default_rng(seed)
    tok = r.normal(size=(n, P, C)).astype(np.float32)
    emb = 4 * tok.mean(1)
    typ = r.integers(0, 3, v)
    y = emb @ TYPES[typ].T + noise * r.normal(size=(n, v))
    y = (y - y.mean(0)) / y.std(0)
    split = np.zeros(n, np.uint8)
    split[int(0.8 * n):int(0.9 * n)] = 1
    split[int(0.9 * n):] = 2
    rs = ResponseSet(responses=y.astype(np.float32), coords=r.uniform(-60, 60, (v, 3)), split=split,
                     images=np.zeros((n, 4, 4, 3), np.uint8), subject=name, roi=typ + 1)
    return rs, {"tok": tok, "embedding": emb}


CFG = dict(embed_dim=16, channels=8, dropout=0.0)
FIT = dict(epochs=6, batch_images=16, batch_voxels=60, patience=20, lr=3e-3)


def test_joint_training_learns_and_transfer_trains_only_the_new_embeddings(tmp_path):
    sets = [_subject(f"sub-0{i}", 160, 60, i) for i in range(2)]
    model, hist = train_universal([s for s, _ in sets], feature_shapes=SHAPES, model_config=CFG,
                                  features=[f for _, f in sets], **FIT)
    assert hist.best_score > 0.6, hist.records
    assert set(model.subjects) == {"sub-00", "sub-01"}

    new, fnew = _subject("sub-new", 120, 50, 7)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    feats0 = {k: torch.as_tensor(v[:5]) for k, v in sets[0][1].items()}
    with torch.no_grad():
        y0 = model.predict(feats0, subject="sub-00")
    model, h2 = transfer_subject(model, new, features=[fnew], **FIT)
    assert h2.best_score > 0.5, h2.records
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # every shared weight frozen
    with torch.no_grad():
        assert torch.equal(model.predict(feats0, subject="sub-00"), y0)
    # The bundle keeps every subject's voxel coordinates, the new one included.
    m2 = load_model(model.save(tmp_path / "u.safetensors"))
    np.testing.assert_allclose(m2.subjects["sub-new"], new.coords)
    assert m2.provenance["training"]["subjects"] == ["sub-00", "sub-01"]
    assert "sub-new" in m2.provenance["transfer"]
    with pytest.raises(UniversalModelError, match="already in the model"):
        transfer_subject(model, new, features=[fnew], **FIT)


def _h5_subject(tmp_path, name, seed, n=12, v=40):
    r = np.random.default_rng(seed)
    imgs = r.integers(0, 255, (n, 32, 32, 3), dtype=np.uint8)
    split = np.array([0] * (n - 4) + [1] * 4, np.uint8)
    rs = ResponseSet(responses=r.normal(size=(n, v)).astype(np.float32),
                     coords=np.stack([r.choice(np.arange(-40, 41, 4), v), r.choice(np.arange(-90, -59, 4), v),
                                      r.choice(np.arange(-20, 21, 4), v)], 1),
                     split=split, images=imgs, subject=name)
    return rs.save(tmp_path / f"{name}.h5")


def test_cli_train_transfer_cluster(tmp_path, monkeypatch):
    from skimage import data, io

    from napari_nrf.cli import main

    a, b, c = (_h5_subject(tmp_path, s, i) for i, s in enumerate(["sub-a", "sub-b", "sub-c"]))
    common = ["--epochs", "1", "--batch-images", "4", "--batch-voxels", "20", "--cache", str(tmp_path / "cache"),
              "--device", "cpu"]
    out = tmp_path / "uni.safetensors"
    assert main(["train-universal", str(a), str(b), "--out", str(out), "--levels", "s32,embedding",
                 "--embed-dim", "8", "--channels", "4", "--embedding-lr-scale", "10", "--embed-init-std", "0.01",
                 *common]) == 0
    m = load_model(out)
    assert m.kind == "universal" and set(m.subjects) == {"sub-a", "sub-b"}
    assert m.config()["embedding_lr_scale"] == 10 and m.config()["embed_init_std"] == 0.01
    out2 = tmp_path / "uni2.safetensors"
    assert main(["transfer", str(out), str(c), "--out", str(out2), "--n-images", "5", "--init", "nearest",
                 *common]) == 0
    m2 = load_model(out2)
    assert set(m2.subjects) == {"sub-a", "sub-b", "sub-c"}
    assert m2.provenance["transfer"]["sub-c"]["n_train_images"] == 5
    lib = []
    for i, im in enumerate([data.chelsea(), data.coffee(), data.astronaut()]):
        lib.append(str(tmp_path / f"im{i}.png"))
        io.imsave(lib[-1], im[::4, ::4])
    cl = tmp_path / "clusters"
    assert main(["cluster", str(out2), "-k", "3", "--out", str(cl), "--library", *lib, "--top", "2",
                 "--cache", str(tmp_path / "cache"), "--device", "cpu"]) == 0
    from napari_nrf import space

    vol, grid = space.load_nifti(cl / "sub-c_clusters.nii.gz")
    assert grid.resolution == 2.0 and set(np.unique(vol)) <= {0, 1, 2, 3} and (vol > 0).sum() >= 40
    rep = json.loads((cl / "clusters.json").read_text())
    assert rep["k"] == 3 and all(len(v) == 2 for v in rep["top_images"].values())
    assert (cl / "clusters.csv").read_text().splitlines()[0].startswith("label,cluster,size")
    # A bundle of another kind is refused with a clear message.
    assert main(["transfer", str(tmp_path / "missing.safetensors"), str(c), "--out", str(out2)]) == 2


def test_embedding_lr_scale_speeds_up_only_the_embeddings():
    rs, f = _subject("sub-00", 40, 30, 3)
    moved = {}
    for scale in (1.0, 10.0):
        model, _ = train_universal([rs], feature_shapes=SHAPES, features=[f], epochs=1, steps_per_epoch=1,
                                   batch_images=16, batch_voxels=30, lr=1e-3, weight_decay=0.0, seed=0,
                                   model_config={**CFG, "embedding_lr_scale": scale, "embed_init_std": 0.01})
        init = build_universal("efficientnet-lite0", {rs.subject: rs.coords}, feature_shapes=SHAPES, seed=0,
                               **{**CFG, "embedding_lr_scale": scale, "embed_init_std": 0.01})
        a, b = model.state_dict(), init.state_dict()
        moved[scale] = {k: float((a[k] - b[k]).abs().max()) for k in a if a[k].dtype.is_floating_point}
        assert model.config()["embedding_lr_scale"] == scale
    # Adam's first step moves each parameter by about lr (times its scale).
    emb = "voxel_embeddings.sub-00"
    assert 0.5e-3 < moved[1.0][emb] <= 1.01e-3
    assert 5e-3 < moved[10.0][emb] <= 1.01e-2
    assert max(v for k, v in moved[10.0].items() if k != emb) <= 1.01e-3


def test_no_flag_transfer_from_few_images_trains_the_new_embeddings():
    """Transfer with no schedule arguments runs the step schedule (default_steps of the new
    subject's images: 400 steps for 20 images, not 30 one-pass epochs) with the embeddings at
    10x the lr, so 20 images reach the new subject's units; the former defaults (30 steps,
    std 0.1 at the shared lr) left its embeddings near their random start."""
    from napari_nrf.settings import TRANSFER_FIT
    from napari_nrf.train import default_steps

    assert TRANSFER_FIT.epochs is None and TRANSFER_FIT.steps is None and default_steps(20) == 400
    sets = [_subject(f"sub-0{i}", 160, 60, i) for i in range(2)]
    base, _ = train_universal([s for s, _ in sets], feature_shapes=SHAPES, model_config=CFG,
                              features=[f for _, f in sets], **FIT)
    new, fnew = _subject("sub-new", 30, 50, 7)  # 20 train + 10 validation images
    new.split[:] = 0
    new.split[20:] = 1
    scores = {}
    for name, kw in (("default", {}), ("old", dict(epochs=30, val_every=1, patience=5))):
        m = copy.deepcopy(base)
        if name == "old":  # the former embedding start and lr multiplier
            m.embed_init_std, m.embedding_lr_scale = 0.1, 1.0
        m, h = transfer_subject(m, new, features=[fnew], **kw)
        scores[name] = (h.best_score, h.best_r2)
    assert scores["default"][0] > 0.6 and scores["default"][1] > 0.2, scores
    assert scores["default"][1] > scores["old"][1] + 0.1, scores
