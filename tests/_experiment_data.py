"""Image folders for the virtual-experiment tests: one sub-folder of simulator stimuli per category."""

from pathlib import Path


def write_category_sets(root, categories=("face", "scene", "body"), n: int = 3, seed: int = 3, start: int = 100,
                        size: int = 64) -> Path:
    """``root/<category>/<i>.png`` for ``n`` stimuli of each category; returns ``root``."""
    from PIL import Image

    from napari_nrf.simulate.stimuli import make_stimulus

    root = Path(root)
    for cat in categories:
        (root / cat).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            Image.fromarray(make_stimulus(start + i, seed=seed, size=size, category=cat)).save(root / cat / f"{i}.png")
    return root
