"""``python -m napari_nrf.cli``: the same as the ``napari-nrf`` command."""

import sys

from napari_nrf.cli import main

sys.exit(main())
