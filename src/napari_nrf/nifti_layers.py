"""NIfTI files in and out of napari (the npe2 ``readers`` and ``writers`` contributions).

Qt-free and napari-free: the reader returns napari LayerData tuples ``(data, kwargs,
layer_type)`` and the writers take ``(path, data, meta)``, as npe2 specifies. Every
placement goes through :mod:`napari_nrf.space` (``load_nifti``, ``layer_data``,
``layer_to_volume``), so a file opened with File > Open lands exactly where the plugin's
own volumes do, and a file that is not an axis-aligned MNI volume gets the same
:class:`napari_nrf.space.SpaceError` message as the command line.

Opening
-------
* a 3D volume -> an Image layer at its MNI mm place;
* a 4D volume (X, Y, Z, T) -> an Image layer with a volume axis (napari's slider);
* a label atlas (integer data, a label intent, or a label table) -> a Labels layer, with
  the region names in its ``features`` (shown in the status bar) when a table sits beside
  it: ``<stem>.txt``/``.tsv``/``.csv``/``<stem>_labels.txt``/``.lut`` in nilearn, FSL or
  FreeSurfer style (``index name [r g b [a]]`` rows, a header with ``index``/``name``
  columns, or one name per line); without one, the table in the NIfTI's own header
  extension (AFNI's ``VALUE_LABEL_DTABLE``, a CIFTI-2 style ``<Label Key=...>`` XML, or a
  comment extension holding a table);
* a response volume written by napari-nrf (its JSON sidecar) -> the plugin's response
  layer (diverging colormap, units, NaN outside the mask kept for export).

Saving
------
File > Save Layers of a response, contrast or cluster layer as ``.nii``/``.nii.gz``
writes an MNI NIfTI (sform/qform code 4) with its description, intent and JSON sidecar
(:mod:`napari_nrf.volume_meta`); reading it back gives the same array on the same grid.
"""

from __future__ import annotations

import csv
import re
from pathlib import Path

import numpy as np

from napari_nrf import space, volume_meta
from napari_nrf.errors import write_text_atomic

META = "napari_nrf"
NIFTI_SUFFIXES = (".nii", ".nii.gz")
TABLE_SUFFIXES = (".txt", ".tsv", ".csv", "_labels.txt", ".lut", "_lut.txt")
MAX_LABELS = 5000  # integer volumes with more distinct values are read as images


def is_nifti(path) -> bool:
    return str(path).lower().endswith(NIFTI_SUFFIXES)


# ---- colormap of response volumes (a plain spec napari turns into a Colormap) --------
def cold_hot_spec(threshold: float = 0.2, name: str | None = None) -> dict:
    """A diverging colormap spec for symmetric limits (-m, m), centred at 0, as the dict
    napari accepts for ``colormap=`` (``colors``, ``controls``, ``name``, ``interpolation``).

    Negative values run blue -> cyan, positive red -> yellow; |v| < ``threshold * m`` is
    fully transparent (``threshold`` in [0, 1)), so the template shows through.
    """
    t = float(np.clip(threshold, 0.0, 0.99)) / 2
    eps = 1e-4
    lo, hi = 0.5 - t, 0.5 + t
    colors = [
        [0.0, 1.0, 1.0, 1.0],   # -m: cyan
        [0.0, 0.2, 1.0, 1.0],   # -t*m: blue
        [0.0, 0.2, 1.0, 0.0],   # inside the threshold: transparent
        [1.0, 0.1, 0.0, 0.0],
        [1.0, 0.1, 0.0, 1.0],   # +t*m: red
        [1.0, 1.0, 0.0, 1.0],   # +m: yellow
    ]
    controls = [0.0, max(lo - eps, eps), lo, hi, min(hi + eps, 1 - eps), 1.0]
    if t == 0:  # no transparent band: drop the two inner stops
        colors = [colors[0], colors[1], colors[4], colors[5]]
        controls = [0.0, 0.5 - eps, 0.5 + eps, 1.0]
    return {"colors": np.array(colors), "controls": np.array(controls),
            "name": name or f"nrf-cold-hot-{threshold:.3f}", "interpolation": "linear"}


def robust_limit(volume: np.ndarray) -> float:
    """Symmetric display limit: the 99.5th percentile of |finite values| (1.0 if none)."""
    v = np.abs(volume[np.isfinite(volume)])
    if v.size == 0:
        return 1.0
    m = float(np.percentile(v, 99.5))
    return m if m > 0 else float(v.max() or 1.0)


