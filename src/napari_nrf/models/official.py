"""Converter: a run of the official NRF code (github.com/haomiao8/NRF) -> a napari-nrf bundle.

An official run folder holds::

    best_model/best_NRF_model.pth.tar       {"epoch", "state_dict", "optim_dict", "val_corr"}
    best_model/best_feature_merger.pth.tar  same keys, the feature merger's state dict
    B.npy                                   (3, F) float32 Fourier matrix
    experiment_config.yaml                  the run's YAML config

Checkpoints are read with ``torch.load(weights_only=True)`` only (plain tensors and
Python/NumPy scalars; nothing else is unpickled). The official architecture maps onto
:class:`napari_nrf.models.nrf.NRF` as follows (facts from the official code):

* image features: CLIP ViT-B/16 hidden states ``selected_layers`` + 1 (``[3, 6]`` -> our
  ``block4``/``block7``, patch tokens only) and the projected, unnormalised 512-d image
  embedding (our ``embedding``, ``normalise_embedding=False``);
* merger: ``lin1``/``lin2`` (C -> 128 per token) and ``fuse1``/``fuse2`` (128 P -> D) for
  the two layers, no activation after the fuse layers (``merger_activation="identity"``),
  concatenation and L2 normalisation -> our ``merger.block4.{lin,fuse}``,
  ``merger.block7.{lin,fuse}``;
* coordinates: ``[sin(u B), cos(u B)]`` with ``u = x/182 + 92/182, y/218 + 126/218,
  z/182 + 72/182`` (our default coordinate normalisation) and ``B`` from ``B.npy``;
* MLP: ``layers.{i}`` Linear layers, ReLU between, input ``[merged, embedding, gamma]``
  -> our ``layers.{i}``. Weight-normalised layers (``model.weight_norm``) are folded into
  plain weights. Skip connections (``model.latent_in``) have no equivalent and are refused.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from napari_nrf.errors import NapariNRFError


class OfficialNRFError(NapariNRFError):
    """An official NRF run folder is incomplete or does not match the official layout."""


MODEL_CKPT = "best_model/best_NRF_model.pth.tar"
MERGER_CKPT = "best_model/best_feature_merger.pth.tar"


def load_checkpoint(path) -> dict:
    """``torch.load(path, weights_only=True)`` of an official checkpoint dict, on the CPU.

    NumPy scalars (the official code stores ``val_corr`` as ``np.float64``) are allowed
    through torch's safe-globals list; anything else that is not a tensor or a plain
    Python value makes the load fail with :class:`OfficialNRFError`.
    """
    path = Path(path)
    if not path.exists():
        raise OfficialNRFError(f"checkpoint not found: {path}")
    safe = [np.dtype, type(np.dtype(np.float64)), type(np.dtype(np.float32))]
    try:
        safe.append(np._core.multiarray.scalar)
    except AttributeError:  # NumPy < 2
        safe.append(np.core.multiarray.scalar)
    try:
        with torch.serialization.safe_globals(safe):
            ckpt = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:  # UnpicklingError, RuntimeError, EOFError, ...
        raise OfficialNRFError(
            f"{path.name} cannot be read as a weights-only PyTorch checkpoint ({exc.__class__.__name__}: "
            f"{str(exc).splitlines()[0] if str(exc) else ''}). napari-nrf never unpickles arbitrary objects."
        ) from exc
    if isinstance(ckpt, dict) and "state_dict" in ckpt:
        state = ckpt["state_dict"]
    elif isinstance(ckpt, dict) and ckpt and all(isinstance(v, torch.Tensor) for v in ckpt.values()):
        state, ckpt = ckpt, {"state_dict": ckpt}  # a bare state dict
    else:
        raise OfficialNRFError(f"{path.name} is not an official checkpoint (a dict with a 'state_dict')")
    # DataParallel runs prefix every key with "module.".
    ckpt["state_dict"] = {(k[7:] if k.startswith("module.") else k): v for k, v in state.items()}
    return ckpt


def _find_config(run_dir: Path, config) -> Path:
    if config is not None:
        p = Path(config)
        if not p.exists():
            raise OfficialNRFError(f"config file not found: {p}")
        return p
    if (run_dir / "experiment_config.yaml").exists():
        return run_dir / "experiment_config.yaml"
    found = sorted(list(run_dir.glob("*.yaml")) + list(run_dir.glob("*.yml")))
    if len(found) == 1:
        return found[0]
    raise OfficialNRFError(
        f"{'no' if not found else 'several'} YAML config(s) in {run_dir}"
        + (f" ({', '.join(p.name for p in found)})" if found else "") + "; pass config= (--config)"
    )


def _get(cfg: dict, dotted: str, default=None, required=True):
    cur = cfg
    for part in dotted.split("."):
        if not isinstance(cur, dict) or part not in cur:
            if required:
                raise OfficialNRFError(f"the config lacks '{dotted}'")
            return default
        cur = cur[part]
    return cur


def _fold_weight_norm(state: dict, prefix: str) -> torch.Tensor | None:
    """Plain weight of a weight-normalised Linear (new parametrisation or old g/v keys)."""
    for g_key, v_key in ((f"{prefix}.parametrizations.weight.original0", f"{prefix}.parametrizations.weight.original1"),
                         (f"{prefix}.weight_g", f"{prefix}.weight_v")):
        if g_key in state and v_key in state:
            g, v = state[g_key].float(), state[v_key].float()
            return g * v / v.norm(dim=1, keepdim=True)
    return None


def read_official_run(run_dir, config=None) -> dict:
    """Read and validate an official run -> dict with ``config`` (parsed YAML), ``mlp`` and
    ``merger`` (state dicts), ``B`` ((3, F) float32), ``epoch``, ``val_corr`` and the paths."""
    import yaml

    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise OfficialNRFError(f"official run folder not found: {run_dir}")
    cfg_path = _find_config(run_dir, config)
    from napari_nrf.guards import read_text_table

    try:
        cfg = yaml.safe_load(read_text_table(cfg_path, "--config"))
    except yaml.YAMLError as exc:
        raise OfficialNRFError(f"{cfg_path.name} is not valid YAML: {exc}") from exc
    if not isinstance(cfg, dict):
        raise OfficialNRFError(f"{cfg_path.name} does not hold a YAML mapping")
    model_ckpt = load_checkpoint(run_dir / MODEL_CKPT)
    merger_ckpt = load_checkpoint(run_dir / MERGER_CKPT)
    b_path = run_dir / "B.npy"
    if not b_path.exists():
        alt = _get(cfg, "positional_embed.gaussian.B_matrix_dir", required=False)
        if alt and Path(alt).exists():
            b_path = Path(alt)
        else:
            raise OfficialNRFError(f"Fourier matrix not found: {b_path} (nor positional_embed.gaussian.B_matrix_dir)")
    B = np.load(b_path, allow_pickle=False)
    return {"config": cfg, "config_path": cfg_path, "mlp": model_ckpt["state_dict"],
            "merger": merger_ckpt["state_dict"], "B": np.asarray(B, np.float32), "B_path": b_path,
            "epoch": model_ckpt.get("epoch"), "val_corr": model_ckpt.get("val_corr"), "run_dir": run_dir}


def official_to_nrf(run: dict):
    """Build our :class:`~napari_nrf.models.nrf.NRF` with the weights of an official run
    (the dict of :func:`read_official_run`). Every shape is checked against the config."""
    from .nrf import NRF

    cfg = run["config"]
    F = int(_get(cfg, "positional_embed.gaussian.num_features"))
    std = float(_get(cfg, "positional_embed.gaussian.std"))
    layers_sel = [int(v) for v in _get(cfg, "image_embedding.selected_layers", [3, 6], required=False)]
    num_layers = int(_get(cfg, "model.num_layers"))
    hidden = int(_get(cfg, "model.hidden_layer_dim"))
    if _get(cfg, "model.latent_in", [], required=False):
        raise OfficialNRFError("the run uses skip connections (model.latent_in); napari-nrf's NRF has none")
    side = int(_get(cfg, "feature_merger.num_patches"))
    merged = int(_get(cfg, "feature_merger.downsample_dim"))
    early = int(_get(cfg, "feature_merger.early_feat_input_dim"))
    higher = int(_get(cfg, "feature_merger.higher_feat_input_dim"))
    if len(layers_sel) != 2:
        raise OfficialNRFError(f"the official merger reads exactly two layers; the config selects {layers_sel}")
    B = run["B"]
    if B.shape != (3, F):
        raise OfficialNRFError(f"B.npy has shape {B.shape}; the config says (3, {F})")

    mg = run["merger"]
    need = [f"{n}.{p}" for n in ("lin1", "lin2", "fuse1", "fuse2") for p in ("weight", "bias")]
    missing = [k for k in need if k not in mg]
    if missing:
        raise OfficialNRFError(f"the feature-merger checkpoint lacks {', '.join(missing)} (have {', '.join(list(mg)[:8])})")
    d = int(mg["lin1.weight"].shape[0])
    expect = {"lin1.weight": (d, early), "lin2.weight": (d, early), "fuse1.weight": (merged, d * side * side),
              "fuse2.weight": (merged, d * side * side)}
    for k, shp in expect.items():
        if tuple(mg[k].shape) != shp:
            raise OfficialNRFError(f"feature merger {k} has shape {tuple(mg[k].shape)}, the config implies {shp}")

    mlp = run["mlp"]
    in_dim = 2 * merged + higher + 2 * F
    dims = [in_dim] + [hidden] * (num_layers - 1) + [1]
    state = {}
    for i in range(num_layers):
        w = mlp.get(f"layers.{i}.weight")
        if w is None:
            w = _fold_weight_norm(mlp, f"layers.{i}")
        b = mlp.get(f"layers.{i}.bias")
        if w is None or b is None:
            raise OfficialNRFError(f"the NRF checkpoint lacks layers.{i}.weight/bias (model.num_layers = {num_layers})")
        if tuple(w.shape) != (dims[i + 1], dims[i]):
            raise OfficialNRFError(f"layers.{i}.weight has shape {tuple(w.shape)}, the config implies "
                                   f"{(dims[i + 1], dims[i])}")
        state[f"layers.{i}.weight"], state[f"layers.{i}.bias"] = w.float(), b.float()
    if f"layers.{num_layers}.weight" in mlp:
        raise OfficialNRFError(f"the NRF checkpoint has more than model.num_layers = {num_layers} layers")

    names = [f"block{v + 1}" for v in layers_sel]  # hidden_states[l + 1] = output of block l + 1
    model = NRF(token_maps=[[n, side * side, early, None] for n in names], embedding=["embedding", higher],
                downsample_dim=d, merged_dim=merged, normalise_embedding=False, n_fourier=F, fourier_std=std,
                fourier_seed=42, width=hidden, depth=num_layers, merger_activation="identity")
    for n, k in zip(names, ("1", "2")):
        for part, off in (("lin", "lin"), ("fuse", "fuse")):
            state[f"merger.{n}.{part}.weight"] = mg[f"{off}{k}.weight"].float()
            state[f"merger.{n}.{part}.bias"] = mg[f"{off}{k}.bias"].float()
    state["fourier_B"] = torch.from_numpy(B)
    state["coord_offset"] = model.coord_offset
    state["coord_size"] = model.coord_size
    model.load_state_dict(state, strict=True)
    model.backbone_name = "clip-vit-b16"
    model.backbone_config = {"layers": [v + 1 for v in layers_sel]}
    return model.eval()


def _subject_coords(coords):
    """(V, 3) float32 MNI mm and a default subject name from a response set or a mask NIfTI."""
    p = Path(coords)
    if p.suffix in (".h5", ".hdf5"):
        from napari_nrf.data.responseset import ResponseSet

        rs = ResponseSet.load(p, lazy=True)
        try:
            return rs.coords, rs.subject
        finally:
            rs.close()
    from napari_nrf import space

    data, grid = space.load_nifti(p)
    return grid.coords(np.asarray(data) != 0), None


def convert_official_nrf(run_dir, out, config=None, coords=None, subject: str = "sub-01", progress=None) -> Path:
    """Convert an official NRF run into a ``.safetensors`` bundle at ``out``; returns the path.

    ``coords`` (a response set ``.h5`` or a mask NIfTI) stores those voxels as the bundle's
    ``subject``, so ``predict(voxels=...)`` and evaluation work on them. ``progress``: None,
    True (a tqdm bar) or callable(done, total), over the 3 steps read/convert/write.
    """
    from napari_nrf.data._importing import Progress

    bar = Progress(progress, total=3, desc="official NRF")
    try:
        run = read_official_run(run_dir, config)
        bar.update(1, desc="read checkpoints")
        model = official_to_nrf(run)
        if coords is not None:
            xyz, name = _subject_coords(coords)
            model.subjects = {(subject if subject != "sub-01" or name is None else name): np.asarray(xyz, np.float32)}
        val = run["val_corr"]
        model.metrics = {"official_val_median_r": float(val)} if val is not None else {}
        model.provenance = {"source": "official-nrf (haomiao8/NRF)", "run_dir": str(Path(run_dir).resolve()),
                            "config_file": str(run["config_path"]), "epoch": run["epoch"],
                            "official_config": run["config"]}
        bar.update(1, desc="converted")
        path = model.save(out)
        bar.update(1, desc="written")
    finally:
        bar.close()
    return path
