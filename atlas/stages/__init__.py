"""The pipeline's stages, in order: each reads the artifacts of the one before and writes its own.

- :mod:`atlas.stages.collect`: images -> ``activations.h5`` (the rows, their batches, GPU decoding)
- :mod:`atlas.stages.reduce`: ``activations.h5`` -> ``layout.h5`` (UMAP fit and placement)
- :mod:`atlas.stages.grid`: activations + layout -> ``cells.h5``
- :mod:`atlas.stages.render`: ``cells.h5`` -> ``icons.h5`` (feature visualization of every cell)
- :mod:`atlas.stages.tiles`: cells + icons -> a zoomable tile pyramid
- :mod:`atlas.stages.classes`: class atlases (the same stages over one class's rows)
- :mod:`atlas.stages.aligned`: aligned atlases (two layers or two models of the same inputs on one map)

Import the stages from their modules (or the public names from :mod:`atlas`); this package
exports nothing, so no name here can be shadowed by a submodule.
"""
