"""The model zoo: every model the toolkit works on, behind one wrapper.

Contract (:class:`AtlasModel`): ``model(x)`` takes RGB images in [0, 1], shape (N, 3, H, W), and
returns class logits (N, K). Each model's own preprocessing (Caffe BGR/mean for the BVLC
InceptionV1, ImageNet mean/std for torchvision models) happens inside ``forward`` and is
differentiable, so every stage -- collect, feature visualization, attacks, attribution maps --
feeds the same kind of tensor. Layers are addressed by their module names in ``model.net``.

Specs understood by :func:`load_model`:

- ``"inceptionv1"``: the BVLC GoogLeNet defined in :mod:`atlas.models.inceptionv1`; weights from
  ``weights=``, else ``$ATLAS_INCEPTIONV1_WEIGHTS``, else ``~/.cache/atlas/bvlc_googlenet.pth``.
- ``"torchvision:NAME"`` (e.g. ``torchvision:googlenet``, ``torchvision:resnet50``): a torchvision
  classifier with its published ImageNet weights (downloaded by torchvision on first use), or a
  local file given by ``weights=``; ``random_init=True`` skips weights entirely (tests).
- any ``nn.Module`` (Python API): wrapped as is; pass ``preprocess=`` and ``input_size=``.
"""

from __future__ import annotations

import difflib
import logging
import os
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import torch
from PIL import Image
from torch import nn

from atlas.checks import SettingError
from atlas.models.hooks import record_outputs
from atlas.models.inceptionv1 import InceptionV1, caffe_preprocess
from atlas.resources import imagenet_class_names

log = logging.getLogger(__name__)

INCEPTIONV1_ENV = "ATLAS_INCEPTIONV1_WEIGHTS"
DEFAULT_CACHE = Path("~/.cache/atlas").expanduser()

Preprocess = Callable[[torch.Tensor], torch.Tensor]


class ModelError(ValueError):
    """A model spec, weight file or layer name that cannot be used; the message says the fix."""