def response_layer_data(volume: np.ndarray, grid: space.Grid, name: str, threshold: float = 0.2,
                        limit: float | None = None, **meta) -> tuple:
    """``(data, kwargs, "image")`` of a response volume (X, Y, Z) float in MNI world coordinates.

    NaN (outside the mask) is shown as 0 (transparent); the original volume, NaN
    included, stays in ``metadata["napari_nrf"]["volume"]`` for exports. ``meta`` (e.g.
    ``units``, ``image``, ``mask``) goes to that metadata too.
    """
    volume = np.asarray(volume, np.float32)
    m = robust_limit(volume) if limit is None else float(limit)
    shown = np.nan_to_num(volume, nan=0.0, posinf=m, neginf=-m)
    data, kw = space.layer_data(shown, grid)
    md = {"kind": "response", "grid": grid, "volume": volume, "threshold": float(threshold),
          "units": volume_meta.DEFAULT_UNITS}
    md.update({k: v for k, v in meta.items() if v is not None})
    kw.update(name=name, colormap=cold_hot_spec(threshold), contrast_limits=(-m, m), rendering="translucent",
              blending="translucent", metadata={META: md})
    return data, kw, "image"


# ---- label tables -----------------------------------------------------------------------
def label_table_for(path) -> Path | None:
    """The label table beside NIfTI ``path`` (first of ``<stem>`` + :data:`TABLE_SUFFIXES`), or None."""
    path = Path(path)
    stem = space.nifti_stem(path)
    for suf in TABLE_SUFFIXES:
        cand = path.with_name(stem + suf)
        if cand.is_file():
            return cand
    return None


def _int(text):
    try:
        f = float(text)
    except ValueError:
        return None
    return int(f) if f == int(f) else None


def read_label_table(path, values=None) -> dict[int, dict]:
    """Label value -> {"name": str, "color": (r, g, b, a) floats in [0, 1] or None}.

    Reads nilearn/FSL/FreeSurfer style tables: ``index name [r g b [a]]`` rows (tab,
    comma or space separated, ``#`` comments), a header row naming ``index``/``label``/
    ``value`` and ``name``/``label_name`` columns, or one name per line (index = line
    number, from 0 when the names cover 0..max of ``values`` else from 1).
    """
    return parse_label_table(Path(path).read_text(errors="replace"), values)


def parse_label_table(text: str, values=None) -> dict[int, dict]:
    """:func:`read_label_table` of a table's text (a file's or a NIfTI extension's)."""
    lines = [ln for ln in text.splitlines() if ln.strip() and not ln.lstrip().startswith("#")]
    if not lines:
        return {}
    delim = "\t" if "\t" in lines[0] else ("," if "," in lines[0] else None)

    def split(ln):
        if delim is None:
            return ln.split()
        return [c.strip() for c in next(csv.reader([ln], delimiter=delim))]

    rows = [split(ln) for ln in lines]
    head = [c.lower() for c in rows[0]]
    out: dict[int, dict] = {}
    idx_cols = [i for i, c in enumerate(head) if c in ("index", "label", "value", "id", "label_value", "roi")]
    name_cols = [i for i, c in enumerate(head) if c in ("name", "label_name", "region", "labels", "roi_name")]
    if _int(rows[0][0]) is None and (idx_cols or name_cols):  # a header row
        ni = name_cols[0] if name_cols else (1 if len(head) > 1 else 0)
        ii = next((i for i in idx_cols if i != ni), None)
        for k, r in enumerate(rows[1:]):
            if len(r) <= ni:
                continue
            v = _int(r[ii]) if ii is not None and ii < len(r) else k
            if v is not None:
                out[v] = {"name": r[ni], "color": None}
        return out
    if all(_int(r[0]) is not None and len(r) >= 2 for r in rows):  # index name [r g b [a]]
        for r in rows:
            v = _int(r[0])
            rest = r[1:]
            nums = []
            while len(rest) > 1 and _int(rest[-1]) is not None and len(nums) < 4:
                nums.insert(0, _int(rest.pop()))
            color = None
            if len(nums) >= 3:
                rgb = [c / 255 for c in nums[:3]]
                alpha = 1.0 if len(nums) < 4 or nums[3] in (0, 255) else nums[3] / 255
                color = (*rgb, alpha)
            out[v] = {"name": " ".join(rest), "color": color}
        return out
    names = [" ".join(r) if delim is None else r[0] for r in rows]  # one name per line
    vmax = int(max(values)) if values is not None and len(values) else len(names) - 1
    start = 0 if len(names) == vmax + 1 or names[0].lower() in ("background", "unknown") else 1
    return {start + i: {"name": n, "color": None} for i, n in enumerate(names)}


