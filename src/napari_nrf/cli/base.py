"""Base subcommands: ``demo`` (open napari with the plugin) and ``info``."""

from __future__ import annotations


def register(sub) -> None:
    p = sub.add_parser("demo", help="open napari with the plugin's widgets and the demo model")
    p.add_argument("--no-show", action="store_true", help="build everything, do not start the Qt event loop (tests)")
    p.add_argument("--screenshot", metavar="PNG", help="save a screenshot of the window once the demo is ready")
    p.add_argument("--ndisplay", type=int, choices=[2, 3],
                   help="2D or 3D view (default: 3D, or 2D on software OpenGL where 3D frames take seconds)")
    p.set_defaults(func=_demo)
    p = sub.add_parser("info", help="versions, devices and backbones available on this machine")
    p.set_defaults(func=_info)


def _demo(args) -> int:
    from napari_nrf.widgets.demo_app import run_demo

    return run_demo(show=not args.no_show, screenshot=args.screenshot, ndisplay=args.ndisplay)


def _info(args) -> int:
    import os

    import torch

    from napari_nrf import __version__
    from napari_nrf._cachedir import default_cache_dir
    from napari_nrf.features import BACKBONES
    from napari_nrf.features.backbones import CLIP_ENV
    from napari_nrf.features.dinov2 import DINOV2_ENV

    print(f"napari-nrf {__version__}, torch {torch.__version__}, {torch.get_num_threads()} CPU threads")
    print("CUDA devices:", ", ".join(torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count()))
          or "none (everything runs on the CPU)")
    print("backbones:", ", ".join(sorted(BACKBONES)))
    for label, env, unset in (
            ("CLIP ViT-B/16 weights", CLIP_ENV, "open_clip downloads them on first use; offline, set it to a local file"),
            ("DINOv2 weights", DINOV2_ENV, "needed for dinov2-vitl14-reg: set it to a local weights file")):
        path = os.environ.get(env)
        if path:
            print(f"{label}: ${env} = {path} ({'found' if os.path.isfile(path) else 'MISSING'})")
        else:
            print(f"{label}: ${env} not set ({unset})")
    cache = default_cache_dir()
    size = sum(f.stat().st_size for f in cache.rglob("*") if f.is_file()) if cache.is_dir() else 0
    print(f"cache: {cache} ({size / 1e6:.1f} MB; $NAPARI_NRF_CACHE moves it)")
    return 0
