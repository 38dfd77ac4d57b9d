"""Image backbones and feature extraction (one interface for every backbone).

>>> bb = get_backbone("efficientnet-lite0")
>>> feats = extract_features(bb, images)         # {"s8": (B, 784, 40), ..., "embedding": (B, 1280)}
"""

from .backbones import BACKBONES, Backbone, BackboneError, get_backbone, register_backbone
from .extract import FeatureCache, default_cache_dir, extract_features
from .images import (IMAGE_SUFFIXES, ImageError, as_image_list, image_files, image_hash, load_image_file,
                     to_rgb_uint8)

DEFAULT_BACKBONE = "efficientnet-lite0"

__all__ = ["BACKBONES", "Backbone", "BackboneError", "get_backbone", "register_backbone", "FeatureCache",
           "default_cache_dir", "extract_features", "ImageError", "as_image_list", "image_hash",
           "load_image_file", "image_files", "to_rgb_uint8", "IMAGE_SUFFIXES", "DEFAULT_BACKBONE"]
from . import dinov2  # noqa: E402,F401  (registers "dinov2-vitl14-reg")
