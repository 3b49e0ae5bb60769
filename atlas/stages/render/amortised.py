"""An amortised start for icons: one small network per atlas, trained once over all its cells'
directions with the icons' own objective and transforms, that maps a direction to an icon's
Fourier spectrum; each cell then starts from its own predicted icon and takes a few steps.

Every cell starts from a picture of its own direction (unlike a start from the parent cell's icon,
where all the cells under one coarse cell start from one picture), and the network's training is
paid once for the whole pyramid rather than per icon.

The network (:class:`DirectionImages`): the unit direction, standardised over the atlas's cells,
through one hidden layer (GELU) to the spectrum of :func:`atlas.optvis.fft_image` (the same 1/f
scaling, colour decorrelation and sigmoid), so its icons live where the cold render's do.
"""

from __future__ import annotations

import logging
import math
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from atlas.models import AtlasModel
from atlas.optvis import Objective, directions, evaluate, fft_image
from atlas.optvis.rng import BatchRNG
from atlas.optvis.transform import Transform, apply
from atlas.stages.render.settings import RenderSettings

log = logging.getLogger(__name__)


class DirectionImages(nn.Module):
    """direction (B, C) -> icon (B, 3, S, S) in (0, 1), through a predicted Fourier spectrum."""

    def __init__(self, channels: int, icon_size: int, *, hidden: int = 256, latent: int = 0,
                 mean: np.ndarray | None = None, std: np.ndarray | None = None):
        super().__init__()
        self.latent = int(latent)
        self.icon = fft_image(icon_size, 1, generator=torch.Generator().manual_seed(0))
        self.icon.spectrum.requires_grad_(False)  # only its scale and colour buffers are used
        self.shape = tuple(self.icon.spectrum.shape[1:])  # (3, S, S // 2 + 1, 2)
        self.register_buffer("mean", torch.as_tensor(np.zeros(channels) if mean is None else mean, dtype=torch.float32))
        self.register_buffer("std", torch.as_tensor(np.ones(channels) if std is None else std, dtype=torch.float32))
        self.hidden = nn.Linear(channels + self.latent, hidden)
        self.out = nn.Linear(hidden, math.prod(self.shape))
        nn.init.normal_(self.out.weight, std=0.01 / math.sqrt(hidden))  # starts near gray, as a cold icon does
        nn.init.zeros_(self.out.bias)

    @staticmethod
    def unit(vecs: torch.Tensor) -> torch.Tensor:
        return vecs / vecs.norm(dim=1, keepdim=True).clamp_min(1e-8)

    def spectrum(self, vecs: torch.Tensor, z: torch.Tensor | None = None) -> torch.Tensor:
        x = (self.unit(vecs) - self.mean) / self.std
        if self.latent:
            if z is None or z.shape != (len(vecs), self.latent):
                raise ValueError(f"this network takes a ({len(vecs)}, {self.latent}) latent beside the directions")
            x = torch.cat([x, z.to(x)], dim=1)
        return self.out(nn.functional.gelu(self.hidden(x))).view(len(vecs), *self.shape)

    def forward(self, vecs: torch.Tensor, z: torch.Tensor | None = None) -> torch.Tensor:
        return self.icon.image(self.spectrum(vecs, z))


#: the streams of :func:`cell_latents` and :func:`cell_shifts`, apart from the render's own
#: per-cell generators (:func:`~atlas.stages.render.directions.cell_generator`)
LATENT_STREAM = 0x1A7E
SHIFT_STREAM = 0x5F1F


def _cell_rng(seed: int, size: int, cell_id: int, stream: int) -> np.random.Generator:
    """A cell's generator for ``stream``: a function of the render's ``seed``, the level's ``size``
    and the cell id only, so that a resumed render or a Dask worker draws the same values."""
    return np.random.default_rng([int(seed), int(size), int(cell_id), stream])


