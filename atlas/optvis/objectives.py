"""Objectives: what feature visualization maximizes, as values with an algebra.

Follows Lucid's ``lucid.optvis.objectives`` (Olah et al., "Feature Visualization", Distill 2017;
Carter et al., "Activation Atlas", Distill 2019, for the direction objectives):

    obj = channel("inception4c", 447) + 0.5 * diversity("inception4c")
    obj = Objective.sum([neuron("inception4c", 7), -class_logit(1)]) / 2

An :class:`Objective` is called with a dict ``{layer name: activations}`` and returns one value
per image of the batch, shape (B,): the optimizer maximizes their sum, and best-of-k selection
reads them one by one. ``objective.layers`` names the layers it reads, so only those get hooked;
the pseudo-layer :data:`LOGITS` stands for the model's output (pre-softmax logits, (B, K)).
Layer activations are (B, C, H, W) (or (B, C) for flat layers); a vision transformer's token
layer (B, T, C) is handed to objectives as its patch tokens on the patch grid, (B, C, H, W), by
:func:`~atlas.optvis.evaluate` (:mod:`atlas.models.tokens`), so every objective here reads token
layers as it reads convolutional ones (the center of a 14 x 14 patch grid is patch (7, 7)).

Direction objectives accept ``whiten=``, a (C, C) matrix ``S`` (the inverse of the uncentered
covariance of collected activations, see :func:`whitening_matrix`): the direction ``v`` is
replaced by ``v @ S`` as in the Activation Atlas notebooks (``direction_neuron_S``), which stops
the optimizer from simply exciting the channels that are large everywhere.
"""

from __future__ import annotations

import numbers
from collections.abc import Callable, Iterable, Mapping, Sequence

import numpy as np
import torch

__all__ = [
    "LOGITS",
    "Objective",
    "channel",
    "class_logit",
    "deepdream",
    "direction",
    "direction_cossim",
    "direction_neuron",
    "directions",
    "diversity",
    "interpolate",
    "layer",
    "neuron",
    "whitening_from_covariance",
    "whitening_matrix",
]

#: The pseudo-layer name for the model's output (logits); not hooked, taken from ``model(x)``.
LOGITS = "<logits>"

Acts = Mapping[str, torch.Tensor]
ArrayLike = np.ndarray | torch.Tensor | Sequence[float]

_EPS = 1e-4  # Lucid's epsilon in cosine similarities


def _fmt(x: float) -> str:
    return f"{x:g}"


