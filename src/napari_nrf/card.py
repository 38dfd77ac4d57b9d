"""A model card (Markdown) from a bundle's metadata and the records written beside it.

:func:`model_card_markdown` reads only the bundle's JSON header (no tensors are loaded),
``<bundle>.history.csv`` (:mod:`napari_nrf.history`) and ``<bundle>.config.toml``
(``napari-nrf train --config``) when present. ``napari-nrf card MODEL [--out card.md]``
prints or writes it.
"""

from __future__ import annotations

from pathlib import Path

# What each kind is for, in one sentence; the caveat every card carries.
INTENDED_USE = {
    "nrf": "predict the fMRI response to a natural image at any MNI point (a continuous field), "
           "for the subjects it was trained on",
    "universal": "predict voxelwise responses of its subjects' voxels to natural images; "
                 "transfer to a new subject from a few hundred images; cluster voxel embeddings into maps",
    "ensemble": "predict a new subject's voxels as a voxelwise blend of finetuned base models",
    "movie": "predict fMRI time series from film chunks and decode the chunk's middle frame back",
    "rest2visual": "predict a person's evoked volume to an image from their resting-state map",
}
CAVEAT = ("Predictions are only as good as the training data: outside the voxels the model was "
          "trained on (query `--mask brain` or `gm`) they are extrapolation, and a model trained on "
          "virtual subjects (`napari-nrf simulate`) says nothing about real brains. The volumes are "
          "in MNI152 space (napari_nrf.space); they are not for clinical use.")


def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    if isinstance(v, (list, tuple)):
        return ", ".join(_fmt(x) for x in v)
    return str(v)


def _repeat_command(bundle: Path) -> str | None:
    from napari_nrf.history import config_path

    p = config_path(bundle)
    if not p.is_file():
        return None
    for line in p.read_text(errors="replace").splitlines()[:3]:
        if line.startswith("#   napari-nrf "):
            return line[4:]
    return None


def model_card_markdown(path) -> str:
    """The Markdown model card of the bundle at ``path``: what it is, the data it saw,
    its validation metrics, the training history summary, intended use and caveats."""
    from napari_nrf.history import history_path, read_history
    from napari_nrf.models.bundle import read_metadata

    path = Path(path)
    meta = read_metadata(path)
    kind = str(meta.get("kind", "?"))
    prov = meta.get("provenance") or {}
    tr = prov.get("training") if isinstance(prov.get("training"), dict) else {}
    bb = meta.get("backbone") or {}
    subjects = meta.get("subjects") or {}
    out = [f"# Model card: {path.name}", "",
           f"- **Kind**: `{kind}`", f"- **Image backbone**: `{bb.get('name', '?')}`"
           + (f" (weights: {bb['config'].get('weights')})" if (bb.get("config") or {}).get("weights") else ""),
           f"- **Created**: {prov.get('created', '?')} with napari-nrf {prov.get('napari_nrf', '?')}",
           f"- **File format**: safetensors + JSON metadata ({meta.get('format', '?')} "
           f"v{meta.get('format_version', '?')})", "", "## Data", ""]
    if subjects:
        n_train = dict(zip(tr.get("subjects") or [], tr.get("n_train_images") or []))
        out += ["| subject | voxels | training images |", "|---|---|---|"]
        for s, info in subjects.items():
            nv = info.get("n_voxels", "?") if isinstance(info, dict) else "?"
            out.append(f"| {s} | {nv} | {n_train.get(s, '-')} |")
    else:
        out.append("No subjects are recorded in the bundle.")
    cmd = _repeat_command(path)
    if cmd:
        out += ["", f"Trained with `{cmd}` (settings: `{path.name}.config.toml`)."]
    out += ["", "## Training", ""]
    if tr:
        keys = [k for k in ("steps", "epochs", "epochs_run", "best_epoch", "batch_images", "batch_voxels", "lr",
                            "weight_decay", "alpha", "patience", "seed", "ranks") if k in tr]
        out += [f"- {k.replace('_', ' ')}: {_fmt(tr[k])}" for k in keys]
    else:
        out.append("No training record (an imported or converted model).")
    hist = read_history(path)
    if hist:
        last, val = hist[-1], [r for r in hist if r.get("val_median_r2") is not None]
        out.append(f"- history: {len(hist)} epochs in `{history_path(path).name}`, last training loss "
                   f"{_fmt(last.get('train_loss'))}"
                   + (f", best validation R^2 {_fmt(max(r['val_median_r2'] for r in val))}" if val else ""))
    out += ["", "## Metrics", ""]
    metrics = {k: v for k, v in (meta.get("metrics") or {}).items()
               if isinstance(v, (int, float)) and not isinstance(v, bool)}
    if metrics:
        out += ["| metric | value |", "|---|---|"] + [f"| {k} | {_fmt(v)} |" for k, v in metrics.items()]
        out += ["", "Validation scores of the kept epoch (median over voxels; `napari-nrf evaluate` scores "
                    "the test split)."]
    else:
        out.append("No metrics stored; run `napari-nrf evaluate MODEL DATA`.")
    use = INTENDED_USE.get(kind, "see docs/architecture.md")
    out += ["", "## Intended use", "", use[0].upper() + use[1:] + ".", "",
            "## Caveats", "", CAVEAT, ""]
    return "\n".join(out)
