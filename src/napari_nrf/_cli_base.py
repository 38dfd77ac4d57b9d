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
    import torch

    from napari_nrf import __version__
    from napari_nrf.features import BACKBONES

    print(f"napari-nrf {__version__}, torch {torch.__version__}")
    print("CUDA devices:", [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())] or "none")
    print("backbones:", ", ".join(sorted(BACKBONES)))
    return 0