class Objective:
    """A function of activations returning one value per image, (B,), with a description.

    Supports ``a + b``, ``a - b``, ``-a``, ``a + 1.0``, ``2 * a``, ``a / 2`` and
    :meth:`Objective.sum`; products of two objectives are not defined (Lucid allows them, but
    their scale is rarely meaningful).

    Args:
        fn: ``acts -> (B,)`` tensor.
        description: readable text, e.g. ``"channel(inception4c, 447)"``.
        layers: names of the layers ``fn`` reads (``LOGITS`` for the output).
    """

    def __init__(self, fn: Callable[[Acts], torch.Tensor], description: str, layers: Iterable[str], *,
                 _compound: bool = False):
        self.fn = fn
        self.description = description
        self.layers: tuple[str, ...] = tuple(dict.fromkeys(layers))
        self._compound = _compound  # a sum: needs parentheses when scaled

    def __call__(self, acts: Acts) -> torch.Tensor:
        missing = [name for name in self.layers if name not in acts]
        if missing:
            raise ValueError(f"objective {self} needs activations of {missing}; capture objective.layers")
        out = self.fn(acts)
        if out.dim() != 1:
            raise ValueError(f"objective {self} returned shape {tuple(out.shape)}; "
                             "objectives return one value per image (B,)")
        return out

    def __repr__(self) -> str:
        return f"Objective({self.description})"

    def __str__(self) -> str:
        return self.description

    def _wrapped(self) -> str:
        return f"({self.description})" if self._compound else self.description

    # -- algebra -----------------------------------------------------------------------------
    def __add__(self, other: Objective | float) -> Objective:
        if isinstance(other, Objective):
            return Objective.sum([self, other])
        if isinstance(other, numbers.Real):
            c = float(other)
            return Objective(lambda acts: self(acts) + c, f"{self.description} + {_fmt(c)}", self.layers,
                             _compound=True)
        return NotImplemented

    def __radd__(self, other: float) -> Objective:
        if isinstance(other, numbers.Real) and float(other) == 0.0:
            return self  # lets the builtin sum() start from 0
        return self.__add__(other)

    def __neg__(self) -> Objective:
        return Objective(lambda acts: -self(acts), f"-{self._wrapped()}", self.layers)

    def __sub__(self, other: Objective | float) -> Objective:
        if isinstance(other, Objective):
            return Objective(lambda acts: self(acts) - other(acts), f"{self.description} - {other._wrapped()}",
                             self.layers + other.layers, _compound=True)
        if isinstance(other, numbers.Real):
            return self + (-float(other))
        return NotImplemented

    def __rsub__(self, other: float) -> Objective:
        return (-self) + other

    def __mul__(self, other: float) -> Objective:
        if isinstance(other, Objective):
            raise TypeError(f"cannot multiply objectives {self} and {other}; scale by a number, e.g. 0.5 * obj")
        if isinstance(other, numbers.Real):
            c = float(other)
            return Objective(lambda acts: c * self(acts), f"{_fmt(c)} * {self._wrapped()}", self.layers)
        return NotImplemented

    __rmul__ = __mul__

    def __truediv__(self, other: float) -> Objective:
        if isinstance(other, numbers.Real):
            if float(other) == 0.0:
                raise ValueError(f"cannot divide objective {self} by zero")
            c = float(other)
            return Objective(lambda acts: self(acts) / c, f"{self._wrapped()} / {_fmt(c)}", self.layers)
        return NotImplemented

    @staticmethod
    def sum(objectives: Sequence[Objective], description: str | None = None) -> Objective:
        """The sum of ``objectives`` (Lucid ``Objective.sum``); one hook per distinct layer."""
        objs = list(objectives)
        if not objs:
            raise ValueError("Objective.sum needs at least one objective")
        if not all(isinstance(o, Objective) for o in objs):
            raise TypeError("Objective.sum takes Objective values; wrap constants with obj + c instead")

        def fn(acts: Acts) -> torch.Tensor:
            total = objs[0](acts)
            for o in objs[1:]:
                total = total + o(acts)
            return total

        desc = description or " + ".join(o.description for o in objs)
        layers = [name for o in objs for name in o.layers]
        return Objective(fn, desc, layers, _compound=len(objs) > 1 and description is None)


# -- helpers -------------------------------------------------------------------------------------


def _spatial(acts: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) or (B, C) -> (B, C, P) with P positions."""
    if acts.dim() == 2:
        return acts[:, :, None]
    if acts.dim() != 4:
        raise ValueError(f"expected activations (B, C, H, W) or (B, C), got shape {tuple(acts.shape)}")
    return acts.flatten(2)


def _position(acts: torch.Tensor, y: int | None, x: int | None, name: str) -> torch.Tensor:
    """Lucid ``_extract_act_pos``: the activation vector at (y, x), default the center. (B, C, 1)."""
    if acts.dim() == 2:
        return acts[:, :, None]
    _, _, h, w = acts.shape
    yy = h // 2 if y is None else y
    xx = w // 2 if x is None else x
    if not (0 <= yy < h and 0 <= xx < w):
        raise ValueError(f"position (y={yy}, x={xx}) is outside layer {name}'s {h}x{w} grid at this image size; "
                         "pick a position inside it or leave y/x unset for the center")
    return acts[:, :, yy, xx, None]


def _check_channel(acts: torch.Tensor, ch: int, name: str) -> None:
    if not 0 <= ch < acts.shape[1]:
        raise ValueError(f"channel {ch} is out of range for layer {name} with {acts.shape[1]} channels")


def _as_tensor(vec: ArrayLike) -> torch.Tensor:
    t = torch.as_tensor(np.asarray(vec, dtype=np.float32) if not isinstance(vec, torch.Tensor) else vec)
    return t.detach().to(torch.float32).cpu()


class _DeviceCache:
    """A constant tensor moved to the activations' device once, not at every step."""

    def __init__(self, t: torch.Tensor):
        self.t = t
        self._on: dict[tuple[torch.device, torch.dtype], torch.Tensor] = {}

    def like(self, ref: torch.Tensor) -> torch.Tensor:
        key = (ref.device, ref.dtype)
        if key not in self._on:
            self._on[key] = self.t.to(device=ref.device, dtype=ref.dtype)
        return self._on[key]


