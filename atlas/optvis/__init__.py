"""Feature visualization: optimize images that maximize what a model's units or directions respond to.

Olah, Mordvintsev, Schubert, "Feature Visualization", Distill 2017, after Lucid and Lucent::

    from atlas import optvis
    g = torch.Generator().manual_seed(0)
    obj = optvis.channel("inception4c", 447)
    result = optvis.render_vis(model, obj, optvis.fft_image(128, generator=g), generator=g, steps=256)
    optvis.save_png(result.images, "447.png")

- :mod:`atlas.optvis.param`: parameterizations (the contract: a module whose ``forward()`` returns
  (B, 3, H, W) RGB in [0, 1]); FFT with decorrelated color, pixels, or MACO (fixed natural
  magnitude, optimized phase; :mod:`atlas.optvis.spectrum` holds the magnitude).
- :mod:`atlas.optvis.color`: the decorrelated color space both of them use.
- :mod:`atlas.optvis.transform`: random jitter/scale/rotate, composed in a list, explicit generators.
- :mod:`atlas.optvis.objectives`: objectives with an algebra, one value per image.
- :mod:`atlas.optvis.optimize`: :func:`render_vis` and PNG helpers.
- :mod:`atlas.optvis.dream`: DeepDream of a photo with octaves and jitter (``atlas dream``).
- :mod:`atlas.optvis.neural_style`: style transfer's content and Gram-matrix style objectives (``atlas style``).
- :mod:`atlas.optvis.vis`: :func:`visualize`, text spec -> PNG (``atlas vis``).
"""

from atlas.optvis.color import color_correlation_normalized
from atlas.optvis.dream import DreamResult, deep_dream, octave_sizes
from atlas.optvis.neural_style import content, gram_matrix, style, style_targets
from atlas.optvis.objectives import (
    LOGITS,
    Objective,
    channel,
    class_logit,
    deepdream,
    direction,
    direction_cossim,
    direction_neuron,
    directions,
    diversity,
    interpolate,
    layer,
    neuron,
    whitening_from_covariance,
    whitening_matrix,
)
from atlas.optvis.optimize import VisResult, evaluate, render_vis, save_png, to_uint8
from atlas.optvis.param import (
    PARAMETERIZATIONS,
    FFTImage,
    ImageParam,
    MacoImage,
    PixelImage,
    fft_image,
    maco_image,
    make_image,
    pixel_image,
)
from atlas.optvis.transform import (
    Transform,
    icon_transforms,
    jitter,
    pad,
    random_rotate,
    random_scale,
    standard_transforms,
)
from atlas.optvis.vis import parse_objective, visualize

__all__ = [
    "LOGITS",
    "PARAMETERIZATIONS",
    "FFTImage",
    "DreamResult",
    "ImageParam",
    "MacoImage",
    "Objective",
    "PixelImage",
    "Transform",
    "VisResult",
    "channel",
    "class_logit",
    "color_correlation_normalized",
    "content",
    "deep_dream",
    "deepdream",
    "direction",
    "direction_cossim",
    "direction_neuron",
    "directions",
    "diversity",
    "evaluate",
    "fft_image",
    "gram_matrix",
    "icon_transforms",
    "interpolate",
    "jitter",
    "layer",
    "maco_image",
    "make_image",
    "neuron",
    "octave_sizes",
    "pad",
    "parse_objective",
    "pixel_image",
    "random_rotate",
    "random_scale",
    "render_vis",
    "save_png",
    "standard_transforms",
    "style",
    "style_targets",
    "to_uint8",
    "visualize",
    "whitening_from_covariance",
    "whitening_matrix",
]
