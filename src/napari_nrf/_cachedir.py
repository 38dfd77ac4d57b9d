"""Where napari-nrf keeps its caches (features, resampled masks, the demo's sample image).

Kept free of heavy imports: :mod:`napari_nrf.space` uses it without importing torch.
"""

from __future__ import annotations

import os
from pathlib import Path


def default_cache_dir() -> Path:
    """``$NAPARI_NRF_CACHE`` or ``~/.cache/napari-nrf``."""
    return Path(os.environ.get("NAPARI_NRF_CACHE") or Path.home() / ".cache" / "napari-nrf")