def _dot_cossim(acts: torch.Tensor, vecs: torch.Tensor, cossim_pow: float) -> torch.Tensor:
    """Lucid ``_dot_cossim`` per image: mean over positions of ``dot * max(cos, 0.1) ** cossim_pow``.

    acts (B, C, P), vecs (B or 1, C) -> (B,). ``dot`` sums over channels; with ``cossim_pow == 0``
    it is the plain dot product (Lucid ``direction``).
    """
    dot = torch.einsum("bcp,bc->bp", acts, vecs.expand(acts.shape[0], -1))
    if cossim_pow == 0:
        return dot.mean(1)
    a_mag = acts.norm(dim=1)
    v_mag = vecs.norm(dim=1, keepdim=True)
    cos = dot / (_EPS + a_mag) / (_EPS + v_mag)
    return (dot * cos.clamp(min=0.1) ** cossim_pow).mean(1)


def _direction_objective(name: str, vecs: torch.Tensor, *, batched: bool, y: int | None, x: int | None,
                         spatial_mean: bool, cossim_pow: float, whiten: ArrayLike | None,
                         description: str) -> Objective:
    if vecs.dim() != 2:
        raise ValueError(f"direction vectors must be (C,) or (B, C), got shape {tuple(vecs.shape)}")
    if whiten is not None:
        s = _as_tensor(whiten)
        if s.shape != (vecs.shape[1], vecs.shape[1]):
            raise ValueError(f"whiten must be a ({vecs.shape[1]}, {vecs.shape[1]}) matrix matching the direction, "
                             f"got {tuple(s.shape)}; build it with whitening_matrix(activations)")
        vecs = vecs @ s
        description = description[:-1] + ", whitened)"
    if cossim_pow < 0:
        raise ValueError(f"cossim_pow must be >= 0, got {cossim_pow}")
    cache = _DeviceCache(vecs)

    def fn(acts: Acts) -> torch.Tensor:
        a = acts[name]
        if a.shape[1] != vecs.shape[1]:
            raise ValueError(f"direction has {vecs.shape[1]} entries but layer {name} has {a.shape[1]} channels")
        if batched and a.shape[0] != vecs.shape[0]:
            raise ValueError(f"directions() got {vecs.shape[0]} directions for a batch of {a.shape[0]} images; "
                             f"render with batch={vecs.shape[0]}")
        a = _spatial(a) if spatial_mean else _position(a, y, x, name)
        return _dot_cossim(a, cache.like(a), cossim_pow)

    return Objective(fn, description, [name])


# -- objectives ----------------------------------------------------------------------------------


def neuron(layer: str, ch: int, y: int | None = None, x: int | None = None) -> Objective:
    """Activation of channel ``ch`` at one position (Lucid ``neuron``); default the center (H // 2, W // 2)."""

    def fn(acts: Acts) -> torch.Tensor:
        a = acts[layer]
        _check_channel(a, ch, layer)
        return _position(a, y, x, layer)[:, ch, 0]

    pos = "" if y is None and x is None else f", y={y}, x={x}"
    return Objective(fn, f"neuron({layer}, {ch}{pos})", [layer])


