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
    p.add_argument("--json", action="store_true", help="print the same as one JSON document")
    p.set_defaults(func=_info)


def _demo(args) -> int:
    from napari_nrf.widgets.demo_app import run_demo

    return run_demo(show=not args.no_show, screenshot=args.screenshot, ndisplay=args.ndisplay)


def _info(args) -> int:
    import os

    import torch

    from napari_nrf._version import __version__
    from napari_nrf._cachedir import default_cache_dir
    from napari_nrf.features import BACKBONES
    from napari_nrf.features.backbones import CLIP_ENV
    from napari_nrf.features.dinov2 import DINOV2_ENV

    import importlib.util

    cuda = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    cache = default_cache_dir()
    size = sum(f.stat().st_size for f in cache.rglob("*") if f.is_file()) if cache.is_dir() else 0
    weights = {env: os.environ.get(env) for env in (CLIP_ENV, DINOV2_ENV)}
    extras = {extra: importlib.util.find_spec(mod) is not None
              for extra, mod in (("movie", "av"), ("clip", "open_clip"), ("tensorboard", "tensorboard"))}
    args.json_result = {
        "napari_nrf": __version__, "torch": torch.__version__, "cpu_threads": torch.get_num_threads(),
        "cuda_devices": cuda, "backbones": sorted(BACKBONES), "extras": extras,
        "weights": {env: {"path": p, "found": bool(p) and os.path.isfile(p)} for env, p in weights.items()},
        "cache": {"path": str(cache), "bytes": size}}
    print(f"napari-nrf {__version__}, torch {torch.__version__}, {torch.get_num_threads()} CPU threads")
    print("CUDA devices:", ", ".join(cuda) or "none (everything runs on the CPU)")
    print("backbones:", ", ".join(sorted(BACKBONES)))
    print("extras:", ", ".join(f"{k} {'installed' if v else 'missing'}" for k, v in extras.items()))
    for label, env, unset in (
            ("CLIP ViT-B/16 weights", CLIP_ENV, "open_clip downloads them on first use; offline, set it to a local file"),
            ("DINOv2 weights", DINOV2_ENV, "needed for dinov2-vitl14-reg: set it to a local weights file")):
        path = weights[env]
        if path:
            print(f"{label}: ${env} = {path} ({'found' if os.path.isfile(path) else 'MISSING'})")
        else:
            print(f"{label}: ${env} not set ({unset})")
    print(f"cache: {cache} ({size / 1e6:.1f} MB; $NAPARI_NRF_CACHE moves it)")
    return 0
