"""What an attack measured: per family of patches the chosen member and its success rates with
intervals (:class:`FamilyResult`), the whole report as JSON and Markdown (:class:`AttackReport`),
and its files and figures (:func:`write_report`)."""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from atlas.models import AtlasModel
from atlas.resources import imagenet_class_names
from atlas.tools.attack.evaluate import CORNERS, PatchEffect, paste, predict, wilson_interval
from atlas.tools.attack.neighbourhoods import Candidate

FAMILIES = ("atlas", "example", "random_cell", "noise")


@dataclass
class FamilyResult:
    """One family of patches (atlas, random cell, noise): which member was chosen, and its effect
    on the held-out source images (and on the universal images)."""

    family: str
    members: list[str]
    selection_score: list[float]
    chosen: int
    static: list[float]
    dynamic: list[float]
    dynamic_any_size: float
    prob_before: float
    prob_static: list[float]
    prob_dynamic: list[float]
    universal_flip: list[float] | None = None
    universal_changed: list[float] | None = None
    universal_prob: list[float] | None = None
    n_test: int = 0
    static_ci: list[list[float]] = field(default_factory=list)
    dynamic_ci: list[list[float]] = field(default_factory=list)
    dynamic_any_size_ci: list[float] = field(default_factory=list)

    def with_intervals(self, n: int) -> FamilyResult:
        """Fill the 95% Wilson intervals of the rates, measured on ``n`` held-out views."""
        self.n_test = n
        self.static_ci = [list(wilson_interval(r * n, n)) for r in self.static]
        self.dynamic_ci = [list(wilson_interval(r * n, n)) for r in self.dynamic]
        self.dynamic_any_size_ci = list(wilson_interval(self.dynamic_any_size * n, n))
        return self


@dataclass
class AttackReport:
    """What :func:`run_attack` measured; ``to_json`` is the report file."""

    source: str
    target: str
    source_index: int
    target_index: int
    model: str
    layer: str
    run_dir: str
    level: int
    settings: dict[str, Any]
    candidates: list[dict[str, Any]]
    random_cells: list[dict[str, Any]]
    n_source_views: int
    n_source_correct: int
    n_selection: int
    n_test: int
    families: dict[str, FamilyResult]
    universal_images: int = 0
    seconds: dict[str, float] = field(default_factory=dict)

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=1)

    def table(self) -> str:
        """Markdown: success rates (held-out source views) per family and patch size."""
        sizes = self.settings["sizes"]
        head = "| patch | " + " | ".join(f"{int(round(100 * s))}%" for s in sizes) + " | best size |"
        rows = [f"**{self.source} -> {self.target}**: {self.n_test} held-out views (static corner "
                f"{self.settings['static_corner']} / dynamic best corner), success = top-1 becomes the target; "
                "[95% Wilson interval] of the dynamic rate",
                "", head, "|---|" + "---|" * (len(sizes) + 1)]
        for fam in FAMILIES:
            r = self.families.get(fam)
            if r is None:
                continue
            cis = r.dynamic_ci or [[float("nan")] * 2] * len(r.dynamic)
            cells = " | ".join(f"{100 * a:.0f} / {100 * b:.0f} [{100 * lo:.0f}-{100 * hi:.0f}]"
                               for a, b, (lo, hi) in zip(r.static, r.dynamic, cis))
            lo, hi = r.dynamic_any_size_ci or [float("nan")] * 2
            rows.append(f"| {fam.replace('_', ' ')} ({r.members[r.chosen]}) | {cells} | "
                        f"{100 * r.dynamic_any_size:.0f} [{100 * lo:.0f}-{100 * hi:.0f}] |")
        if self.universal_images:
            rows += ["", f"Universal: flip-to-target rate over {self.universal_images} images of other classes "
                         f"(static corner {self.settings['static_corner']})", "",
                     "| patch | " + " | ".join(f"{int(round(100 * s))}%" for s in sizes) + " |",
                     "|---|" + "---|" * len(sizes)]
            for fam in FAMILIES:
                r = self.families.get(fam)
                if r is not None:
                    rows.append(f"| {fam.replace('_', ' ')} | "
                                + " | ".join(f"{100 * v:.1f}" for v in (r.universal_flip or [])) + " |")
        return "\n".join(rows)


