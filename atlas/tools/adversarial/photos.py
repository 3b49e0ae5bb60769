"""Attacks over many photos: each photo attacked at a ladder of budgets (:func:`attack_photos`,
:class:`AdversarialPhoto`), the success rates with Wilson 95% intervals and the smallest budget
that flips each photo (:class:`AdversarialReport`), and the photo files to attack
(:func:`list_photos`)."""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from atlas.models import AtlasModel
from atlas.tools.adversarial.attacks import METHODS, NORMS, describe_eps, fgsm, perturbation_norm, pgd

log = logging.getLogger("atlas.tools.adversarial")


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