def channel(layer: str, ch: int) -> Objective:
    """Mean activation of channel ``ch`` over all positions (Lucid ``channel``)."""

    def fn(acts: Acts) -> torch.Tensor:
        a = acts[layer]
        _check_channel(a, ch, layer)
        return _spatial(a)[:, ch].mean(1)

    return Objective(fn, f"channel({layer}, {ch})", [layer])


def layer(layer: str) -> Objective:
    """DeepDream: mean of the squared activations of the whole layer (Lucid ``deepdream``)."""
    name = layer

    def fn(acts: Acts) -> torch.Tensor:
        return acts[name].flatten(1).pow(2).mean(1)

    return Objective(fn, f"layer({name})", [name])


deepdream = layer


def class_logit(k: int) -> Objective:
    """The pre-softmax logit of class ``k`` (the model's output; Lucid hooks ``softmax2_pre_activation``)."""

    def fn(acts: Acts) -> torch.Tensor:
        logits = acts[LOGITS]
        if not 0 <= k < logits.shape[1]:
            raise ValueError(f"class {k} is out of range for a model with {logits.shape[1]} classes")
        return logits[:, k]

    return Objective(fn, f"class_logit({k})", [LOGITS])


def direction(layer: str, vec: ArrayLike, *, cossim_pow: float = 0.0, whiten: ArrayLike | None = None) -> Objective:
    """Dot product of the activations with ``vec`` (C,), averaged over positions (Lucid ``direction``).

    With ``cossim_pow > 0`` each position's dot is multiplied by ``max(cos, 0.1) ** cossim_pow``.
    """
    v = _as_tensor(vec).reshape(1, -1)
    return _direction_objective(layer, v, batched=False, y=None, x=None, spatial_mean=True, cossim_pow=cossim_pow,
                                whiten=whiten, description=f"direction({layer}, vec[{v.shape[1]}]{_pow(cossim_pow)})")


def direction_neuron(layer: str, vec: ArrayLike, *, y: int | None = None, x: int | None = None,
                     cossim_pow: float = 0.0, whiten: ArrayLike | None = None) -> Objective:
    """Dot product with ``vec`` (C,) at one position, default the center (Lucid ``direction_neuron``)."""
    v = _as_tensor(vec).reshape(1, -1)
    return _direction_objective(layer, v, batched=False, y=y, x=x, spatial_mean=False, cossim_pow=cossim_pow,
                                whiten=whiten,
                                description=f"direction_neuron({layer}, vec[{v.shape[1]}]{_pow(cossim_pow)})")


def direction_cossim(layer: str, vec: ArrayLike, cossim_pow: float = 1.0, *, y: int | None = None,
                     x: int | None = None, whiten: ArrayLike | None = None) -> Objective:
    """The Activation Atlas icon objective: ``dot * max(cos, 0.1) ** cossim_pow`` at one position.

    The notebooks' ``direction_neuron_cossim_S`` (there with ``cossim_pow`` up to 4 and the
    whitening ``S``): rewards pointing the activation along ``vec``, not just a large projection.
    Position default: the center.
    """
    return direction_neuron(layer, vec, y=y, x=x, cossim_pow=cossim_pow, whiten=whiten)