def write_report(report: AttackReport, out_dir: str | os.PathLike, model: AtlasModel, test_x: torch.Tensor,
                 patches: dict[str, torch.Tensor], effects: dict[str, list[PatchEffect]],
                 cands: Sequence[Candidate], test: np.ndarray, univ_x: torch.Tensor | None = None) -> Path:
    """``report.json`` and ``report.md``, ``candidates.png`` (the patches with their cells' scores
    and classes), ``examples.png`` (patched held-out views with the labels before and after),
    ``success.png`` (success rate against patch size, per family) and each family's chosen patch
    (``patch-FAMILY.png``) in ``out_dir``."""
    import matplotlib

    matplotlib.use("Agg", force=False)

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "report.json").write_text(report.to_json())
    (out / "report.md").write_text(report.table() + "\n")
    _candidates_figure(report, patches, cands, out / "candidates.png")
    _examples_figure(report, model, test_x, patches, effects, test, out / "examples.png")
    _success_figure(report, out / "success.png")
    fams = report.families
    for fam, p in patches.items():
        r = fams[fam]
        arr = (p[r.chosen].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
        Image.fromarray(arr).save(out / f"patch-{fam}.png")
    return out


def _candidates_figure(report: AttackReport, patches: dict[str, torch.Tensor], cands: Sequence[Candidate],
                       path: Path) -> None:
    """The atlas patches with their cells' scores and classes, the chosen baselines, and the
    photo-crop patches under them."""
    import matplotlib.pyplot as plt

    fams = report.families
    k = len(cands)
    has_examples = "example" in patches
    fig, axes = plt.subplots(2 if has_examples else 1, k + 2, figsize=(2.6 * (k + 2), 6.4 if has_examples else 3.3),
                             squeeze=False)
    for i, ax in enumerate(axes[0]):
        ax.axis("off")
        if i < k:
            c = cands[i]
            ax.imshow(patches["atlas"][i].permute(1, 2, 0).numpy())
            star = " (chosen)" if i == fams["atlas"].chosen else ""
            ax.set_title(f"{c.name}{star}\nscore {c.score:+.3f}\n{', '.join(c.classes[:2])[:34]}", fontsize=8)
        else:
            fam = "random_cell" if i == k else "noise"
            r = fams[fam]
            ax.imshow(patches[fam][r.chosen].permute(1, 2, 0).numpy())
            ax.set_title(f"baseline: {r.members[r.chosen]}", fontsize=8)
    if has_examples:
        for i, ax in enumerate(axes[1]):
            ax.axis("off")
            if i < k:
                ax.imshow(patches["example"][i].permute(1, 2, 0).numpy())
                star = " (chosen)" if i == fams["example"].chosen else ""
                ax.set_title(f"photo crop of {cands[i].name}{star}", fontsize=8)
    fig.suptitle(f"{report.source} -> {report.target}: atlas neighbourhoods by target - source attribution", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _examples_figure(report: AttackReport, model: AtlasModel, test_x: torch.Tensor, patches: dict[str, torch.Tensor],
                     effects: dict[str, list[PatchEffect]], test: np.ndarray, path: Path) -> None:
    """Up to 6 held-out views, atlas patch at the best corner, size 40% (or the closest), with
    the model's answers before and after."""
    import matplotlib.pyplot as plt

    names = model.class_names or imagenet_class_names()
    fams = report.families
    sizes = list(report.settings["sizes"])
    si = min(range(len(sizes)), key=lambda i: abs(sizes[i] - 0.4))
    e = effects["atlas"][fams["atlas"].chosen].subset(test)
    n = min(6, len(test_x))
    before = predict(model, test_x[:n])
    fig, axes = plt.subplots(2, n, figsize=(2.7 * n, 6.0), squeeze=False)
    for j in range(n):
        corner = list(CORNERS)[int(np.argmax(e.target_prob[si, :, j]))]
        xp = paste(test_x[j:j + 1], patches["atlas"][fams["atlas"].chosen], sizes[si], corner)
        after = predict(model, xp)[0]
        for row, (img, p) in enumerate(((test_x[j], before[j]), (xp[0], after))):
            ax = axes[row, j]
            ax.imshow(img.permute(1, 2, 0).numpy())
            ax.axis("off")
            top = int(p.argmax())
            color = "#d62728" if top == report.target_index else "black"
            ax.set_title(f"{names[top][:20]} {float(p[top]):.2f}\n{report.target[:14]}: {float(p[report.target_index]):.2f}",
                         fontsize=8, color=color)
    axes[0, 0].text(-0.1, 0.5, "before", transform=axes[0, 0].transAxes, rotation=90, va="center", ha="right")
    axes[1, 0].text(-0.1, 0.5, "after", transform=axes[1, 0].transAxes, rotation=90, va="center", ha="right")
    fig.suptitle(f"{report.source} + atlas patch ({int(round(100 * sizes[si]))}% width, best corner)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _success_figure(report: AttackReport, path: Path) -> None:
    """Success rate against patch size per family: held-out views, and the universal images."""
    import matplotlib.pyplot as plt

    fams = report.families
    sizes = list(report.settings["sizes"])
    panels = 2 if report.universal_images else 1
    fig, axes = plt.subplots(1, panels, figsize=(5.2 * panels, 3.8), squeeze=False)
    colors = {"atlas": "#d62728", "example": "#2ca02c", "random_cell": "#7f7f7f", "noise": "#1f77b4"}
    pct = [100 * s for s in sizes]
    ax = axes[0, 0]
    for fam in (f for f in FAMILIES if f in fams):
        r = fams[fam]
        ax.plot(pct, [100 * v for v in r.dynamic], "-o", color=colors[fam], label=f"{fam.replace('_', ' ')}, dynamic")
        ax.plot(pct, [100 * v for v in r.static], "--", color=colors[fam], alpha=0.7, label=f"{fam.replace('_', ' ')}, static")
    ax.set_xlabel("patch size (% of image width)")
    ax.set_ylabel(f"% of {report.source} views -> {report.target}")
    ax.set_ylim(-2, 102)
    ax.set_title(f"held-out views (n={report.n_test})", fontsize=10)
    ax.legend(fontsize=7)
    if report.universal_images:
        ax = axes[0, 1]
        for fam in (f for f in FAMILIES if f in fams):
            ax.plot(pct, [100 * v for v in fams[fam].universal_flip or []], "-o", color=colors[fam],
                    label=fam.replace("_", " "))
        ax.set_xlabel("patch size (% of image width)")
        ax.set_ylabel(f"% flipped to {report.target}")
        ax.set_title(f"universal: {report.universal_images} photos of other classes", fontsize=10)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
