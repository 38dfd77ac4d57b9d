"""Where napari-nrf keeps its caches (features, resampled masks, the demo's sample image).

Kept free of heavy imports: :mod:`napari_nrf.space` uses it without importing torch.
"""

from __future__ import annotations

import os
from pathlib import Path


def default_cache_dir() -> Path:
    """``$NAPARI_NRF_CACHE``, else the platform's user cache folder (``platformdirs``:
    ``~/.cache/napari-nrf`` on Linux, ``~/Library/Caches/napari-nrf`` on macOS,
    ``%LOCALAPPDATA%\\napari-nrf\\Cache`` on Windows)."""
    env = os.environ.get("NAPARI_NRF_CACHE")
    if env:
        return Path(env)
    from platformdirs import user_cache_dir

    return Path(user_cache_dir("napari-nrf", appauthor=False))
