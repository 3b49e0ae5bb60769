"""Models: the BVLC InceptionV1, torchvision classifiers by name, and a user's own ``nn.Module``."""

from atlas.models.inceptionv1 import InceptionV1, caffe_preprocess
from atlas.models.zoo import (
    AtlasModel,
    ImageTransform,
    ModelError,
    UnknownLayerError,
    capture,
    check_device,
    check_model_spec,
    finishing_order,
    load_model,
    resolve_device,
)

__all__ = [
    "AtlasModel",
    "ImageTransform",
    "InceptionV1",
    "ModelError",
    "UnknownLayerError",
    "caffe_preprocess",
    "capture",
    "check_device",
    "check_model_spec",
    "finishing_order",
    "load_model",
    "resolve_device",
]
