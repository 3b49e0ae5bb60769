"""The interpretability toolbox around an atlas; each module or package one tool, each used from the CLI too.

- :mod:`atlas.tools.attribution`: attribution methods for one photo (saliency, Grad-CAM, ...)
- :mod:`atlas.tools.explain`: a photo explained by those methods, placed on the atlas
- :mod:`atlas.tools.sanity`: cascading randomization (does a method depend on the weights?)
- :mod:`atlas.tools.attack`: patch attacks crafted from an atlas neighborhood (``atlas attack``)
- :mod:`atlas.tools.adversarial`: FGSM and PGD against photos (``atlas adversarial``)
- :mod:`atlas.tools.fooling`: images optimized to be classified with confidence (``atlas fool``)
- :mod:`atlas.tools.channels`: a layer's channels as icons (``atlas channels``)

This package exports nothing itself; the public names are in :mod:`atlas`.
"""