def cell_latents(seed: int, size: int, cell_ids: Sequence[int], latent: int) -> np.ndarray:
    """Each cell's latent (B, ``latent``) float32, standard normal (:func:`_cell_rng`)."""
    return np.array([_cell_rng(seed, size, c, LATENT_STREAM).standard_normal(latent) for c in cell_ids],
                    np.float32).reshape(len(cell_ids), latent)


@dataclass
class AmortisedFit:
    """A trained :class:`DirectionImages` and how it was trained."""

    net: DirectionImages
    steps: int
    seconds: float
    #: mean objective of the training batches, per 50 steps
    history: list[float]


def train_direction_images(model: AtlasModel, layer: str, vecs: np.ndarray, transforms: Sequence[Transform], *,
                           icon_size: int = 80, steps: int = 1000, batch_size: int = 32, lr: float = 2e-3,
                           hidden: int = 256, cossim_pow: float = RenderSettings.cossim_pow, spatial_mean: bool = True,
                           whiten: np.ndarray | None = None, redirect_relu_steps: int = 16, seed: int = 0,
                           contrast: float = 0.0, neighbours: int = 1, temperature: float = 0.05,
                           latent: int = 0, diversity: float = 0.0, shift: bool = False,
                           progress: bool = False) -> AmortisedFit:
    """Train a :class:`DirectionImages` on ``vecs`` (N, C), all the cells' directions, to maximize
    the icons' objective (:func:`atlas.optvis.directions`, the same transforms) over random batches
    of ``batch_size`` directions, ``steps`` Adam steps at ``lr``.

    ``neighbours`` > 1: each batch is ``batch_size // neighbours`` random directions, each with its
    ``neighbours - 1`` nearest directions (by cosine), so that close cells meet in a batch.
    ``contrast`` > 0 adds, at that weight relative to the objective, a contrastive term (InfoNCE
    at ``temperature``): each icon's spatially averaged activation must be closer in cosine to its
    own direction than to the other directions of the batch, so that close directions do not get
    one picture.

    ``latent`` > 0: the network also takes a random latent of that size (a cell's own, from
    :func:`cell_latents`, when rendering), as a cold start takes its random noise; each batch is
    ``batch_size // 2`` directions, each twice with two latents, and ``diversity`` > 0 adds, at
    that weight relative to the objective, the two icons' similarity of layout (the cosine of
    the mean-removed icons pooled to 8 x 8 px), so that one direction gets several pictures.

    ``shift``: each icon is moved by a random cyclic shift before the transforms, so that the
    network learns icons that score as well wherever their layout lands (as a render with
    :func:`cell_shifts` moves them)."""
    from tqdm import tqdm

    dev = model.device
    v = np.asarray(vecs, np.float32)
    unit = v / np.maximum(np.linalg.norm(v, axis=1, keepdims=True), 1e-8)
    with torch.random.fork_rng(devices=[]):  # the weights' start from ``seed``, not the global stream
        torch.manual_seed(seed)
        net = DirectionImages(v.shape[1], icon_size, hidden=hidden, latent=latent, mean=unit.mean(0),
                              std=unit.std(0) + 1e-3 * unit.std(0).mean() + 1e-8).to(dev)
    opt = torch.optim.Adam([p for p in net.parameters() if p.requires_grad], lr=lr)
    gen = torch.Generator().manual_seed(seed)
    vt = torch.from_numpy(v)
    history, acc = [], []
    t0 = time.perf_counter()
    nhwc = dev.type == "cpu"
    ut = torch.from_numpy(unit)
    k = max(1, min(int(neighbours), batch_size))
    for step in tqdm(range(1, steps + 1), desc="amortised start", unit="step", disable=not progress, leave=False):
        if k > 1:  # anchors and their nearest directions
            anchors = torch.randint(len(vt), (batch_size // k,), generator=gen)
            near = (ut[anchors] @ ut.T).topk(k, dim=1).indices
            idx = near.flatten()
        elif latent:  # each direction twice
            idx = torch.randint(len(vt), (batch_size // 2,), generator=gen).repeat_interleave(2)
        else:
            idx = torch.randint(len(vt), (batch_size,), generator=gen)
        batch = vt[idx].to(dev)
        z = torch.randn(len(idx), latent, generator=gen).to(dev) if latent else None
        obj = directions(layer, batch, cossim_pow=cossim_pow, spatial_mean=spatial_mean, whiten=whiten)
        side: dict[str, torch.Tensor] = {}
        if contrast > 0:
            obj = _with_contrast(obj, layer, batch if whiten is None else batch @ torch.as_tensor(whiten).to(batch),
                                 temperature, side)
        rng = BatchRNG.from_generators([gen] * len(idx))
        images = net(batch, z)
        if shift:
            images = shifted(images, torch.randint(images.shape[-1], (len(images), 2), generator=gen).numpy())
        x = apply(transforms, images, rng)
        if nhwc:
            x = x.contiguous(memory_format=torch.channels_last)
        values = evaluate(model, obj, x, redirect_relu=step <= redirect_relu_steps).float()
        loss = -values.mean()
        if contrast > 0:
            loss = loss + contrast * values.detach().abs().mean() * side["nce"]
        if latent and diversity > 0:
            loss = loss + diversity * values.detach().abs().mean() * _layout_similarity(images)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        acc.append(float(values.detach().mean()))
        if step % 50 == 0 or step == steps:
            history.append(float(np.mean(acc)))
            acc = []
            log.debug("amortised start: step %d, objective %.4f", step, history[-1])
    net.eval()
    return AmortisedFit(net, steps, time.perf_counter() - t0, history)


def _with_contrast(obj: Objective, layer: str, vecs: torch.Tensor, temperature: float,
                   side: dict[str, torch.Tensor]) -> Objective:
    """``obj`` that also leaves in ``side["nce"]`` the batch's InfoNCE loss: image b's spatially
    averaged activation against every direction of the batch, image b's own the right one."""
    d = nn.functional.normalize(vecs.float(), dim=1)

    def fn(acts: dict[str, torch.Tensor]) -> torch.Tensor:
        a = acts[layer].float().flatten(2).mean(2)
        logits = nn.functional.normalize(a, dim=1) @ d.to(a.device).T / temperature
        side["nce"] = nn.functional.cross_entropy(logits, torch.arange(len(a), device=a.device))
        return obj.fn(acts)

    return Objective(fn, f"{obj.description} + contrast", obj.layers)


def _layout_similarity(images: torch.Tensor) -> torch.Tensor:
    """Mean cosine between images 2i and 2i + 1 (B, 3, S, S), each pooled to 8 x 8 px, its mean removed."""
    p = nn.functional.adaptive_avg_pool2d(images, 8).flatten(1)
    p = p - p.mean(1, keepdim=True)
    return nn.functional.cosine_similarity(p[0::2], p[1::2], dim=1).mean()


def predict_icons(net: DirectionImages, vecs: np.ndarray, batch_size: int = 256,
                  z: np.ndarray | None = None) -> torch.Tensor:
    """The network's icons (N, 3, S, S) in (0, 1) on the CPU for directions ``vecs`` (N, C) (and
    latents ``z`` (N, latent) if the network takes them)."""
    dev = next(net.parameters()).device
    out = []
    with torch.no_grad():
        for i in range(0, len(vecs), batch_size):
            zi = None if z is None else torch.as_tensor(np.asarray(z[i:i + batch_size], np.float32), device=dev)
            out.append(net(torch.as_tensor(np.asarray(vecs[i:i + batch_size], np.float32), device=dev), zi).cpu())
    return torch.cat(out) if out else torch.zeros(0, 3, net.icon.size[0], net.icon.size[1])


def start_file(icons_path: str | os.PathLike) -> Path:
    """Where a render keeps its amortised start's network: ``icons.start.pt`` beside ``icons.h5``."""
    p = Path(icons_path)
    return p.with_name(p.stem + ".start.pt")


def network_of(saved: dict) -> DirectionImages:
    """The network of a kept amortised start (``torch.load`` of :func:`start_file`), on the CPU."""
    net = DirectionImages(int(saved["channels"]), int(saved["icon_size"]), hidden=int(saved["hidden"]))
    net.load_state_dict(saved["state"])
    return net.eval()


def amortised_start(model: AtlasModel, layer: str, directions_: Sequence[np.ndarray], path: str | os.PathLike,
                    key: str, *, transforms: Sequence[Transform], icon_size: int, steps: int, lr: float,
                    batch_size: int, cossim_pow: float, spatial_mean: bool, whiten: np.ndarray | None = None,
                    seed: int = 0, overwrite: bool = False, progress: bool = True) -> DirectionImages:
    """The amortised start of a render: the network kept in ``path`` when it was trained for
    ``key`` (the render's settings and cells), else one trained now on ``directions_`` (every
    level's cell directions) and kept there, so that a resumed render starts its cells from the
    same icons."""
    path = Path(path)
    if path.exists() and not overwrite:
        try:
            saved = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:  # noqa: BLE001 -- a torn or foreign file: train again
            log.warning("cannot read the amortised start %s (%s); training it again", path, e)
            saved = {}
        if saved.get("key") == key:
            net = network_of(saved)
            log.info("starting the icons from the amortised start in %s (trained in %.0f s)", path, saved["seconds"])
            return net.to(model.device).eval()
        if saved:
            log.info("the amortised start in %s was trained for other settings or cells; training it again", path)
    vecs = np.concatenate([np.asarray(d, np.float32) for d in directions_])
    log.info("training the amortised start on %d cell directions: %d steps of %d", len(vecs), steps, batch_size)
    fit = train_direction_images(model, layer, vecs, transforms, icon_size=icon_size, steps=steps,
                                 batch_size=batch_size, lr=lr, cossim_pow=cossim_pow, spatial_mean=spatial_mean,
                                 whiten=whiten, seed=seed, progress=progress)
    tmp = path.with_name(path.name + ".tmp")
    torch.save({"key": key, "channels": vecs.shape[1], "icon_size": icon_size, "hidden": fit.net.hidden.out_features,
                "state": fit.net.state_dict(), "seconds": fit.seconds, "steps": steps, "history": fit.history}, tmp)
    os.replace(tmp, path)
    log.info("trained the amortised start in %.0f s (objective per 50 steps: %s); kept in %s", fit.seconds,
             " ".join(f"{h:.3g}" for h in fit.history), path)
    return fit.net


def cell_shifts(seed: int, size: int, cell_ids: Sequence[int], icon_size: int) -> np.ndarray:
    """Each cell's cyclic shift (B, 2) in pixels, (dy, dx) in ``[0, icon_size)`` (:func:`_cell_rng`)."""
    return np.array([_cell_rng(seed, size, c, SHIFT_STREAM).integers(icon_size, size=2) for c in cell_ids],
                    np.int64).reshape(len(cell_ids), 2)


def shifted(icons: torch.Tensor, shifts: np.ndarray) -> torch.Tensor:
    """``icons`` (B, 3, S, S), each rolled by its (dy, dx) of ``shifts`` (B, 2); an FFT icon is
    periodic, so this only moves its layout."""
    return torch.stack([torch.roll(im, (int(dy), int(dx)), dims=(1, 2)) for im, (dy, dx) in zip(icons, shifts)])


def start_from_network(batches: list, net: DirectionImages, *, steps: int, lr: float, shift: bool) -> list:
    """``batches`` (:class:`~atlas.stages.render.batch.IconBatch`), each cell starting from its own
    icon as the network predicts it (8-bit, as a stored icon; with ``shift``, moved by the cell's
    own cyclic shift, :func:`cell_shifts`) with ``steps`` steps at ``lr``, without the redirected
    ReLU gradient of a start from noise."""
    import dataclasses

    from atlas.optvis import to_uint8

    out = []
    for b in batches:
        icons = predict_icons(net, b.directions)
        if shift:
            icons = shifted(icons, cell_shifts(b.seed, b.size, b.cell_id, icons.shape[-1]))
        out.append(dataclasses.replace(b, init=to_uint8(icons), steps=steps, lr=lr, redirect_relu_steps=0))
    return out
