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
from atlas.optvis import directions, evaluate, fft_image
from atlas.optvis.rng import BatchRNG
from atlas.optvis.transform import Transform, apply
from atlas.stages.render.settings import RenderSettings

log = logging.getLogger(__name__)


class DirectionImages(nn.Module):
    """direction (B, C) -> icon (B, 3, S, S) in (0, 1), through a predicted Fourier spectrum."""

    def __init__(self, channels: int, icon_size: int, *, hidden: int = 256,
                 mean: np.ndarray | None = None, std: np.ndarray | None = None):
        super().__init__()
        self.icon = fft_image(icon_size, 1, generator=torch.Generator().manual_seed(0))
        self.icon.spectrum.requires_grad_(False)  # only its scale and colour buffers are used
        self.shape = tuple(self.icon.spectrum.shape[1:])  # (3, S, S // 2 + 1, 2)
        self.register_buffer("mean", torch.as_tensor(np.zeros(channels) if mean is None else mean, dtype=torch.float32))
        self.register_buffer("std", torch.as_tensor(np.ones(channels) if std is None else std, dtype=torch.float32))
        self.hidden = nn.Linear(channels, hidden)
        self.out = nn.Linear(hidden, math.prod(self.shape))
        nn.init.normal_(self.out.weight, std=0.01 / math.sqrt(hidden))  # starts near gray, as a cold icon does
        nn.init.zeros_(self.out.bias)

    @staticmethod
    def unit(vecs: torch.Tensor) -> torch.Tensor:
        return vecs / vecs.norm(dim=1, keepdim=True).clamp_min(1e-8)

    def spectrum(self, vecs: torch.Tensor) -> torch.Tensor:
        x = (self.unit(vecs) - self.mean) / self.std
        return self.out(nn.functional.gelu(self.hidden(x))).view(len(vecs), *self.shape)

    def forward(self, vecs: torch.Tensor) -> torch.Tensor:
        return self.icon.image(self.spectrum(vecs))


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
                           progress: bool = False) -> AmortisedFit:
    """Train a :class:`DirectionImages` on ``vecs`` (N, C), all the cells' directions, to maximize
    the icons' objective (:func:`atlas.optvis.directions`, the same transforms) over random batches
    of ``batch_size`` directions, ``steps`` Adam steps at ``lr``."""
    from tqdm import tqdm

    dev = model.device
    v = np.asarray(vecs, np.float32)
    unit = v / np.maximum(np.linalg.norm(v, axis=1, keepdims=True), 1e-8)
    with torch.random.fork_rng(devices=[]):  # the weights' start from ``seed``, not the global stream
        torch.manual_seed(seed)
        net = DirectionImages(v.shape[1], icon_size, hidden=hidden, mean=unit.mean(0),
                              std=unit.std(0) + 1e-3 * unit.std(0).mean() + 1e-8).to(dev)
    opt = torch.optim.Adam([p for p in net.parameters() if p.requires_grad], lr=lr)
    gen = torch.Generator().manual_seed(seed)
    vt = torch.from_numpy(v)
    history, acc = [], []
    t0 = time.perf_counter()
    nhwc = dev.type == "cpu"
    for step in tqdm(range(1, steps + 1), desc="amortised start", unit="step", disable=not progress, leave=False):
        idx = torch.randint(len(vt), (batch_size,), generator=gen)
        batch = vt[idx].to(dev)
        obj = directions(layer, batch, cossim_pow=cossim_pow, spatial_mean=spatial_mean, whiten=whiten)
        rng = BatchRNG.from_generators([gen] * batch_size)
        x = apply(transforms, net(batch), rng)
        if nhwc:
            x = x.contiguous(memory_format=torch.channels_last)
        values = evaluate(model, obj, x, redirect_relu=step <= redirect_relu_steps).float()
        opt.zero_grad(set_to_none=True)
        (-values.mean()).backward()
        opt.step()
        acc.append(float(values.detach().mean()))
        if step % 50 == 0 or step == steps:
            history.append(float(np.mean(acc)))
            acc = []
            log.debug("amortised start: step %d, objective %.4f", step, history[-1])
    net.eval()
    return AmortisedFit(net, steps, time.perf_counter() - t0, history)


def predict_icons(net: DirectionImages, vecs: np.ndarray, batch_size: int = 256) -> torch.Tensor:
    """The network's icons (N, 3, S, S) in (0, 1) on the CPU for directions ``vecs`` (N, C)."""
    dev = next(net.parameters()).device
    out = []
    with torch.no_grad():
        for i in range(0, len(vecs), batch_size):
            out.append(net(torch.as_tensor(np.asarray(vecs[i:i + batch_size], np.float32), device=dev)).cpu())
    return torch.cat(out) if out else torch.zeros(0, 3, net.icon.size[0], net.icon.size[1])


def start_file(icons_path: str | os.PathLike) -> Path:
    """Where a render keeps its amortised start's network: ``icons.start.pt`` beside ``icons.h5``."""
    p = Path(icons_path)
    return p.with_name(p.stem + ".start.pt")


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
            net = DirectionImages(int(saved["channels"]), int(saved["icon_size"]), hidden=int(saved["hidden"]))
            net.load_state_dict(saved["state"])
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


def start_from_network(batches: list, net: DirectionImages, *, steps: int, lr: float) -> list:
    """``batches`` (:class:`~atlas.stages.render.batch.IconBatch`), each cell starting from its own
    icon as the network predicts it (8-bit, as a stored icon) with ``steps`` steps at ``lr``,
    without the redirected ReLU gradient of a start from noise."""
    import dataclasses

    from atlas.optvis import to_uint8

    return [dataclasses.replace(b, init=to_uint8(predict_icons(net, b.directions)), steps=steps, lr=lr,
                                redirect_relu_steps=0) for b in batches]
