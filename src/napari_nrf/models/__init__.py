"""Model kinds behind one contract (see base.EncodingModel) and the bundle format."""

from .base import MODEL_KINDS, EncodingModel, discover_kinds, load_model, register
from .bundle import BundleError, load_bundle, read_metadata, save_bundle

__all__ = ["EncodingModel", "MODEL_KINDS", "register", "discover_kinds", "load_model", "BundleError",
           "save_bundle", "load_bundle", "read_metadata"]
