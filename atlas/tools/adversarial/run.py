"""``atlas adversarial``: :func:`attack_photos` over photos, then the report files and a figure
per photo (:func:`run_adversarial`)."""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path

from atlas.models import AtlasModel
from atlas.tools.adversarial.figures import adversarial_figure, place_pair
from atlas.tools.adversarial.photos import AdversarialReport, attack_photos


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