# NIfTI-1 extension codes that can carry a label table (nifti1.h): AFNI's XML attributes
# (VALUE_LABEL_DTABLE), a plain-text comment, CIFTI-2's XML (<LabelTable><Label Key=...>).
ECODE_AFNI, ECODE_COMMENT, ECODE_CIFTI = 4, 6, 32


def _xml_root(text: str):
    import xml.etree.ElementTree as ET

    try:
        return ET.fromstring(text.strip().strip("\x00"))
    except ET.ParseError:
        return None


def _xml_label_table(root) -> dict[int, dict]:
    """``<Label Key="1" Red="1" Green="0" Blue="0" Alpha="1">name</Label>`` elements (CIFTI-2,
    GIFTI style; colours are floats in [0, 1]) anywhere under ``root``."""
    out: dict[int, dict] = {}
    for el in root.iter():
        if el.tag.rsplit("}", 1)[-1] != "Label" or _int(el.get("Key", "")) is None:
            continue
        try:
            rgba = tuple(float(el.get(c)) for c in ("Red", "Green", "Blue", "Alpha"))
        except (TypeError, ValueError):
            rgba = None
        out[_int(el.get("Key"))] = {"name": (el.text or "").strip(), "color": rgba}
    return out


def _afni_label_table(root) -> dict[int, dict]:
    """AFNI's ``VALUE_LABEL_DTABLE`` attribute: ``"value" "name"`` string pairs."""
    for el in root.iter("AFNI_atr"):
        if el.get("atr_name") == "VALUE_LABEL_DTABLE":
            # AFNI writes '~' for the end of a string and may escape the inner quotes.
            text = (el.text or "").replace('\\"', '"').replace("~", " ")
            return {int(v): {"name": n.strip(), "color": None}
                    for v, n in re.findall(r'"\s*(-?\d+)\s*"\s+"([^"]*)"', text)}
    return {}


def extension_label_table(img, values=None) -> dict[int, dict]:
    """The label table stored in a NIfTI image's own header extensions ({} when none):
    AFNI (ecode 4, ``VALUE_LABEL_DTABLE``), CIFTI-2 / other XML (``<Label Key=...>``), or a
    comment extension (ecode 6) holding a table in any style :func:`read_label_table` reads."""
    exts = getattr(getattr(img, "header", None), "extensions", None) or []
    for ext in exts:
        try:
            code = int(ext.get_code())
            # The raw bytes (nibabel >= 5.3 ``content``): get_content() would parse a CIFTI
            # extension into nibabel's object, which fails on partial CIFTI documents.
            raw = ext.content if hasattr(ext, "content") else ext.get_content()
            if not isinstance(raw, (bytes, bytearray)):
                raw = raw.to_xml() if hasattr(raw, "to_xml") else str(raw).encode()
        except Exception:  # noqa: BLE001 - a malformed extension is not a label table
            continue
        text = bytes(raw).decode("utf-8", "replace").strip("\x00").strip()
        if not text:
            continue
        root = _xml_root(text) if text.startswith("<") else None
        if root is not None:
            table = _afni_label_table(root) if code == ECODE_AFNI else {}
            table = table or _xml_label_table(root)
        elif code == ECODE_COMMENT:
            table = parse_label_table(text, values)
        else:
            table = {}
        if table:
            return table
    return {}


def labels_features(table: dict[int, dict], values) -> dict:
    """napari Labels ``features`` (columns ``index`` and ``name``) for the labels present."""
    vals = [int(v) for v in values if int(v) != 0]
    return {"index": np.array(vals, dtype=np.int64),
            "name": np.array([table.get(v, {}).get("name", f"label {v}") for v in vals], dtype=object)}


# ---- reader ------------------------------------------------------------------------------
def get_reader(path):
    """npe2 reader hook: :func:`read_nifti` for ``.nii``/``.nii.gz`` paths, else None."""
    paths = path if isinstance(path, (list, tuple)) else [path]
    if not paths or not all(is_nifti(p) for p in paths):
        return None
    return read_nifti


def _is_label_image(img, data) -> bool:
    hdr = img.header
    try:
        if int(hdr["intent_code"]) == space.INTENT_LABEL:
            return True
    except (KeyError, ValueError, TypeError):
        pass
    slope, _ = hdr.get_slope_inter()
    if not np.issubdtype(img.get_data_dtype(), np.integer) or (slope not in (None, 1.0) and slope == slope):
        return False
    return np.unique(np.asarray(data)).size <= MAX_LABELS


