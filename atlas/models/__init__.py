"""Models: the BVLC InceptionV1, torchvision (and timm) classifiers by name, and a user's own
``nn.Module``; a vision transformer's token layers read as their patch grid (:mod:`atlas.models.tokens`)."""

from atlas.models.inceptionv1 import InceptionV1, caffe_preprocess
from atlas.models.tokens import TokenLayout, token_layout
from atlas.models.zoo import (
    AtlasModel,
    ImageTransform,
    ModelError,
    UnknownLayerError,
    capture,
    check_device,
    check_model_setting,
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
    "TokenLayout",
    "UnknownLayerError",
    "caffe_preprocess",
    "capture",
    "check_device",
    "check_model_setting",
    "check_model_spec",
    "finishing_order",
    "load_model",
    "resolve_device",
    "token_layout",
]
