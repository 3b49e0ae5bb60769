"""Adversarial examples: imperceptible changes of a photo that change the model's answer.

Szegedy et al., "Intriguing properties of neural networks", ICLR 2014 (the phenomenon);
Goodfellow, Shlens, Szegedy, "Explaining and Harnessing Adversarial Examples", ICLR 2015 (FGSM,
one signed-gradient step); Madry et al., "Towards Deep Learning Models Resistant to Adversarial
Attacks", ICLR 2018 (PGD: many small steps, each projected back onto the budget).

Conventions shared by every function here:

- Images are (B, 3, S, S) RGB in [0, 1]: the model's own input space, i.e. the photo after the
  model's resize and crop (:func:`atlas.tools.explain.load_photo`) and *before* its preprocessing (Caffe
  BGR/mean for InceptionV1, mean/std for torchvision models), which runs inside ``model(x)`` and
  is differentiable. The perturbation ``delta`` is added there and ``x + delta`` is clamped to
  [0, 1], so every adversarial image is a valid picture.
- Budgets ``eps`` are in [0, 1] pixel units inside the library. ``norm="linf"``: the largest
  change of any one value, ``max |delta| <= eps`` (``4 / 255`` = four grey levels of an 8-bit
  image). ``norm="l2"``: the Euclidean norm of the whole perturbation over its 3 * S * S values,
  ``||delta||_2 <= eps`` (Madry et al.'s ImageNet budgets are 0.5 to 3 in these units). The CLI
  takes linf budgets in 0..255 units (``--eps 4`` means 4/255) and l2 budgets in [0, 1] units.
- Targeted (``target`` given): descend the cross-entropy toward ``target``; success means the
  model's top-1 class becomes ``target``. Untargeted (``target=None``): ascend the cross-entropy
  of ``label`` (by default the model's top-1 on the clean image); success means the top-1 is no
  longer ``label``.

:func:`attack_photos` runs an attack at a ladder of budgets over many photos (success rate with
Wilson 95% intervals, the smallest budget that flips each photo), :func:`adversarial_figure`
draws photo / amplified perturbation / result with the top classes before and after and, given
an atlas run, where the clean and the adversarial photo's activations land on the atlas
(:func:`atlas.tools.explain.place_on_atlas`).

The package, one idea a module: :mod:`~atlas.tools.adversarial.attacks` (FGSM and PGD on a batch,
norms and budgets), :mod:`~atlas.tools.adversarial.photos` (the ladder of budgets over many
photos and its report), :mod:`~atlas.tools.adversarial.figures` (the figure of one photo, with
its place on an atlas) and :mod:`~atlas.tools.adversarial.run` (``atlas adversarial``: the
report files and figures).
"""

from atlas.tools.adversarial.attacks import METHODS, NORMS, describe_eps, eps_from_cli, fgsm, perturbation_norm, pgd
from atlas.tools.adversarial.figures import adversarial_figure, place_pair
from atlas.tools.adversarial.photos import AdversarialPhoto, AdversarialReport, attack_photos, list_photos
from atlas.tools.adversarial.run import run_adversarial

__all__ = [
    "METHODS",
    "NORMS",
    "AdversarialPhoto",
    "AdversarialReport",
    "adversarial_figure",
    "attack_photos",
    "describe_eps",
    "eps_from_cli",
    "fgsm",
    "list_photos",
    "perturbation_norm",
    "pgd",
    "place_pair",
    "run_adversarial",
]