def read_nifti(path) -> list[tuple]:
    """Layers of one or several NIfTI files in MNI world coordinates (see the module doc).

    Raises :class:`napari_nrf.space.SpaceError` for files that are not axis-aligned MNI volumes.
    """
    if isinstance(path, (list, tuple)):
        return [ld for p in path for ld in read_nifti(p)]
    import nibabel as nib

    path = Path(path)
    img = nib.load(str(path)) if path.exists() else None
    data, grid = space.load_nifti(path)
    name = space.nifti_stem(path)
    side = space.read_sidecar(path)
    md = {"grid": grid, "path": str(path), "sidecar": side}
    table_path = label_table_for(path)
    ext_table = extension_label_table(img) if table_path is None else {}
    if data.ndim == 4 and data.shape[3] == 1:
        data = data[..., 0]
    if data.ndim == 3 and (side.get("kind") == "clusters" or table_path is not None or ext_table
                           or _is_label_image(img, data)):
        lab = np.asarray(data)
        if not np.issubdtype(lab.dtype, np.integer):
            lab = np.rint(lab).astype(np.int32)
        values = np.unique(lab)
        if table_path is not None:
            table = read_label_table(table_path, values)
        else:  # the file's own extension (re-read: a one-name-per-line table numbers from the values)
            table = extension_label_table(img, values)
        ldata, kw = space.layer_data(lab, grid)
        md.update(kind="atlas" if side.get("kind") != "clusters" else "clusters", volume=lab,
                  label_names={int(v): table[v]["name"] for v in table},
                  table=str(table_path) if table_path else ("NIfTI extension" if table else None))
        kw.update(name=name, features=labels_features(table, values), opacity=0.6,
                  blending="translucent_no_depth", metadata={META: md})
        colors = {int(v): table[v]["color"] for v in table if table[v]["color"] is not None and int(v) != 0}
        if colors:
            kw["colormap"] = {None: (0, 0, 0, 0), 0: (0, 0, 0, 0), **colors}
        return [(ldata, kw, "labels")]
    if data.ndim == 3 and side.get("kind") in ("response", "contrast"):
        vol = np.asarray(data, np.float32)
        image = side.get("image")
        ldata, kw, kind = response_layer_data(vol, grid, name, units=side.get("units"), image=image,
                                              mask=side.get("mask"), path=str(path), sidecar=side)
        kw["metadata"][META]["kind"] = side["kind"]
        return [(ldata, kw, kind)]
    vol = np.asarray(data, np.float32) if data.dtype == np.float64 else np.asarray(data)
    ldata, kw = space.layer_data(vol, grid)
    finite = vol[np.isfinite(vol)] if np.issubdtype(vol.dtype, np.floating) else vol
    lo, hi = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 1.0)
    signed = lo < 0 < hi
    md.update(kind="nifti", volume=vol if vol.ndim == 3 else None)
    kw.update(name=name, blending="translucent_no_depth" if not signed else "translucent",
              metadata={META: md})
    if signed:  # a stat map: diverging, centred at 0
        m = max(abs(lo), abs(hi))
        kw.update(colormap=cold_hot_spec(0.0, name="nrf-cold-hot-0.000"), contrast_limits=(-m, m))
    else:
        kw.update(colormap="gray" if vol.ndim == 3 else "inferno")
    if vol.ndim == 4:
        md["volume_axis"] = "volume"
        if table_path is not None:  # a probabilistic atlas: one name per volume
            table = read_label_table(table_path, np.arange(vol.shape[3] + 1))
            keys = sorted(k for k in table if k != 0 or len(table) == vol.shape[3])
            md["volume_names"] = {i: table[k]["name"] for i, k in enumerate(keys[: vol.shape[3]])}
    return [(ldata, kw, "image")]


# ---- writers -----------------------------------------------------------------------------
def _layer_grid(data, meta) -> tuple[np.ndarray, space.Grid]:
    md = (meta.get("metadata") or {}).get(META) or {}
    if md.get("volume") is not None and md.get("grid") is not None:
        return np.asarray(md["volume"]), md["grid"]
    return space.layer_to_volume(np.asarray(data), meta.get("scale", (1, 1, 1)), meta.get("translate", (0, 0, 0)))


def _check_path(path) -> Path:
    path = Path(path)
    if not is_nifti(path):
        path = path.with_name(path.name + ".nii.gz")
    return path


