"""Model kinds behind one interface (see base.EncodingModel) and the bundle format."""

from .base import MODEL_KINDS, EncodingModel, load_model, register
from .bundle import BundleError, load_bundle, read_metadata, save_bundle

__all__ = ["EncodingModel", "MODEL_KINDS", "register", "load_model", "BundleError", "save_bundle",
           "load_bundle", "read_metadata"]
