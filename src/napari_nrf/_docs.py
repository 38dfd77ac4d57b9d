"""A shared dictionary of docstring entries for parameters spelled in many places
(``progress``, ``cancel``, ``device``, ``subject``, ``mask``), after nilearn's ``docdict``.

A docstring line holding only ``%(name)s`` becomes the entry (at that line's indent);
lines after it may add what is particular to the function::

    @fill_doc
    def volume(..., progress=None):
        '''...
        %(progress)s
            Called after each chunk.
        '''
"""

from __future__ import annotations

import re

DOCDICT = {
    "progress": """progress : callable(done, total, message="") or None
    Progress of the work (the shared shape, :data:`napari_nrf.errors.Progress`):
    ``done`` of ``total`` units (``total`` None when unknown).""",
    "cancel": """cancel : callable() -> bool or None
    Polled between units of work; True stops it with a
    :class:`napari_nrf.errors.Cancelled` subclass.""",
    "device": """device : str, torch.device or None
    "cpu", "cuda", "cuda:1", ...; None: CUDA when available, else the CPU
    (:func:`napari_nrf.errors.choose_device`).""",
    "subject": """subject : str or None
    For voxel-indexed kinds: whose voxels (default: the model's only or first subject);
    for conditioned kinds (``model.conditioned``, e.g. Rest2Visual): whose prediction.""",
    "mask": """mask : None, "brain", "gm", "data", bool array of ``grid.shape`` or a NIfTI path
    Points outside stay NaN and are not computed. None computes every grid point;
    "data" keeps the brain points near the model's training voxels.""",
}

_PLACEHOLDER = re.compile(r"(\s*)%\((\w+)\)s\s*")


def fill_doc(obj):
    """Decorator: replace each line ``%(name)s`` of ``obj``'s docstring by ``DOCDICT[name]``."""
    doc = obj.__doc__
    if not doc:  # python -OO
        return obj
    out = []
    for line in doc.split("\n"):
        m = _PLACEHOLDER.fullmatch(line)
        if m is None:
            out.append(line)
            continue
        entry = DOCDICT[m.group(2)]  # a KeyError names a misspelt placeholder at import
        out += [m.group(1) + x for x in entry.split("\n")]
    obj.__doc__ = "\n".join(out)
    return obj
