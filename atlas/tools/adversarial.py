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
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from atlas.models import AtlasModel

log = logging.getLogger(__name__)

NORMS = ("linf", "l2")
METHODS = ("fgsm", "pgd")

__all__ = [
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


def _check(x: torch.Tensor, eps: float, norm: str) -> None:
    if norm not in NORMS:
        raise ValueError(f"unknown norm {norm!r}; use one of {', '.join(NORMS)}")
    if not eps >= 0:
        raise ValueError(f"the budget eps must be >= 0, got {eps}")
    if x.dim() != 4 or x.shape[1] != 3:
        raise ValueError(f"expected RGB images (B, 3, S, S) in [0, 1], got shape {tuple(x.shape)}")
    if float(x.min()) < 0 or float(x.max()) > 1:
        raise ValueError("images must be in [0, 1] (the model's input space, before its preprocessing); "
                         "load photos with atlas.tools.explain.load_photo")


def _labels(model: AtlasModel, x: torch.Tensor, target: torch.Tensor | int | None,
            label: torch.Tensor | int | None) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """(B,) long tensors of the target (targeted) or the label to move away from (untargeted)."""
    b = x.shape[0]

    def as_batch(v: torch.Tensor | int) -> torch.Tensor:
        t = torch.as_tensor(v, dtype=torch.long, device=x.device).reshape(-1)
        return t.expand(b).clone() if t.numel() == 1 else t

    if target is not None:
        return as_batch(target), None
    if label is None:
        with torch.no_grad():
            label = model(x).argmax(1)
    return None, as_batch(label)


def _ascent(model: AtlasModel, x: torch.Tensor, target: torch.Tensor | None, label: torch.Tensor | None
            ) -> tuple[torch.Tensor, torch.Tensor]:
    """The gradient of the attack's objective w.r.t. ``x`` (B, 3, S, S) (the direction that helps
    the attack: ``-d CE(target)`` or ``+d CE(label)``) and the logits (B, K) at ``x``."""
    with torch.enable_grad():
        xx = x.detach().clone().requires_grad_(True)
        logits = model(xx)
        if target is not None:
            loss = -F.cross_entropy(logits, target, reduction="sum")
        else:
            loss = F.cross_entropy(logits, label, reduction="sum")
        (g,) = torch.autograd.grad(loss, xx)
    return g, logits.detach()


def _succeeded(logits: torch.Tensor, target: torch.Tensor | None, label: torch.Tensor | None) -> torch.Tensor:
    top = logits.argmax(1)
    return top == target if target is not None else top != label


def _unit(g: torch.Tensor) -> torch.Tensor:
    """``g / ||g||_2`` per image (zero stays zero)."""
    n = g.flatten(1).norm(dim=1).clamp_min(1e-12)
    return g / n.view(-1, 1, 1, 1)


def perturbation_norm(delta: torch.Tensor, norm: str) -> torch.Tensor:
    """Per-image size of ``delta`` (B, 3, S, S): max |value| (linf) or Euclidean norm (l2), (B,)."""
    if norm not in NORMS:
        raise ValueError(f"unknown norm {norm!r}; use one of {', '.join(NORMS)}")
    flat = delta.flatten(1)
    return flat.abs().amax(1) if norm == "linf" else flat.norm(dim=1)


def _project(delta: torch.Tensor, eps: float, norm: str) -> torch.Tensor:
    if norm == "linf":
        return delta.clamp(-eps, eps)
    n = delta.flatten(1).norm(dim=1).clamp_min(1e-12)
    return delta * (eps / n).clamp(max=1.0).view(-1, 1, 1, 1)


def fgsm(model: AtlasModel, x: torch.Tensor, *, eps: float, target: torch.Tensor | int | None = None,
         label: torch.Tensor | int | None = None, norm: str = "linf") -> torch.Tensor:
    """The fast gradient (sign) method of Goodfellow et al. 2015: one step of size ``eps``.

    ``x``: (B, 3, S, S) in [0, 1]; ``target``: class index or (B,) (targeted), else untargeted
    away from ``label`` (default: the clean top-1). linf: ``x + eps * sign(g)``; l2:
    ``x + eps * g / ||g||``, with ``g`` the gradient that helps the attack; clamped to [0, 1].
    Returns the adversarial images (B, 3, S, S).
    """
    _check(x, eps, norm)
    t, lab = _labels(model, x, target, label)
    g, _ = _ascent(model, x, t, lab)
    step = g.sign() if norm == "linf" else _unit(g)
    return (x + eps * step).clamp(0, 1).detach()


def pgd(model: AtlasModel, x: torch.Tensor, *, eps: float, target: torch.Tensor | int | None = None,
        label: torch.Tensor | int | None = None, norm: str = "linf", steps: int = 10,
        step_size: float | None = None, random_start: bool = False, generator: torch.Generator | None = None,
        early_stop: bool = True) -> torch.Tensor:
    """Projected gradient descent (Madry et al. 2018) inside the ``norm`` ball of radius ``eps``.

    Each step moves ``step_size`` (default Madry's ``2.5 * eps / steps``) along the sign of the
    gradient (linf) or its unit direction (l2), projects ``delta`` back onto the ball and clamps
    ``x + delta`` to [0, 1] (clamping only shrinks ``|delta|``, so both constraints hold).
    ``random_start``: start from a uniform point of the linf box / a random point on the l2
    sphere (drawn from ``generator``). ``early_stop``: an image stops moving once it succeeds
    (its attack is done; the others go on). Returns the adversarial images (B, 3, S, S).
    """
    _check(x, eps, norm)
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    t, lab = _labels(model, x, target, label)
    alpha = 2.5 * eps / steps if step_size is None else float(step_size)
    x = x.detach()
    delta = torch.zeros_like(x)
    if random_start and eps > 0:
        gen = generator if generator is not None else torch.Generator().manual_seed(0)
        r = torch.rand(x.shape, generator=gen).to(x.device) * 2 - 1
        delta = r * eps if norm == "linf" else _unit(r) * eps
        delta = (x + delta).clamp(0, 1) - x
    active = torch.ones(x.shape[0], dtype=torch.bool, device=x.device)
    for _ in range(steps):
        g, logits = _ascent(model, x + delta, t, lab)
        if early_stop:
            active &= ~_succeeded(logits, t, lab)
            if not active.any():
                break
        step = g.sign() if norm == "linf" else _unit(g)
        new = _project(delta + alpha * step, eps, norm)
        new = (x + new).clamp(0, 1) - x
        delta = torch.where(active.view(-1, 1, 1, 1), new, delta)
    return (x + delta).clamp(0, 1).detach()


def eps_from_cli(value: float, norm: str) -> float:
    """A budget as the CLI takes it -> [0, 1] units: linf in 0..255 units (4 -> 4/255), l2 as is."""
    if norm not in NORMS:
        raise ValueError(f"unknown norm {norm!r}; use one of {', '.join(NORMS)}")
    return value / 255.0 if norm == "linf" else value


def describe_eps(eps: float, norm: str) -> str:
    """``4/255 (linf)`` or ``1 (l2)``: a budget in the units the CLI takes."""
    return f"{eps * 255:g}/255 (linf)" if norm == "linf" else f"{eps:g} (l2)"


# ---- over many photos ---------------------------------------------------------------------------


@dataclass
class AdversarialPhoto:
    """One photo attacked at every budget of the ladder.

    ``image``/``adversarial``: (3, S, S) in [0, 1], the clean photo and the adversarial image at
    ``shown_eps`` (the smallest budget that succeeded, else the largest tried); ``probs`` /
    ``adv_probs``: (K,) softmax of each; ``success``/``success_8bit``: per budget, whether the
    attack succeeded on the float image / on it rounded to 8-bit pixels (what a saved PNG holds);
    ``target_prob``: per budget, the adversarial image's probability of the target (targeted) or
    of the clean label (untargeted); ``smallest_eps``: the smallest budget that succeeded, None
    when none did.
    """

    path: str
    label: int
    target: int | None
    image: torch.Tensor
    probs: np.ndarray
    budgets: list[float]
    success: list[bool]
    success_8bit: list[bool]
    target_prob: list[float]
    shown_eps: float
    adversarial: torch.Tensor
    adv_probs: np.ndarray
    smallest_eps: float | None

    def as_dict(self, names: Sequence[str]) -> dict:
        top = np.argsort(self.adv_probs)[::-1][:5]
        return {"photo": self.path, "label": int(self.label), "label_name": names[self.label],
                "target": self.target, "target_name": None if self.target is None else names[self.target],
                "budgets": self.budgets, "success": self.success, "success_8bit": self.success_8bit,
                "target_prob": [round(p, 4) for p in self.target_prob], "smallest_eps": self.smallest_eps,
                "shown_eps": self.shown_eps,
                "linf": float(perturbation_norm((self.adversarial - self.image)[None], "linf")[0]),
                "l2": float(perturbation_norm((self.adversarial - self.image)[None], "l2")[0]),
                "top5_after": [[names[int(c)], round(float(self.adv_probs[c]), 4)] for c in top]}


@dataclass
class AdversarialReport:
    """Success over photos at each budget (rates with Wilson 95% intervals) and the smallest
    budget that flips each photo; ``photos`` holds every attacked photo."""

    method: str
    norm: str
    steps: int
    targeted: str
    budgets: list[float]
    photos: list[AdversarialPhoto]
    skipped: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def rates(self, eight_bit: bool = False) -> list[tuple[int, float, float, float]]:
        """Per budget: (successes, rate, low, high) over the attacked photos."""
        from atlas.tools.attack import wilson_interval

        n = len(self.photos)
        out = []
        for i in range(len(self.budgets)):
            k = sum(p.success_8bit[i] if eight_bit else p.success[i] for p in self.photos)
            lo, hi = wilson_interval(k, n)
            out.append((k, k / n if n else 0.0, lo, hi))
        return out

    def median_smallest_eps(self) -> float | None:
        """The median over photos of the smallest budget that flips them (photos no budget
        flipped count as infinitely hard), None when at most half were flipped."""
        vals = sorted(p.smallest_eps if p.smallest_eps is not None else np.inf for p in self.photos)
        if not vals:
            return None
        m = float(np.median(vals))
        return m if np.isfinite(m) else None

    def table(self) -> str:
        rows = [f"| budget ({self.norm}) | flipped | success rate [95% CI] | after rounding to 8 bits |",
                "|---|---|---|---|"]
        n = len(self.photos)
        for eps, (k, r, lo, hi), (k8, r8, lo8, hi8) in zip(self.budgets, self.rates(), self.rates(True)):
            rows.append(f"| {describe_eps(eps, self.norm)} | {k}/{n} | {100 * r:.0f}% [{100 * lo:.0f}-{100 * hi:.0f}] "
                        f"| {100 * r8:.0f}% [{100 * lo8:.0f}-{100 * hi8:.0f}] |")
        return "\n".join(rows)

    def describe(self) -> str:
        med = self.median_smallest_eps()
        lines = [f"{self.method} ({self.norm}, {self.steps} steps, {self.targeted}) on {len(self.photos)} photos"
                 + (f" ({len(self.skipped)} skipped)" if self.skipped else "") + f", {self.seconds:.0f} s",
                 self.table(),
                 "median smallest flipping budget: " + (describe_eps(med, self.norm) if med is not None
                                                         else "none (at most half the photos flipped)")]
        return "\n".join(lines)

    def as_dict(self, names: Sequence[str]) -> dict:
        med = self.median_smallest_eps()
        return {"method": self.method, "norm": self.norm, "steps": self.steps, "targeted": self.targeted,
                "eps_unit": "linf: fraction of the 0..1 pixel range (x255 for 8-bit levels)" if self.norm == "linf"
                else "l2: Euclidean norm over 3*S*S values in 0..1",
                "budgets": self.budgets, "n_photos": len(self.photos), "skipped": self.skipped,
                "rates": [{"eps": e, "successes": k, "rate": r, "ci95": [lo, hi]}
                          for e, (k, r, lo, hi) in zip(self.budgets, self.rates())],
                "rates_8bit": [{"eps": e, "successes": k, "rate": r, "ci95": [lo, hi]}
                               for e, (k, r, lo, hi) in zip(self.budgets, self.rates(True))],
                "median_smallest_eps": med, "seconds": round(self.seconds, 1),
                "photos": [p.as_dict(names) for p in self.photos]}


def _resolve_target(target: int | str | None, names: Sequence[str]) -> int | str | None:
    if target is None or target == "random":
        return target
    if isinstance(target, str):
        from atlas.resources import class_index

        return class_index(target, list(names))
    if not 0 <= int(target) < len(names):
        raise ValueError(f"target class {target} is out of range for a model with {len(names)} classes")
    return int(target)


def attack_photos(model: AtlasModel, photos: Sequence[str | os.PathLike], *, target: int | str | None,
                  budgets: Sequence[float], norm: str = "linf", method: str = "pgd", steps: int = 10,
                  random_start: bool = False, seed: int = 0, progress: bool = True) -> AdversarialReport:
    """Attack each photo at every budget of ``budgets`` ([0, 1] units, see the module docstring).

    ``target``: a class (name, WordNet id or index), ``"random"`` (one random class per photo,
    other than its clean top-1, drawn from ``seed``), or None (untargeted, away from the clean
    top-1). Each budget's attack starts from the clean photo, so every rate is measured on its
    own; a photo whose clean top-1 already is the target is skipped (listed in ``skipped``).
    ``method``: ``"fgsm"`` (one step) or ``"pgd"`` (``steps`` steps, early stop per photo).
    """
    from tqdm.auto import tqdm

    from atlas.tools.explain import load_photo

    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; use one of {', '.join(METHODS)}")
    if norm not in NORMS:
        raise ValueError(f"unknown norm {norm!r}; use one of {', '.join(NORMS)}")
    budgets = sorted(float(b) for b in budgets)
    if not budgets or budgets[0] <= 0:
        raise ValueError(f"give one or more positive budgets, got {budgets}")
    if norm == "linf" and budgets[-1] > 1:
        raise ValueError(f"linf budgets are fractions of the pixel range in the Python API (4/255 = {4 / 255:.4f}), "
                         f"got {budgets[-1]}; the CLI's --eps takes 0..255 units")
    if not photos:
        raise ValueError("no photos given; pass photo files or a folder of photos")
    if model.class_names:
        names = list(model.class_names)
    else:
        with torch.no_grad():
            s = model.input_size
            names = [str(i) for i in range(int(model(torch.zeros(1, 3, s, s, device=model.device)).shape[1]))]
    fixed = _resolve_target(target, names)
    rng = np.random.default_rng(seed)
    gen = torch.Generator().manual_seed(seed)
    mode = "untargeted" if target is None else ("random target per photo" if target == "random"
                                                 else f"target {names[fixed]!r}")
    report = AdversarialReport(method, norm, steps if method == "pgd" else 1, mode, budgets, [])
    t0 = time.perf_counter()
    for path in tqdm(photos, desc=f"{method} {norm}", unit="photo", disable=not progress):
        x = load_photo(path, model)
        with torch.no_grad():
            probs = model(x).softmax(1)[0]
        label = int(probs.argmax())
        if fixed == "random":
            t = int(rng.integers(len(names) - 1))
            t += t >= label  # any class but the clean top-1
        else:
            t = fixed
        if t is not None and t == label:
            report.skipped.append(str(path))
            log.info("%s: already classified as the target %r; skipped", path, names[t])
            continue
        success, success8, tprob, advs = [], [], [], []
        for eps in budgets:
            kw: dict = dict(eps=eps, target=t, label=None if t is not None else label, norm=norm)
            if method == "fgsm":
                adv = fgsm(model, x, **kw)
            else:
                adv = pgd(model, x, steps=steps, random_start=random_start, generator=gen, **kw)
            with torch.no_grad():
                both = model(torch.cat([adv, adv.mul(255).round().div(255)]))
            p = both.softmax(1)
            ok = both.argmax(1) == t if t is not None else both.argmax(1) != label
            success.append(bool(ok[0]))
            success8.append(bool(ok[1]))
            tprob.append(float(p[0, t if t is not None else label]))
            advs.append((adv[0].cpu(), p[0].cpu().numpy()))
        smallest = next((e for e, s in zip(budgets, success) if s), None)
        i = budgets.index(smallest) if smallest is not None else len(budgets) - 1
        report.photos.append(AdversarialPhoto(
            str(path), label, t, x[0].cpu(), probs.cpu().numpy(), budgets, success, success8, tprob,
            budgets[i], advs[i][0], advs[i][1], smallest))
    report.seconds = time.perf_counter() - t0
    return report


# ---- figures --------------------------------------------------------------------------------------


def place_pair(model: AtlasModel, photo: AdversarialPhoto, run_dir: str | os.PathLike, est=None,
               class_names: Sequence[str] | None = None):
    """Where the clean and the adversarial image's activations land on the atlas in ``run_dir``:
    two :class:`~atlas.tools.explain.AtlasPlacement`, attribution toward the adversarial image's top-1
    class (the target when it succeeded). ``est``: the layout's fitted placer, to load it once
    for many photos (default: loaded here)."""
    from atlas.stages.reduce import load_placer
    from atlas.store.layout import read_layout
    from atlas.tools.explain import Explanation, layer_position_attribution, place_on_atlas

    run_dir = Path(run_dir)
    layout = run_dir / "layout.h5"
    if not layout.is_file():
        raise ValueError(f"{run_dir} holds no layout.h5; give the folder of an atlas run (after `atlas reduce`)")
    layer = str(read_layout(layout).attrs.get("layer"))
    est = est if est is not None else load_placer(layout)
    names = class_names or model.class_names or [str(i) for i in range(len(photo.probs))]
    k = int(np.argmax(photo.adv_probs))
    out = []
    for img, probs in ((photo.image, photo.probs), (photo.adversarial, photo.adv_probs)):
        x = img[None].to(model.device)
        a, vecs = layer_position_attribution(model, x, k, layer)
        e = Explanation(photo.path, k, names[k], img, probs, {}, layer, a, vecs)
        out.append(place_on_atlas(e, run_dir, class_names=names, est=est))
    return out[0], out[1]


def _top_text(probs: np.ndarray, names: Sequence[str], n: int = 3, mark: int | None = None) -> str:
    top = np.argsort(probs)[::-1][:n]
    return "\n".join(f"{'> ' if c == mark else ''}{names[int(c)][:22]} {100 * probs[c]:.1f}%" for c in top)


def adversarial_figure(photo: AdversarialPhoto, out: str | os.PathLike, class_names: Sequence[str],
                       norm: str, placements=None) -> Path:
    """One PNG: the photo, the perturbation (amplified to the full range, grey = no change), the
    adversarial image, each with its top-3 classes, and, with ``placements`` (clean, adversarial)
    from :func:`place_pair`, both photos' positions over the atlas picture."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    names = list(class_names)
    delta = (photo.adversarial - photo.image).permute(1, 2, 0).numpy()
    amp = float(np.abs(delta).max()) or 1.0
    label, goal = photo.label, photo.target
    if placements is None:
        fig, axes = plt.subplots(1, 3, figsize=(9.6, 4.4))
    else:
        fig = plt.figure(figsize=(9.6, 4.4 + 6.6))
        grid = fig.add_gridspec(2, 3, height_ratios=[1, 1.9])
        axes = [fig.add_subplot(grid[0, i]) for i in range(3)]
        _atlas_pair_panel(fig.add_subplot(grid[1, :]), placements, names[int(np.argmax(photo.adv_probs))])
    ok = photo.smallest_eps is not None
    panels = [(photo.image.permute(1, 2, 0).numpy(), f"photo: {Path(photo.path).name[:30]}",
               _top_text(photo.probs, names, mark=label)),
              (np.clip(0.5 + delta / (2 * amp), 0, 1),
               f"perturbation x{0.5 / amp:.0f}\n{describe_eps(photo.shown_eps, norm)} budget", ""),
              (photo.adversarial.permute(1, 2, 0).numpy(),
               ("flipped" if ok else "not flipped") + (f" to {names[goal][:22]!r}" if goal is not None else ""),
               _top_text(photo.adv_probs, names, mark=goal))]
    for ax, (img, title, text) in zip(axes, panels):
        ax.imshow(img)
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_title(title, fontsize=9)
        ax.set_xlabel(text, fontsize=8, loc="left")
    fig.tight_layout()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    _save_small_png(fig, out)
    plt.close(fig)
    return out


def _save_small_png(fig, out: Path, dpi: int = 90) -> None:
    """Save a figure as a 256-color PNG (a third of the size of a true-color one, photos included)."""
    import io

    from PIL import Image

    buf = io.BytesIO()
    fig.savefig(buf, dpi=dpi, format="png")
    buf.seek(0)
    with Image.open(buf) as im:
        im.convert("RGB").quantize(256, method=Image.Quantize.MEDIANCUT).save(out, optimize=True)


def _atlas_pair_panel(ax, placements, class_name: str) -> None:
    """The atlas picture with the clean photo's positions (blue rings) and the same positions of
    the adversarial image (red dots), a line for each position's move."""
    from atlas.tools.explain import atlas_background

    clean, adv = placements
    to_px = atlas_background(ax, clean.run_dir)
    ok = np.isfinite(clean.xy).all(1) & np.isfinite(adv.xy).all(1)
    a, b = to_px(clean.xy[ok]), to_px(adv.xy[ok])
    for (x0, y0), (x1, y1) in zip(a, b):  # each position's move
        ax.plot([x0, x1], [y0, y1], color="black", lw=0.4, alpha=0.5)
    ax.scatter(a[:, 0], a[:, 1], s=22, facecolors="none", edgecolors="#1f77b4", linewidths=1.0,
               label=f"photo: {len(a)} positions")
    ax.scatter(b[:, 0], b[:, 1], s=10, c="#d62728", edgecolors="white", linewidths=0.3,
               label="adversarial: the same positions")
    shift = float(np.median(np.linalg.norm(adv.xy[ok] - clean.xy[ok], axis=1))) if ok.any() else float("nan")
    top = [", ".join(nb["classes"][:2]) for nb in adv.neighborhoods[:2] if nb["classes"]]
    ax.legend(loc="lower left", fontsize=8, framealpha=0.9)
    ax.set_title(f"{clean.layer} activations on the atlas ({clean.run_dir.name}); lines: each position's move, "
                 f"median {shift:.3f} of the atlas width"
                 + (f"\nadversarial neighbourhoods pushing most toward {class_name!r}: " + "; ".join(top)
                    if top else ""), fontsize=9)


def run_adversarial(model: AtlasModel, photos: Sequence[str | os.PathLike], out_dir: str | os.PathLike, *,
                    target: int | str | None, budgets: Sequence[float], norm: str = "linf", method: str = "pgd",
                    steps: int = 10, random_start: bool = False, seed: int = 0,
                    run_dir: str | os.PathLike | None = None, figures: int = 8,
                    progress: bool = True) -> AdversarialReport:
    """:func:`attack_photos`, then ``OUT/report.json``, ``OUT/report.md`` and a figure per photo
    (the first ``figures`` photos; -1 for all) as ``OUT/<photo>-adv.png``; with ``run_dir`` the
    figures show both images' positions on that atlas."""
    from atlas.tools.explain import overlay_name

    report = attack_photos(model, photos, target=target, budgets=budgets, norm=norm, method=method, steps=steps,
                           random_start=random_start, seed=seed, progress=progress)
    names = model.class_names or [str(i) for i in range(len(report.photos[0].probs) if report.photos else 0)]
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "report.json").write_text(json.dumps(report.as_dict(names), indent=1))
    (out / "report.md").write_text(report.describe() + "\n")
    est = None
    if run_dir is not None and report.photos:
        from atlas.stages.reduce import load_placer

        est = load_placer(Path(run_dir) / "layout.h5")
    chosen = report.photos if figures < 0 else report.photos[:figures]
    for p in chosen:
        placements = place_pair(model, p, run_dir, est, names) if run_dir is not None else None
        adversarial_figure(p, out / f"{overlay_name(p.path)}-adv.png", names, norm, placements)
    return report


def list_photos(specs: Sequence[str | os.PathLike], limit: int | None = None) -> list[str]:
    """Photo files from files and folders (searched recursively, sorted); with ``limit``, that
    many spread evenly over the sorted list (so a folder in class order gives many classes)."""
    from atlas.data import open_source

    paths: list[str] = []
    for spec in specs:
        if Path(spec).is_dir():
            src = open_source(spec)
            paths.extend(p for p in (src.path(r) for r in src.refs()) if p is not None)
        elif Path(spec).is_file():
            paths.append(os.fspath(spec))
        else:
            raise ValueError(f"{spec} does not exist; give photo files or folders of photos")
    if not paths:
        raise ValueError(f"no photos found in {', '.join(map(str, specs))}")
    if limit is not None and limit < len(paths):
        if limit < 1:
            raise ValueError(f"--limit must be at least 1, got {limit}")
        paths = [paths[i] for i in np.linspace(0, len(paths) - 1, limit).round().astype(int)]
    return paths
