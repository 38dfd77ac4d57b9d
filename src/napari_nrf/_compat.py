"""Import-time fixes for the machines we support.

A torchvision wheel built for CUDA torch, installed next to a CPU-only torch, fails to
import ("operator torchvision::nms does not exist") because its compiled ops do not load
and its Python fake-kernel registrations then find no schema. timm and open_clip import
torchvision, so every backbone needs this. We try the real import first and only define
the two missing schemas when that import fails for exactly this reason.
"""

from __future__ import annotations

import sys

_SCHEMAS = {
    "nms": "nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
    "qnms": "qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
}
_lib = None  # keep the Library alive for the whole process


def ensure_torchvision() -> None:
    """Make ``import torchvision`` (and so timm/open_clip) work on CPU-only torch."""
    global _lib
    if "torchvision" in sys.modules and hasattr(sys.modules["torchvision"], "__version__"):
        return
    try:
        import torchvision  # noqa: F401

        return
    except RuntimeError as exc:
        if "torchvision::" not in str(exc):
            raise
    for name in [m for m in sys.modules if m == "torchvision" or m.startswith("torchvision.")]:
        del sys.modules[name]
    import torch

    _lib = torch.library.Library("torchvision", "FRAGMENT")
    for op, schema in _SCHEMAS.items():
        try:
            _lib.define(schema)
        except RuntimeError:  # already defined by a partial import
            pass
    import torchvision  # noqa: F401,F811
