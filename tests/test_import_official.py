"""Official NRF run -> bundle: identical predictions to the official architecture.

The official forward pass is re-implemented here from the documented facts (design notes
section 3): merger lin/fuse per layer without activation, concatenation, L2 normalisation,
the unnormalised CLIP embedding, Fourier features of normalised MNI coordinates, MLP with
ReLU between Linear layers. Weights are random and tiny, written in the official key layout.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from napari_nrf.models.official import OfficialNRFError, convert_official_nrf, load_checkpoint

SIDE, EARLY, HIGHER, MERGED, D, NF, HIDDEN, NL = 2, 12, 6, 8, 128, 4, 16, 3


def _config(**model):
    m = {"num_layers": NL, "hidden_layer_dim": HIDDEN, "latent_in": [], "dropout_layer": None,
         "dropout_prob": 0.2, "weight_norm": False, "weight_norm_layer": []}
    m.update(model)
    return {"training": {"batch_size": 32, "learning_rate": 0.0003},
            "positional_embed": {"type": "gaussian", "gaussian": {"B_matrix_dir": None, "std": 32, "num_features": NF}},
            "image_embedding": {"model_name": "openai/clip-vit-base-patch16", "selected_layers": [3, 6]},
            "model": m,
            "feature_merger": {"num_patches": SIDE, "downsample_dim": MERGED, "early_feat_input_dim": EARLY,
                               "higher_feat_input_dim": HIGHER}}


def make_official_run(folder, seed=0, weight_norm=False, prefix=""):
    import yaml

    g = torch.Generator().manual_seed(seed)

    def lin(o, i):
        return torch.randn(o, i, generator=g) / i ** 0.5, torch.randn(o, generator=g) * 0.1

    merger = {}
    for k in ("1", "2"):
        merger[f"lin{k}.weight"], merger[f"lin{k}.bias"] = lin(D, EARLY)
        merger[f"fuse{k}.weight"], merger[f"fuse{k}.bias"] = lin(MERGED, D * SIDE * SIDE)
    dims = [2 * MERGED + HIGHER + 2 * NF] + [HIDDEN] * (NL - 1) + [1]
    mlp = {}
    for i in range(NL):
        w, b = lin(dims[i + 1], dims[i])
        if weight_norm and i == 0:
            v = w * 3.0  # direction; the gain restores the norm
            gain = w.norm(dim=1, keepdim=True)
            mlp[f"{prefix}layers.{i}.parametrizations.weight.original0"] = gain
            mlp[f"{prefix}layers.{i}.parametrizations.weight.original1"] = v
        else:
            mlp[f"{prefix}layers.{i}.weight"] = w
        mlp[f"{prefix}layers.{i}.bias"] = b
    B = np.random.default_rng(42).normal(scale=32, size=(3, NF)).astype(np.float32)
    (folder / "best_model").mkdir(parents=True, exist_ok=True)
    optim = {"state": {}, "param_groups": [{"lr": 3e-4, "weight_decay": 0.015, "params": [0, 1]}]}
    torch.save({"epoch": 7, "state_dict": mlp, "optim_dict": optim, "val_corr": np.float64(0.31)},
               folder / "best_model" / "best_NRF_model.pth.tar")
    torch.save({"epoch": 7, "state_dict": merger, "optim_dict": None, "val_corr": np.float64(0.31)},
               folder / "best_model" / "best_feature_merger.pth.tar")
    np.save(folder / "B.npy", B)
    cfg = _config(weight_norm=weight_norm, weight_norm_layer=[0] if weight_norm else [])
    (folder / "experiment_config.yaml").write_text(yaml.safe_dump(cfg))
    plain = {k.replace(prefix, ""): v for k, v in mlp.items()}
    if weight_norm:
        v = plain.pop("layers.0.parametrizations.weight.original1")
        gn = plain.pop("layers.0.parametrizations.weight.original0")
        plain["layers.0.weight"] = gn * v / v.norm(dim=1, keepdim=True)
    return merger, plain, B


def official_forward(merger, mlp, B, f1, f2, emb, xyz):
    """The official computation, written from the facts: (n_img, n_pts) responses."""
    m1 = F.linear(F.linear(f1, merger["lin1.weight"], merger["lin1.bias"]).flatten(1),
                  merger["fuse1.weight"], merger["fuse1.bias"])
    m2 = F.linear(F.linear(f2, merger["lin2.weight"], merger["lin2.bias"]).flatten(1),
                  merger["fuse2.weight"], merger["fuse2.bias"])
    image = torch.cat([F.normalize(torch.cat([m1, m2], -1), p=2, dim=1), emb], -1)
    u = torch.stack([xyz[:, 0] / 182 + 92 / 182, xyz[:, 1] / 218 + 126 / 218, xyz[:, 2] / 182 + 72 / 182], 1)
    pe = torch.cat([torch.sin(u @ torch.as_tensor(B)), torch.cos(u @ torch.as_tensor(B))], -1)
    n_img, n_pts = image.shape[0], pe.shape[0]
    x = torch.cat([image[:, None].expand(n_img, n_pts, -1), pe[None].expand(n_img, n_pts, -1)], -1).reshape(n_img * n_pts, -1)
    for i in range(NL):
        x = F.linear(x, mlp[f"layers.{i}.weight"], mlp[f"layers.{i}.bias"])
        if i < NL - 1:
            x = torch.relu(x)
    return x.reshape(n_img, n_pts)


def _inputs(seed=1):
    g = torch.Generator().manual_seed(seed)
    f1 = torch.randn(3, SIDE * SIDE, EARLY, generator=g)
    f2 = torch.randn(3, SIDE * SIDE, EARLY, generator=g)
    emb = torch.randn(3, HIGHER, generator=g) * 2  # CLIP's projected embedding, not unit length
    xyz = torch.tensor([[-40.0, -80.0, 0.0], [40.0, -80.0, 0.0], [0.0, 20.0, 40.0], [-10.0, -50.5, 12.3]])
    return f1, f2, emb, xyz


@pytest.mark.parametrize("weight_norm,prefix", [(False, ""), (True, "module.")])
def test_converted_bundle_predicts_like_official(tmp_path, weight_norm, prefix):
    from napari_nrf.models import load_model

    merger, mlp, B = make_official_run(tmp_path / "run", weight_norm=weight_norm, prefix=prefix)
    out = convert_official_nrf(tmp_path / "run", tmp_path / "nrf.safetensors")
    model = load_model(out)
    f1, f2, emb, xyz = _inputs()
    with torch.no_grad():
        ours = model.predict({"block4": f1, "block7": f2, "embedding": emb}, coords=xyz.numpy())
        ref = official_forward(merger, mlp, B, f1, f2, emb, xyz)
    torch.testing.assert_close(ours, ref, atol=1e-5, rtol=1e-5)
    assert model.backbone_name == "clip-vit-b16" and model.backbone_config == {"layers": [4, 7]}
    assert model.metrics["official_val_median_r"] == pytest.approx(0.31)
    assert model.provenance["epoch"] == 7


def test_subject_coords_from_response_set(tmp_path):
    from napari_nrf.data.responseset import ResponseSet
    from napari_nrf.models import load_model

    make_official_run(tmp_path / "run")
    xyz = np.array([[-40.0, -80.0, 0.0], [40.0, -80.0, 0.0]], np.float32)
    ResponseSet(responses=np.zeros((2, 2), np.float32), coords=xyz, split=np.zeros(2), image_paths=["a", "b"],
                subject="subj05").save(tmp_path / "rs.h5")
    model = load_model(convert_official_nrf(tmp_path / "run", tmp_path / "m.safetensors", coords=tmp_path / "rs.h5"))
    np.testing.assert_array_equal(model.subjects["subj05"], xyz)
    f1, f2, emb, _ = _inputs()
    feats = {"block4": f1, "block7": f2, "embedding": emb}
    with torch.no_grad():
        torch.testing.assert_close(model.predict(feats, voxels=[1], subject="subj05"),
                                   model.predict(feats, coords=xyz[1:]))


def test_refuses_pickled_objects_and_bad_runs(tmp_path):
    import yaml

    run = tmp_path / "run"
    make_official_run(run)
    # A checkpoint holding an arbitrary Python object is never unpickled.
    bad = tmp_path / "evil.pth.tar"
    torch.save({"state_dict": {}, "extra": OfficialNRFError("x")}, bad)
    with pytest.raises(OfficialNRFError, match="weights-only"):
        load_checkpoint(bad)
    # Config and weights that disagree.
    cfg = yaml.safe_load((run / "experiment_config.yaml").read_text())
    cfg["model"]["hidden_layer_dim"] = 32
    (run / "experiment_config.yaml").write_text(yaml.safe_dump(cfg))
    with pytest.raises(OfficialNRFError, match="layers.0.weight has shape"):
        convert_official_nrf(run, tmp_path / "x.safetensors")
    cfg["model"]["hidden_layer_dim"] = HIDDEN
    cfg["model"]["latent_in"] = [2]
    (run / "experiment_config.yaml").write_text(yaml.safe_dump(cfg))
    with pytest.raises(OfficialNRFError, match="latent_in"):
        convert_official_nrf(run, tmp_path / "x.safetensors")
    (run / "B.npy").unlink()
    with pytest.raises(OfficialNRFError, match="Fourier matrix"):
        convert_official_nrf(run, tmp_path / "x.safetensors")
    with pytest.raises(OfficialNRFError, match="not found"):
        convert_official_nrf(tmp_path / "nope", tmp_path / "x.safetensors")


def test_cli_import_official(tmp_path):
    from napari_nrf.cli import main

    make_official_run(tmp_path / "run")
    assert main(["import-official-nrf", str(tmp_path / "run"), "--out", str(tmp_path / "m.safetensors")]) == 0
    assert (tmp_path / "m.safetensors").exists()
    assert main(["import-official-nrf", str(tmp_path / "none"), "--out", str(tmp_path / "n.safetensors")]) == 2
