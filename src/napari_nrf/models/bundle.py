"""Model bundles: one ``.safetensors`` file with every tensor and JSON metadata.

The JSON metadata lives in the safetensors header under the key ``"napari_nrf"``::

    {
      "format": "napari-nrf-bundle", "format_version": 1,
      "kind": "nrf" | "universal" | "ensemble" | ...,
      "config": {...},                      # model hyper-parameters (kind specific)
      "backbone": {"name": "efficientnet-lite0", "config": {...}},
      "coords": {"offset": [..], "size": [..]},   # coordinate normalisation (NRF)
      "subjects": {"sub-01": {"n_voxels": V, "tensor": "subjects.sub-01.coords"}, ...},
      "provenance": {"created": iso time, "napari_nrf": version, "data": [...], "command": ...},
      "metrics": {...},
    }

Loading never unpickles anything: safetensors stores raw arrays only.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
from pathlib import Path

import numpy as np
import torch

from napari_nrf.errors import NapariNRFError, atomic_write

FORMAT = "napari-nrf-bundle"
FORMAT_VERSION = 1
META_KEY = "napari_nrf"


class BundleError(NapariNRFError):
    """A bundle file is missing, corrupt, or does not match what the caller expects."""


def _json_default(o):
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, (np.ndarray, torch.Tensor)):
        return np.asarray(o).tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"metadata value of type {type(o).__name__} is not JSON-serialisable")


def check_bundle_path(path) -> Path:
    """Check that a model bundle can be written at ``path`` (call it before long work).

    Raises :class:`BundleError` for a name not ending in ``.safetensors``, an existing
    folder of that name, or a parent that is a file.
    """
    path = Path(path)
    if path.suffix != ".safetensors":
        raise BundleError(f"bundle files end in .safetensors, got {path.name}")
    if path.is_dir():
        raise BundleError(f"{path} is a folder; give the model file's path (.safetensors)")
    for parent in path.parents:
        if parent.exists():
            if not parent.is_dir():
                raise BundleError(f"cannot write {path}: {parent} is a file, not a folder")
            if not os.access(parent, os.W_OK):
                raise BundleError(f"cannot write {path}: no write permission in {parent}")
            break
    return path


def save_bundle(path, tensors: dict, metadata: dict) -> Path:
    """Write ``tensors`` (name -> torch.Tensor or ndarray) and ``metadata`` to ``path``.

    The write is atomic: a temporary file in the same folder is renamed over ``path``, so
    a crash never leaves a half-written bundle. Returns the path.
    """
    from safetensors.torch import save_file

    path = Path(path)
    check_bundle_path(path)
    if "kind" not in metadata:
        raise BundleError("bundle metadata needs a 'kind'")
    meta = dict(metadata)
    meta.setdefault("format", FORMAT)
    meta.setdefault("format_version", FORMAT_VERSION)
    prov = dict(meta.get("provenance") or {})
    prov.setdefault("created", _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"))
    from napari_nrf._version import __version__

    prov.setdefault("napari_nrf", __version__)
    meta["provenance"] = prov
    flat = {}
    for k, v in tensors.items():
        t = torch.as_tensor(np.asarray(v)) if not isinstance(v, torch.Tensor) else v
        flat[k] = t.detach().to("cpu").contiguous()
    meta["integrity"] = integrity_record(flat)
    # (atomic_write makes the file 0666 & ~umask: safetensors creates it 0600, and a
    # model is meant to be shared like any file)
    from napari_nrf.guards import disk_guard

    from napari_nrf.guards import json_safe

    header = json.dumps(json_safe(meta), default=_json_default)
    need = sum(t.numel() * t.element_size() for t in flat.values()) + len(header) + 4096
    with disk_guard(path, need, "saving the model"), atomic_write(path, None) as tmp:
        save_file(flat, str(tmp), metadata={META_KEY: header})
    return path


def _dtype_name(t: torch.Tensor) -> str:
    return str(t.dtype).replace("torch.", "")


def tensors_digest(tensors: dict) -> str:
    """SHA-256 over every tensor (sorted by name): its name, dtype, shape and raw bytes."""
    import hashlib

    h = hashlib.sha256()
    for k in sorted(tensors):
        t = tensors[k].detach().to("cpu").contiguous()
        h.update(f"{k}\0{_dtype_name(t)}\0{tuple(t.shape)}\0".encode())
        if t.numel():
            h.update(t.reshape(-1).view(torch.uint8).numpy())
    return h.hexdigest()


def integrity_record(tensors: dict) -> dict:
    """The metadata field ``integrity``: each tensor's dtype and shape and the
    :func:`tensors_digest` of them all (checked by :func:`load_bundle`)."""
    return {"sha256": tensors_digest(tensors),
            "tensors": {k: [_dtype_name(t), list(t.shape)] for k, t in sorted(tensors.items())}}


def check_integrity(path: Path, tensors: dict, meta: dict) -> None:
    """Refuse a bundle whose tensors differ from its metadata field ``integrity`` (a flipped
    bit, a relabelled dtype, a changed shape). Bundles written before the field existed
    carry none and are accepted as they are."""
    rec = meta.get("integrity")
    if rec is None:
        return
    if not isinstance(rec, dict) or not isinstance(rec.get("tensors"), dict) or not isinstance(rec.get("sha256"), str):
        raise BundleError(f"{path.name}: metadata field 'integrity' is malformed; refused")
    declared = rec["tensors"]
    if set(declared) != set(tensors):
        extra = sorted(set(tensors) ^ set(declared))
        raise BundleError(f"{path.name}: the file's tensors differ from metadata field 'integrity.tensors' "
                          f"({', '.join(extra[:4])}); refused (a damaged or edited file)")
    for k, t in tensors.items():
        want = declared[k]
        if not (isinstance(want, list) and len(want) == 2) or [_dtype_name(t), list(t.shape)] != [want[0], list(want[1])]:
            raise BundleError(f"{path.name}: tensor {k} is {_dtype_name(t)} {tuple(t.shape)}, metadata field "
                              f"'integrity.tensors' declares {want}; refused (a damaged or edited file)")
    if tensors_digest(tensors) != rec["sha256"]:
        raise BundleError(f"{path.name}: the tensor data do not match the checksum in metadata field "
                          "'integrity.sha256'; refused (a damaged file: restore it from a copy)")


def read_metadata(path) -> dict:
    """The JSON metadata of a bundle, without reading its tensors."""
    from safetensors import safe_open

    from napari_nrf.guards import check_regular_file

    path = Path(path)
    if not path.exists() and not path.is_symlink():
        raise BundleError(f"model bundle not found: {path}")
    check_regular_file(path, "model bundle")
    try:
        with safe_open(str(path), framework="pt") as f:
            raw = (f.metadata() or {}).get(META_KEY)
    except Exception as exc:  # safetensors raises its own error types for corrupt headers
        raise BundleError(f"{path.name} is not a readable safetensors file ({exc})") from exc
    if raw is None:
        raise BundleError(f"{path.name} has no napari-nrf metadata (field '{META_KEY}' missing from the header)")
    try:
        meta = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise BundleError(f"{path.name}: metadata field '{META_KEY}' is not valid JSON ({exc})") from exc
    if not isinstance(meta, dict):
        raise BundleError(f"{path.name}: metadata field '{META_KEY}' is a JSON {type(meta).__name__}, "
                          "expected an object")
    if meta.get("format") != FORMAT:
        raise BundleError(f"{path.name}: metadata field 'format' is {meta.get('format')!r}, expected {FORMAT!r}")
    v = meta.get("format_version")
    if not isinstance(v, int) or v > FORMAT_VERSION or v < 1:
        raise BundleError(
            f"{path.name}: metadata field 'format_version' is {v!r}; this napari-nrf reads versions 1..{FORMAT_VERSION}"
        )
    if "kind" not in meta:
        raise BundleError(f"{path.name}: metadata field 'kind' is missing")
    return meta


def load_bundle(path, kind: str | None = None, backbone: str | None = None,
                required: list[str] | tuple = (), device="cpu", verify: bool = True) -> tuple[dict, dict]:
    """Read ``(tensors, metadata)`` from a bundle; never unpickles.

    Raises :class:`BundleError` naming the field when the kind or backbone differs from
    ``kind``/``backbone`` (when given), a ``required`` tensor is missing or (``verify``)
    the tensors differ from the metadata field ``integrity`` (:func:`check_integrity`;
    ``verify=False`` leaves that check to the caller).
    """
    from safetensors.torch import load_file

    path = Path(path)
    meta = read_metadata(path)
    if kind is not None and meta["kind"] != kind:
        raise BundleError(f"{path.name}: metadata field 'kind' is {meta['kind']!r}, expected {kind!r}")
    if backbone is not None:
        got = (meta.get("backbone") or {}).get("name")
        if got != backbone:
            raise BundleError(f"{path.name}: metadata field 'backbone.name' is {got!r}, expected {backbone!r}")
    try:
        tensors = load_file(str(path), device=str(device))
    except Exception as exc:
        raise BundleError(f"{path.name}: tensor data are corrupt or truncated ({exc})") from exc
    if verify:
        check_integrity(path, tensors, meta)
    missing = [r for r in required if r not in tensors]
    if missing:
        raise BundleError(f"{path.name}: missing tensor(s) {', '.join(missing)}")
    return tensors, meta
