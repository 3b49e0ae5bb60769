"""The collect stage: images -> spatial activations with class attribution (``activations.h5``).

- :mod:`~atlas.stages.collect.stage`: :func:`collect` over a source, resumable block by block
- :mod:`~atlas.stages.collect.rows`: what one batch contributes (activations, positions, attribution)
- :mod:`~atlas.stages.collect.layers`: the layers it reads, spatial or a vision transformer's tokens
- :mod:`~atlas.stages.collect.batch_decode`: batched JPEG decoding on the GPU, precision
"""

from atlas.stages.collect.stage import (
    CollectSettings,
    CollectSummary,
    NoUsableImagesError,
    collect,
    layer_specs,
    sample_positions,
)

__all__ = ["CollectSettings", "CollectSummary", "NoUsableImagesError", "collect", "layer_specs", "sample_positions"]
