"""DINOv2 ViT-L/14 with registers (the Universal Encoder's backbone) through timm.

The architecture is timm's ``vit_large_patch14_reg4_dinov2.lvd142m`` built with
``pretrained=False`` at 224 px (16 x 16 = 256 patches of 14 px); the weights come from a
local file, because nothing is downloaded at run time:

* ``weights=PATH`` or the environment variable ``NAPARI_NRF_DINOV2_WEIGHTS``;
* ``.safetensors`` (timm's Hugging Face file ``model.safetensors`` of
  ``timm/vit_large_patch14_reg4_dinov2.lvd142m``) or a ``.pth``/``.pt``/``.bin`` state dict
  (also Meta's original ``dinov2_vitl14_reg4_pretrain.pth``), read with
  ``torch.load(weights_only=True)``. timm's checkpoint filter converts Meta's naming and
  resamples the 518 px position embedding to 224 px.

Outputs: the patch tokens (register and class tokens dropped) of transformer blocks
1, 6, 12, 18 and 24 (``block1`` ... ``block24``, each (256, 1024)) and the final
layer-normed class token as ``embedding`` (1024,).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from napari_nrf._compat import ensure_torchvision

from .backbones import Backbone, BackboneError, _resize_center_crop, register_backbone

DINOV2_ENV = "NAPARI_NRF_DINOV2_WEIGHTS"
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def _read_state_dict(path: Path) -> dict:
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    sd = torch.load(str(path), map_location="cpu", weights_only=True)
    if not isinstance(sd, dict):
        raise BackboneError(f"{path}: expected a state dict, got {type(sd).__name__}")
    return sd


@register_backbone
class DinoV2ViTL14Reg(Backbone):
    """Frozen DINOv2 ViT-L/14 (4 registers) from timm, weights from a local file.

    Parameters
    ----------
    weights : str or None
        Weights file (see the module docstring); default ``$NAPARI_NRF_DINOV2_WEIGHTS``.
        ``"none"`` builds random weights (shape tests only).
    layers : tuple of int
        Blocks (counted from 1) whose patch tokens are returned (paper: 1, 6, 12, 18, 24).
    image_size : int
        Input size in px, a multiple of 14 (224 gives 256 patches).
    model_name : str
        timm architecture.
    model_kwargs : dict or None
        Extra ``timm.create_model`` arguments, e.g. ``{"embed_dim": 32, "depth": 4,
        "num_heads": 2}`` for a tiny model in tests.
    """

    name = "dinov2-vitl14-reg"

    def __init__(self, weights: str | None = None, layers=(1, 6, 12, 18, 24), image_size: int = 224,
                 model_name: str = "vit_large_patch14_reg4_dinov2.lvd142m", model_kwargs: dict | None = None):
        super().__init__()
        ensure_torchvision()
        import timm

        self.model_name = model_name
        self.model_kwargs = dict(model_kwargs or {})
        self.layers = tuple(int(i) for i in layers)
        self.image_size = int(image_size)
        self.weights = weights or os.environ.get(DINOV2_ENV) or None
        if self.weights is None:
            raise BackboneError(
                "DINOv2 weights are not available offline. Download once, on a machine with internet, "
                "'model.safetensors' from the Hugging Face repo timm/vit_large_patch14_reg4_dinov2.lvd142m "
                "(or Meta's dinov2_vitl14_reg4_pretrain.pth), then pass weights=PATH or set "
                f"{DINOV2_ENV}=PATH."
            )
        if self.weights != "none" and not Path(self.weights).is_file():
            raise BackboneError(f"DINOv2 weights file not found: {self.weights}")
        try:
            self.net = timm.create_model(model_name, pretrained=False, img_size=self.image_size, num_classes=0,
                                         **self.model_kwargs)
        except Exception as exc:
            raise BackboneError(f"cannot build timm model {model_name!r} with {self.model_kwargs}: {exc}") from exc
        depth = len(self.net.blocks)
        bad = [i for i in self.layers if not 1 <= i <= depth]
        if bad:
            raise BackboneError(f"layers {bad} outside 1..{depth} of {model_name}")
        if self.weights != "none":
            self._load(Path(self.weights))
        self.net.eval()
        n_patches = int(np.prod(self.net.patch_embed.grid_size))
        width = int(self.net.embed_dim)
        self.feature_shapes = {f"block{i}": (n_patches, width) for i in self.layers}
        self.feature_shapes["embedding"] = (width,)
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1) * 255, persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1) * 255, persistent=False)

    def _load(self, path: Path) -> None:
        from timm.models.vision_transformer import checkpoint_filter_fn

        if not path.is_file():
            raise BackboneError(f"DINOv2 weights file not found: {path}")
        try:
            sd = checkpoint_filter_fn(_read_state_dict(path), self.net)
            missing, unexpected = self.net.load_state_dict(sd, strict=False)
        except BackboneError:
            raise
        except Exception as exc:
            raise BackboneError(f"cannot load DINOv2 weights from {path}: {exc}") from exc
        missing = [k for k in missing if not k.startswith("head")]
        if missing or unexpected:
            raise BackboneError(f"{path} does not fit {self.model_name}: missing {missing[:5]}, "
                                f"unexpected {list(unexpected)[:5]}")

    def config(self) -> dict:
        cfg = {"layers": list(self.layers), "image_size": self.image_size, "model_name": self.model_name,
               "weights": str(self.weights)}
        if self.model_kwargs:
            cfg["model_kwargs"] = self.model_kwargs
        return cfg

    @property
    def cache_key(self) -> str:
        w = Path(str(self.weights)).stem
        extra = "-".join(f"{k}{v}" for k, v in sorted(self.model_kwargs.items()))
        return f"{self.name}-{w}-{self.image_size}-L{'_'.join(map(str, self.layers))}" + (f"-{extra}" if extra else "")

    def preprocess(self, images) -> torch.Tensor:
        from PIL import Image

        s = self.image_size
        arr = np.stack([_resize_center_crop(im, round(s * 256 / 224), s, Image.BICUBIC) for im in images])
        x = torch.from_numpy(arr).permute(0, 3, 1, 2).float()
        return (x - self.mean.cpu()) / self.std.cpu()

    def forward(self, x: torch.Tensor) -> dict:
        final, inter = self.net.forward_intermediates(x, indices=[i - 1 for i in self.layers], output_fmt="NLC")
        feats = {f"block{i}": t for i, t in zip(self.layers, inter)}
        feats["embedding"] = final[:, 0]  # class token after the final norm
        return feats
