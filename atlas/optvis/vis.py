"""One feature visualization from a text spec to a PNG: what ``atlas vis`` runs.

Objective specs (:func:`parse_objective`), terms joined by ``+`` or ``-``, each optionally
weighted as ``W*term``::

    inception4c:447                 channel 447 of inception4c (short for channel:inception4c:447)
    channel:inception4c:447         the same
    neuron:inception4c:447          channel 447 at the center position
    layer:inception4c               DeepDream: mean squared activation of the layer
    logit:1 / logit:goldfish        a class's pre-softmax logit, by index or name
    diversity:inception4c           batch diversity (use with --batch > 1)
    channel:inception4c:447 + 100*diversity:inception4c
    layer:inception4c - 0.5*logit:goldfish      (a minus between terms needs spaces around it)
"""

from __future__ import annotations

import difflib
import logging
import os
import re
from collections.abc import Sequence
from pathlib import Path

import torch
from PIL import Image

from atlas.models import AtlasModel, resolve_device
from atlas.optvis import objectives as obj
from atlas.optvis.objectives import Objective
from atlas.optvis.optimize import VisResult, render_vis, save_png
from atlas.optvis.param import PARAMETERIZATIONS, make_image
from atlas.optvis.transform import standard_transforms

__all__ = ["parse_objective", "visualize"]

log = logging.getLogger(__name__)

_KINDS = ("channel", "neuron", "layer", "logit", "diversity")
_TERM = re.compile(r"^\s*(?:(?P<w>[-+]?\d*\.?\d+(?:[eE][-+]?\d+)?)\s*\*\s*)?(?P<body>[^*]+?)\s*$")


def _class_index(name: str, class_names: Sequence[str] | None) -> int:
    if re.fullmatch(r"\d+", name):
        return int(name)
    if not class_names:
        raise ValueError(f"class {name!r}: this model has no class names; give the class index, e.g. logit:1")
    lowered = [c.lower() for c in class_names]
    if name.lower() in lowered:
        return lowered.index(name.lower())
    close = difflib.get_close_matches(name.lower(), lowered, n=3)
    hint = f" Did you mean {', '.join(repr(class_names[lowered.index(c)]) for c in close)}?" if close else ""
    raise ValueError(f"unknown class {name!r}.{hint} Give a class name or index, e.g. logit:1")


def _term(body: str, model: AtlasModel | None) -> Objective:
    parts = body.split(":")
    if parts[0] not in _KINDS:
        parts = ["channel", *parts]  # LAYER:CH
    kind, args = parts[0], parts[1:]
    usage = {"channel": "channel:LAYER:CH", "neuron": "neuron:LAYER:CH", "layer": "layer:LAYER",
             "logit": "logit:CLASS", "diversity": "diversity:LAYER"}[kind]
    want = 2 if kind in ("channel", "neuron") else 1
    if len(args) != want or not all(args) or (want == 2 and not args[1].isdigit()):
        raise ValueError(f"cannot read objective term {body!r}; write it as {usage} (e.g. inception4c:447)")
    if kind != "logit" and model is not None:
        model.layer(args[0])  # unknown layer: error with close matches
    if kind == "channel":
        return obj.channel(args[0], int(args[1]))
    if kind == "neuron":
        return obj.neuron(args[0], int(args[1]))
    if kind == "layer":
        return obj.layer(args[0])
    if kind == "diversity":
        return obj.diversity(args[0])
    return obj.class_logit(_class_index(args[0], model.class_names if model is not None else None))