def directions(layer: str, vecs: ArrayLike, *, cossim_pow: float = 0.0, y: int | None = None, x: int | None = None,
               spatial_mean: bool = False, whiten: ArrayLike | None = None) -> Objective:
    """Batched directions: image b maximizes direction ``vecs[b]``, vecs (B, C).

    The form of :func:`direction_cossim` (one position, default the center) or, with
    ``spatial_mean=True``, of :func:`direction`. Per image the value is the same as that of the
    single-direction objective, so a batch of B cells renders like B separate renders; this is
    how the atlas renders many cells per optimizer batch (the notebooks sum B
    ``direction_neuron_cossim_S(..., batch=b)`` objectives instead).
    """
    v = _as_tensor(vecs)
    if v.dim() != 2:
        raise ValueError(f"directions() takes a (B, C) array of directions, got shape {tuple(v.shape)}")
    kind = "mean" if spatial_mean else "neuron"
    return _direction_objective(layer, v, batched=True, y=y, x=x, spatial_mean=spatial_mean, cossim_pow=cossim_pow,
                                whiten=whiten,
                                description=f"directions({layer}, vecs[{v.shape[0]}x{v.shape[1]}], {kind}"
                                            f"{_pow(cossim_pow)})")


def _pow(cossim_pow: float) -> str:
    return f", cossim_pow={_fmt(cossim_pow)}" if cossim_pow else ""


def diversity(layer: str) -> Objective:
    """Negative similarity of the images' styles across the batch (Lucid ``diversity``).

    Gram matrices G_b (C, C) of each image's activations, L2-normalised; image b gets
    ``-sum_{j != b} <G_b, G_j> / B``, so the sum over the batch is Lucid's value with the sign
    flipped (Lucid subtracts it; here everything is maximized). Couples the images of a batch.
    """

    def fn(acts: Acts) -> torch.Tensor:
        a = _spatial(acts[layer])
        b = a.shape[0]
        grams = torch.einsum("bcp,bdp->bcd", a, a).flatten(1)
        grams = grams / grams.norm(dim=1, keepdim=True).clamp_min(1e-10)
        sims = grams @ grams.T
        return -(sims.sum(1) - sims.diagonal()) / b

    return Objective(fn, f"diversity({layer})", [layer])


def interpolate(obj_a: Objective, obj_b: Objective) -> Objective:
    """Across the batch from ``obj_a`` to ``obj_b``: image b maximizes ``(1 - w_b) a + w_b b``,
    ``w_b = b / (B - 1)`` (Lucid ``channel_interpolate``, for any two objectives)."""

    def fn(acts: Acts) -> torch.Tensor:
        va, vb = obj_a(acts), obj_b(acts)
        n = va.shape[0]
        w = torch.arange(n, device=va.device, dtype=va.dtype) / max(n - 1, 1)
        return (1 - w) * va + w * vb

    return Objective(fn, f"interpolate({obj_a}, {obj_b})", obj_a.layers + obj_b.layers)


def whitening_matrix(acts: np.ndarray | torch.Tensor, eps: float = 1e-4) -> np.ndarray:
    """The inverse uncentered covariance ``inv(A^T A / N + eps * mean_diag * I)``, (C, C) float32.

    ``acts`` (N, C) are collected activations (e.g. rows of ``activations.h5``); as the
    Activation Atlas notebooks' ``S``, with a small ridge ``eps`` (relative to the mean variance)
    so that dead channels do not make it singular.
    """
    a = np.asarray(acts.detach().cpu().numpy() if isinstance(acts, torch.Tensor) else acts, dtype=np.float64)
    if a.ndim != 2 or a.shape[0] < 2:
        raise ValueError(f"whitening_matrix needs activations (N, C) with N >= 2, got shape {a.shape}")
    return whitening_from_covariance(a.T @ a / a.shape[0], eps)


def whitening_from_covariance(cov: np.ndarray, eps: float = 1e-4) -> np.ndarray:
    """``inv(cov + eps * mean_diag * I)`` as float32, for an uncentered covariance (C, C)."""
    cov = np.asarray(cov, np.float64)
    if cov.ndim != 2 or cov.shape[0] != cov.shape[1]:
        raise ValueError(f"covariance must be square (C, C), got shape {cov.shape}")
    ridge = eps * max(float(np.trace(cov)) / cov.shape[0], 1e-12)
    return np.linalg.inv(cov + ridge * np.eye(cov.shape[0])).astype(np.float32)