def write_image(path, data, meta) -> list[str]:
    """npe2 writer for Image layers: an MNI NIfTI (+ JSON sidecar for response volumes).

    Response and contrast layers write their float32 volume with NaN outside the mask
    (``metadata["napari_nrf"]["outside"] == "0"`` writes 0); other 3D images in MNI
    placement write their data.
    """
    path = _check_path(path)
    md = (meta.get("metadata") or {}).get(META) or {}
    vol, grid = _layer_grid(data, meta)
    kind = md.get("kind")
    if kind in ("response", "contrast"):
        side = md.get("sidecar") or volume_meta.volume_sidecar(
            kind, grid, units=md.get("units"), image=md.get("image") or meta.get("name"),
            mask=md.get("mask", "none"), outside=md.get("outside", "NaN"),
            model_path=md.get("model_path"))
        side = dict(side)
        for key in ("model_file", "model_sha256", "model_kind", "backbone"):
            if md.get(key) is not None:
                side[key] = md[key]
        volume_meta.write_volume(path, vol, grid, side, outside=md.get("outside"))
        return [str(path), str(space.sidecar_path(path))]
    space.save_nifti(vol, grid, path)
    return [str(path)]


def write_labels(path, data, meta) -> list[str]:
    """npe2 writer for Labels layers (cluster maps, atlases, ROIs): an integer MNI NIfTI,
    its sidecar and, when the layer has names or cluster rows, a label table beside it
    (``<stem>.tsv``, index and name) that the reader reads back."""
    path = _check_path(path)
    md = (meta.get("metadata") or {}).get(META) or {}
    vol, grid = space.layer_to_volume(np.asarray(data), meta.get("scale", (1, 1, 1)),
                                      meta.get("translate", (0, 0, 0)))
    vol = np.asarray(vol)
    dtype = np.uint8 if vol.max(initial=0) < 256 and vol.min(initial=0) >= 0 else np.int32
    kind = "clusters" if md.get("kind") == "clusters" else "labels"
    side = volume_meta.volume_sidecar("clusters", grid, mask="none", outside="0",
                                      extra={"layer_kind": kind, "name": meta.get("name")})
    volume_meta.write_volume(path, vol.astype(dtype), grid, side)
    written = [str(path), str(space.sidecar_path(path))]
    feats = meta.get("features")
    names = _names_from_features(feats) or {int(k): v for k, v in (md.get("label_names") or {}).items()}
    if names:
        table = path.with_name(space.nifti_stem(path) + ".tsv")
        write_text_atomic(table, label_table_text(names, feats))
        written.append(str(table))
    return written


def label_table_text(names: dict[int, str], feats=None) -> str:
    """The ``.tsv`` beside a saved Labels layer: ``index`` and ``name``, then every other
    column of the layer's features (a cluster map's ``size``, ``n_subjects``, per-subject
    sizes and MNI centroid ``x_mm``/``y_mm``/``z_mm``), one row per label, tab-separated.
    Any reader of ``index``/``name`` tables (this one, nilearn's, FSLeyes') reads it."""
    extra, by_index = [], {}
    try:
        cols = {str(c): list(feats[c]) for c in feats} if feats is not None else {}
    except (TypeError, KeyError):
        cols = {}
    idx = cols.get("index") or cols.get("label")
    if idx is not None:
        extra = [c for c in cols if c not in ("index", "label", "name")]
        by_index = {int(i): [cols[c][r] for c in extra] for r, i in enumerate(idx)}

    def cell(v) -> str:
        if isinstance(v, (float, np.floating)):
            return "n/a" if not np.isfinite(v) else f"{float(v):.1f}"
        return re.sub(r"[\t\n]", " ", str(v))

    rows = ["\t".join(["index", "name"] + extra)]
    for k, v in sorted(names.items()):
        rows.append("\t".join([str(k), cell(v)] + [cell(x) for x in by_index.get(k, [""] * len(extra))]))
    return "\n".join(rows) + "\n"


def _names_from_features(feats) -> dict[int, str]:
    """Label value -> name from a layer's features table (``index``/``label`` + ``name``)."""
    if feats is None:
        return {}
    try:
        cols = {c: list(feats[c]) for c in feats}
    except (TypeError, KeyError):
        return {}
    idx = cols.get("index") or cols.get("label")
    if idx is None:
        return {}
    if "name" in cols:
        return {int(i): str(n) for i, n in zip(idx, cols["name"])}
    return {int(i): f"cluster {int(i)}" for i in idx}