def parse_objective(spec: str, model: AtlasModel | None = None) -> Objective:
    """An :class:`Objective` from a text spec (grammar in the module docstring).

    With ``model``, layer names are checked (close matches suggested) and class names resolved.
    """
    if not spec or not spec.strip():
        raise ValueError("empty objective; e.g. inception4c:447 or 'layer:inception4c'")
    # terms are separated by "+" (not the one in 1e+3) or by " - " with spaces around it, so
    # that hyphens in class names ("logit:black-and-tan coonhound") stay in the name
    pieces = re.split(r"((?<!\d[eE])\+|\s+-\s+)", spec.strip())
    total: Objective | None = None
    sign = 1.0
    for piece in pieces:
        if piece.strip() in ("+", "-"):
            sign = -1.0 if piece.strip() == "-" else 1.0
            continue
        if not piece.strip():
            continue
        text = piece.strip()
        if text.startswith("-") and "*" not in text:  # a leading "-term"
            sign, text = -sign, text[1:]
        m = _TERM.match(text)
        if m is None:
            raise ValueError(f"cannot read objective term {text!r}")
        term = _term(m.group("body"), model)
        weight = sign * (float(m.group("w")) if m.group("w") is not None else 1.0)
        if total is None:
            total = term if weight == 1.0 else (-term if weight == -1.0 else weight * term)
        else:
            scaled = term if abs(weight) == 1.0 else abs(weight) * term
            total = total + scaled if weight > 0 else total - scaled
        sign = 1.0
    if total is None:
        raise ValueError(f"no objective terms in {spec!r}")
    return total


def visualize(
    model: AtlasModel,
    objective: str | Objective,
    out: str | os.PathLike,
    *,
    size: int = 128,
    steps: int = 512,
    batch: int = 1,
    param: str = "fft",
    init_image: str | os.PathLike | None = None,
    transforms: bool = True,
    lr: float | None = None,
    seed: int = 0,
    input_size: int | None = None,
    device: str | torch.device = "auto",
    progress: bool = True,
) -> VisResult:
    """Render ``objective`` and save the images as one PNG strip at ``out``.

    Args:
        model: the model (moved to ``device``).
        objective: a spec (:func:`parse_objective`) or an :class:`Objective`.
        out: PNG path; the batch is tiled left to right.
        size: image side in pixels (default 128, as Lucid).
        steps: optimizer steps (default 512, Lucid's usual threshold).
        batch: images rendered together (each its own seed); use with ``diversity``.
        param: ``"fft"`` (default; decorrelated FFT), ``"pixel"`` or ``"maco"`` (fixed natural
            magnitude, optimized phase; Fel et al. 2023).
        init_image: start from this photo (resized to ``size``) instead of noise, e.g. DeepDream.
        transforms: Lucid's standard transforms (default) or none.
        lr: Adam learning rate (default: the parameterization's, :data:`atlas.optvis.param.PARAMETERIZATIONS`;
            0.05 for FFT as in Lucid).
        seed: image b uses ``torch.Generator().manual_seed(seed + b)``.
        input_size: the side the model sees the (transformed) image at; default the model's
            input size (224 for InceptionV1), as Lucent does for images smaller than that. At
            128 px and 128 steps this doubles to triples the activation reached, measured at 224 px
            (``benchmarks/bench_vis_peer.py``). 0: feed the image as it is (Lucid's choice).
        device: ``"auto"`` (CUDA when present), ``"cpu"``, ...
    """
    if param not in PARAMETERIZATIONS:
        raise ValueError(f"param must be one of {', '.join(repr(k) for k in PARAMETERIZATIONS)}, got {param!r}")
    if batch < 1 or size < 8:
        raise ValueError(f"need batch >= 1 and size >= 8, got batch={batch}, size={size}")
    dev = resolve_device(device)
    if model.device != dev:
        model.to(dev)
    o = parse_objective(objective, model) if isinstance(objective, str) else objective
    gens = [torch.Generator().manual_seed(seed + b) for b in range(batch)]
    init = None
    if init_image is not None:
        img = Image.open(init_image).convert("RGB").resize((size, size), Image.BILINEAR)
        init = torch.frombuffer(bytearray(img.tobytes()), dtype=torch.uint8).view(size, size, 3)
        init = init.permute(2, 0, 1).float().div(255)[None]
    p = make_image(param, size, batch, generator=gens, device=dev, init=init)
    lr = PARAMETERIZATIONS[param] if lr is None else lr
    seen = model.input_size if input_size is None else (input_size or None)
    log.info("visualizing %s: %d px (seen at %s px), %d steps, batch %d, %s lr %g, on %s", o, size, seen or size,
             steps, batch, param, lr, dev)
    result = render_vis(model, o, p, standard_transforms() if transforms else [], steps=steps, lr=lr,
                        generator=gens, device=dev, progress=progress, input_size=seen)
    save_png(result.images, Path(out))
    log.info("wrote %s (objective %s)", out, ", ".join(f"{v:.4g}" for v in result.values.tolist()))
    return result