class UnknownLayerError(ModelError, KeyError):
    """A layer name that the model does not have; the message lists close matches."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0])


def _imagenet_normalize(x: torch.Tensor) -> torch.Tensor:
    mean = torch.tensor((0.485, 0.456, 0.406), dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    std = torch.tensor((0.229, 0.224, 0.225), dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    return (x - mean) / std


class ImageTransform:
    """PIL image -> (3, S, S) float tensor in [0, 1]: resize, then center-crop ``crop`` pixels.

    ``keep_aspect=False`` resizes to ``resize`` x ``resize`` (Caffe's pipeline); ``True`` resizes the
    shorter side to ``resize`` (torchvision's). A picklable class so DataLoader workers can use it.
    """

    def __init__(self, resize: int, crop: int, keep_aspect: bool):
        if crop > resize:
            raise ValueError(f"crop ({crop}) must not exceed resize ({resize})")
        self.resize, self.crop, self.keep_aspect = resize, crop, keep_aspect

    def target_size(self, width: int, height: int) -> tuple[int, int]:
        if not self.keep_aspect:
            return self.resize, self.resize
        scale = self.resize / min(width, height)
        return max(self.resize, round(width * scale)), max(self.resize, round(height * scale))

    def __call__(self, img: Image.Image) -> torch.Tensor:
        w, h = self.target_size(*img.size)
        if img.mode != "RGB":
            img = img.convert("RGB")
        img = img.resize((w, h), Image.BILINEAR)
        left, top = (w - self.crop) // 2, (h - self.crop) // 2
        img = img.crop((left, top, left + self.crop, top + self.crop))
        t = torch.frombuffer(bytearray(img.tobytes()), dtype=torch.uint8)
        return t.view(self.crop, self.crop, 3).permute(2, 0, 1).float().div_(255.0)

    def __repr__(self) -> str:
        return f"ImageTransform(resize={self.resize}, crop={self.crop}, keep_aspect={self.keep_aspect})"


class AtlasModel(nn.Module):
    """A classifier that takes RGB images in [0, 1] and exposes its layers by name.

    Attributes:
        net: the underlying network (it receives preprocessed input).
        name: the spec it was loaded from, e.g. ``"inceptionv1"``.
        input_size: the side of the square input the model was trained at (e.g. 224).
        class_names: one name per logit.
        image_transform: PIL -> (3, S, S) tensor in [0, 1], the model's resize/crop.
    """

    def __init__(
        self,
        net: nn.Module,
        preprocess: Preprocess,
        *,
        name: str,
        input_size: int = 224,
        class_names: Sequence[str] | None = None,
        image_transform: ImageTransform | None = None,
    ):
        super().__init__()
        self.net = net
        self._preprocess = preprocess
        self.name = name
        self.input_size = input_size
        self.class_names = list(class_names) if class_names is not None else None
        self.image_transform = image_transform or ImageTransform(
            round(input_size * 256 / 224), input_size, keep_aspect=True
        )

    def preprocess(self, x: torch.Tensor) -> torch.Tensor:
        """RGB [0, 1] (N, 3, H, W) -> what ``net`` expects; differentiable."""
        return self._preprocess(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(self.preprocess(x))

    @property
    def device(self) -> torch.device:
        for t in (*self.net.parameters(), *self.net.buffers()):
            return t.device
        return torch.device("cpu")  # a net without parameters or buffers

    def layer_names(self) -> list[str]:
        """Names of every hookable module of ``net`` (dropout and the root excluded)."""
        return [n for n, m in self.net.named_modules() if n and not isinstance(m, nn.Dropout)]

    def layer(self, name: str) -> nn.Module:
        """The module called ``name``; an unknown name raises :class:`UnknownLayerError`."""
        modules = dict(self.net.named_modules())
        if name and name in modules:
            return modules[name]
        names = self.layer_names()
        close = difflib.get_close_matches(name, names, n=5, cutoff=0.5)
        hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
        shown = ", ".join(names[:40]) + (" ..." if len(names) > 40 else "")
        raise UnknownLayerError(
            f"model {self.name!r} has no layer {name!r}.{hint} "
            f"Valid layers: {shown} (run `atlas layers {self.name}` for all, with shapes)."
        )

    def layer_shapes(self, names: Sequence[str] | None = None, size: int | None = None) -> dict[str, tuple[int, ...]]:
        """Output shape (without batch) of each layer for one ``size`` x ``size`` input."""
        names = list(names) if names is not None else self.layer_names()
        size = size or self.input_size
        x = torch.zeros(1, 3, size, size, device=self.device)
        with torch.no_grad(), capture(self, names) as acts:
            self(x)
        return {n: tuple(acts[n].shape[1:]) for n in names if n in acts}


@contextmanager
def capture(model: AtlasModel, layers: Sequence[str], detach: bool = False, *,
            stop: bool = False) -> Iterator[dict[str, torch.Tensor]]:
    """Record the outputs of ``layers`` during forward passes inside the block.

    Yields a dict filled on every forward pass (the last call wins when a module runs twice).
    Hooks are removed on exit, also on error. With ``detach=False`` the tensors stay in the
    graph, so objectives can backpropagate through them. With ``stop=True`` the forward pass
    ends right after the last of ``layers`` has run (the layers above cost nothing), and so does
    the block: code after that call in the block does not run (see
    :func:`atlas.models.hooks.record_outputs`).
    """
    with record_outputs([(name, model.layer(name)) for name in layers], detach=detach, stop=stop) as acts:
        yield acts


def finishing_order(model: AtlasModel, modules: Sequence[tuple[str, nn.Module]] | None = None,
                    keep: Callable[[object], bool] | None = None) -> list[str]:
    """Names of ``modules`` (default: every named module of ``model.net`` but dropout) in the
    order their forward pass finishes on a seeded random image (a block finishes after its
    parts; a module that runs twice is listed twice), keeping those whose output passes
    ``keep``. How :func:`atlas.tools.attribution.last_spatial_layer` and the sanity check's
    top-down layer order read a network's structure from the network itself."""
    if modules is None:
        modules = [(n, m) for n, m in model.net.named_modules() if n and not isinstance(m, nn.Dropout)]
    finished: list[str] = []
    handles = [m.register_forward_hook(
        lambda _m, _inp, out, name=name: finished.append(name) if keep is None or keep(out) else None)
        for name, m in modules]
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(1, 3, model.input_size, model.input_size, generator=gen).to(model.device)
    try:
        with torch.no_grad():
            model(x)
    finally:
        for h in handles:
            h.remove()
    return finished


def _resolve_inceptionv1_weights(weights: str | os.PathLike | None) -> Path:
    if weights is not None:
        path, origin = Path(weights).expanduser(), "the weights you gave"
    elif os.environ.get(INCEPTIONV1_ENV):
        path, origin = Path(os.environ[INCEPTIONV1_ENV]).expanduser(), f"${INCEPTIONV1_ENV}"
    else:
        path, origin = DEFAULT_CACHE / "bvlc_googlenet.pth", "the default location"
    if not path.is_file():
        raise ModelError(
            f"InceptionV1 weights not found at {path} ({origin}). Put bvlc_googlenet.pth "
            f"(the BVLC GoogLeNet state_dict) there, or point to it with --weights PATH, the config "
            f"key model.weights, or the environment variable {INCEPTIONV1_ENV}=PATH."
        )
    return path


@contextmanager
def _seeded(seed: int = 0) -> Iterator[None]:
    """Seed torch's RNG for the block and restore its state afterwards (no global side effect)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


def _load_inceptionv1(weights, random_init: bool) -> AtlasModel:
    with _seeded():  # random_init gives the same weights in every process
        net = InceptionV1()
    if not random_init:
        path = _resolve_inceptionv1_weights(weights)
        state = torch.load(path, map_location="cpu", weights_only=True)
        try:
            net.load_state_dict(state, strict=True)
        except RuntimeError as e:
            raise ModelError(f"{path} is not a BVLC GoogLeNet state_dict: {e}") from e
        log.info("loaded InceptionV1 weights from %s", path)
    return AtlasModel(
        net,
        caffe_preprocess,
        name="inceptionv1",
        input_size=224,
        class_names=imagenet_class_names(),
        image_transform=ImageTransform(256, 224, keep_aspect=False),
    )


def _load_torchvision(arch: str, weights, random_init: bool) -> AtlasModel:
    import torchvision

    available = torchvision.models.list_models(module=torchvision.models)
    if arch not in available:
        close = difflib.get_close_matches(arch, available, n=5)
        hint = f" Did you mean {', '.join(close)}?" if close else ""
        raise ModelError(f"torchvision has no classifier {arch!r}.{hint} Known: {', '.join(sorted(available))}")
    published = torchvision.models.get_model_weights(arch).DEFAULT
    if random_init or weights is not None:
        # architectures with auxiliary heads only build them for training
        kwargs = {"aux_logits": False, "init_weights": False} if arch in ("googlenet", "inception_v3") else {}
        with _seeded():
            net = torchvision.models.get_model(arch, weights=None, **kwargs)
        if weights is not None and not random_init:
            path = Path(weights).expanduser()
            if not path.is_file():
                raise ModelError(f"weights file {path} for torchvision:{arch} does not exist")
            state = torch.load(path, map_location="cpu", weights_only=True)
            missing, unexpected = net.load_state_dict(state, strict=False)
            if missing:
                raise ModelError(f"{path} does not fit torchvision:{arch}: missing keys {missing[:5]}")
    else:
        try:
            net = torchvision.models.get_model(arch, weights=published)
        except Exception as e:  # network errors come in many types (URLError, OSError, ...)
            raise ModelError(
                f"could not download the published weights of torchvision:{arch} ({published.url}): {e}. "
                f"Without internet, download that file elsewhere and pass it with --weights PATH "
                f"(or place it in {torch.hub.get_dir()}/checkpoints/), or use --random-init for a test run."
            ) from e
    for m in net.modules():  # in-place ReLUs would overwrite captured activations
        if isinstance(m, nn.ReLU):
            m.inplace = False
    size = published.transforms().crop_size[0]
    resize = published.transforms().resize_size[0]
    return AtlasModel(
        net,
        _imagenet_normalize,
        name=f"torchvision:{arch}",
        input_size=size,
        class_names=published.meta.get("categories"),
        image_transform=ImageTransform(resize, size, keep_aspect=True),
    )


def load_model(
    spec: str | nn.Module,
    *,
    weights: str | os.PathLike | None = None,
    random_init: bool = False,
    device: str | torch.device = "cpu",
    preprocess: Preprocess | None = None,
    input_size: int = 224,
    class_names: Sequence[str] | None = None,
) -> AtlasModel:
    """Load a model by spec (see the module docstring) in eval mode on ``device``.

    Args:
        spec: ``"inceptionv1"``, ``"torchvision:NAME"``, or an ``nn.Module``.
        weights: a local weight file; overrides the default location or download.
        random_init: skip loading weights (tests, smoke runs); the random weights are seeded,
            so they are the same in every process.
        device: where to put the model, e.g. ``"cpu"``, ``"cuda"``; see :func:`resolve_device`.
        preprocess, input_size, class_names: for a user's own ``nn.Module`` only.
    """
    if isinstance(spec, AtlasModel):
        model = spec
    elif isinstance(spec, nn.Module):
        model = AtlasModel(spec, preprocess or (lambda x: x), name=type(spec).__name__,
                           input_size=input_size, class_names=class_names)
    elif check_model_spec(spec) == "inceptionv1":
        model = _load_inceptionv1(weights, random_init)
    else:
        model = _load_torchvision(spec.split(":", 1)[1], weights, random_init)
    for p in model.parameters():
        p.requires_grad_(False)
    return model.eval().to(resolve_device(device))


def check_model_spec(spec: str) -> str:
    """``spec`` if it names a model :func:`load_model` knows how to load (``"inceptionv1"`` or
    ``"torchvision:NAME"``; whether torchvision has NAME is found when loading), else a ModelError."""
    if spec == "inceptionv1" or (isinstance(spec, str) and spec.startswith("torchvision:") and spec[12:]):
        return spec
    known = ["inceptionv1", "torchvision:<name> (e.g. torchvision:googlenet, torchvision:resnet50)"]
    close = difflib.get_close_matches(str(spec), ["inceptionv1", "torchvision:googlenet"], n=2)
    hint = f" Did you mean {', '.join(close)}?" if close else ""
    raise ModelError(f"unknown model {spec!r}.{hint} Known models: {'; '.join(known)}")


def check_device(device: str | torch.device | None) -> torch.device | None:
    """The device ``device`` names (None for ``"auto"``/``None``), without asking whether it is
    there; a name torch does not know raises :class:`~atlas.checks.SettingError` (key ``device``)."""
    if device is None or device == "auto":
        return None
    try:
        return torch.device(device)
    except (RuntimeError, TypeError, ValueError):
        raise SettingError("device", f"must be auto, cpu, cuda, cuda:N (the Nth GPU) or another torch device, "
                                     f"not {device!r}") from None


def resolve_device(device: str | torch.device | None) -> torch.device:
    """``"auto"``/``None`` -> CUDA when available, else CPU; anything else is passed to torch."""
    if check_device(device) is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ModelError("device 'cuda' requested but no CUDA GPU is available; use --device cpu or auto")
    return device
