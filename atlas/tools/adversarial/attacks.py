"""FGSM and PGD on a batch of images (the conventions are the package's: images in [0, 1],
budgets in [0, 1] pixel units, targeted or untargeted), the size of a perturbation in either
norm, and budgets as the CLI takes and shows them."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from atlas.models import AtlasModel

NORMS = ("linf", "l2")
METHODS = ("fgsm", "pgd")


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
