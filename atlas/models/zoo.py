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
- ``"timm:NAME"`` (e.g. ``timm:vit_base_patch16_224``): a timm model, when timm is installed
  (it is not a dependency); its published weights come through timm (``weights=`` a local file,
  ``random_init=True`` none), its preprocessing from its own data config.
- any ``nn.Module`` (Python API): wrapped as is; pass ``preprocess=`` and ``input_size=`` (and,
  for a vision transformer whose patch grid cannot be read from it, ``token_grid=``).

Vision transformers (torchvision's ``vit_*``, timm's ViTs, a torchvision ``VisionTransformer``
given as a module) keep their activations as tokens (B, T, C); ``AtlasModel.token_grid`` is their
patch grid, which :mod:`atlas.models.tokens` uses to read a token layer as (B, C, H, W), and
``fixed_size`` says that the network only takes ``input_size`` x ``input_size`` images (its
position embeddings fix the patch grid), so ``forward`` resamples any other size to it.
"""

from __future__ import annotations

import difflib
import logging
import os
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from functools import partial
from pathlib import Path

import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from atlas.checks import SettingError
from atlas.models.hooks import record_outputs
from atlas.models.inceptionv1 import InceptionV1, caffe_preprocess
from atlas.models.tokens import TokenLayout, grid_view, token_layout, vit_token_grid
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
    return _normalize(x, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225))


def _normalize(x: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    m = torch.tensor(tuple(mean), dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    s = torch.tensor(tuple(std), dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    return (x - m) / s


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
        token_grid: the patch grid (H, W) of a vision transformer's token layers at
            ``input_size`` (:mod:`atlas.models.tokens`); None for other networks (a token layer
            is then read on the largest square grid of its tokens).
        fixed_size: the network takes only ``input_size`` x ``input_size`` images (a ViT);
            ``forward`` then resamples other sizes to it (bilinear, differentiable), so that
            feature visualization can optimize icons of any size.
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
        token_grid: tuple[int, int] | None = None,
        fixed_size: bool = False,
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
        self.token_grid = None if token_grid is None else (int(token_grid[0]), int(token_grid[1]))
        self.fixed_size = bool(fixed_size)

    def preprocess(self, x: torch.Tensor) -> torch.Tensor:
        """RGB [0, 1] (N, 3, H, W) -> what ``net`` expects; differentiable."""
        return self._preprocess(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = self.input_size
        if self.fixed_size and tuple(x.shape[-2:]) != (s, s):
            x = F.interpolate(x, size=(s, s), mode="bilinear", align_corners=False)
        return self.net(self.preprocess(x))

    def token_layout(self, shape: Sequence[int]) -> TokenLayout | None:
        """How the tokens of a layer with output ``shape`` (without the batch) lie on this
        model's patch grid, or None when it is not a token layer (:func:`atlas.models.tokens.token_layout`)."""
        return token_layout(shape, self.token_grid)

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
        """Output shape (without batch) of each layer for one ``size`` x ``size`` input (layers
        whose output is not one tensor, such as an attention module's tuple, are left out)."""
        names = list(names) if names is not None else self.layer_names()
        size = size or self.input_size
        x = torch.zeros(1, 3, size, size, device=self.device)
        with torch.no_grad(), capture(self, names) as acts:
            self(x)
        return {n: tuple(acts[n].shape[1:]) for n in names if isinstance(acts.get(n), torch.Tensor)}


@contextmanager
def capture(model: AtlasModel, layers: Sequence[str], detach: bool = False, *,
            stop: bool = False, grid: bool = False) -> Iterator[dict[str, torch.Tensor]]:
    """Record the outputs of ``layers`` during forward passes inside the block.

    Yields a dict filled on every forward pass (the last call wins when a module runs twice).
    Hooks are removed on exit, also on error. With ``detach=False`` the tensors stay in the
    graph, so objectives can backpropagate through them. With ``stop=True`` the forward pass
    ends right after the last of ``layers`` has run (the layers above cost nothing), and so does
    the block: code after that call in the block does not run (see
    :func:`atlas.models.hooks.record_outputs`). With ``grid=True``, the output of a token layer
    (B, T, C) is recorded as its patch grid (B, C, H, W), a view that keeps the graph
    (:func:`atlas.models.tokens.grid_view` on the model's ``token_grid``); other outputs are as they are.
    """
    transform = (lambda out: grid_view(out, model.token_grid)) if grid else None
    with record_outputs([(name, model.layer(name)) for name in layers], detach=detach, stop=stop,
                        transform=transform) as acts:
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
    grid = vit_token_grid(net)  # the vit_* models: tokens on a fixed patch grid
    return AtlasModel(
        net,
        _imagenet_normalize,
        name=f"torchvision:{arch}",
        input_size=size,
        class_names=published.meta.get("categories"),
        image_transform=ImageTransform(resize, size, keep_aspect=True),
        token_grid=grid,
        fixed_size=grid is not None,
    )


def _load_timm(arch: str, weights, random_init: bool) -> AtlasModel:
    """A timm model by name (``arch`` may carry a pretrained tag, ``vit_base_patch16_224.augreg_in1k``)."""
    try:
        import timm
        from timm.data import resolve_data_config
    except ImportError as e:
        raise ModelError(f"timm:{arch} needs the timm package, which is not installed (pip install timm); "
                         "torchvision's vision transformers load without it, e.g. torchvision:vit_b_16") from e
    if not timm.is_model(arch.split(".", 1)[0]):
        close = difflib.get_close_matches(arch, timm.list_models(), n=5)
        hint = f" Did you mean {', '.join(close)}?" if close else ""
        raise ModelError(f"timm has no model {arch!r}.{hint} List them with timm.list_models()")
    kwargs: dict = {}
    if weights is not None and not random_init:
        path = Path(weights).expanduser()
        if not path.is_file():
            raise ModelError(f"weights file {path} for timm:{arch} does not exist")
        kwargs["pretrained_cfg_overlay"] = {"file": str(path)}
    try:
        with _seeded():
            net = timm.create_model(arch, pretrained=not random_init, **kwargs)
    except Exception as e:  # network errors come in many types
        raise ModelError(f"could not load timm:{arch} ({e}). Without internet, pass a local weight file with "
                         "--weights PATH, or use --random-init for a test run.") from e
    for m in net.modules():  # in-place ReLUs would overwrite captured activations
        if isinstance(m, nn.ReLU):
            m.inplace = False
    cfg = resolve_data_config({}, model=net)
    size = int(cfg["input_size"][-1])
    resize = round(size / float(cfg.get("crop_pct") or 0.875))
    grid = vit_token_grid(net)
    return AtlasModel(
        net,
        partial(_normalize, mean=tuple(cfg["mean"]), std=tuple(cfg["std"])),
        name=f"timm:{arch}",
        input_size=size,
        class_names=imagenet_class_names() if getattr(net, "num_classes", None) == 1000 else None,
        image_transform=ImageTransform(resize, size, keep_aspect=True),
        token_grid=grid,
        fixed_size=grid is not None and not getattr(net, "dynamic_img_size", False),
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
    token_grid: tuple[int, int] | None = None,
) -> AtlasModel:
    """Load a model by spec (see the module docstring) in eval mode on ``device``.

    Args:
        spec: ``"inceptionv1"``, ``"torchvision:NAME"``, ``"timm:NAME"`` or an ``nn.Module``.
        weights: a local weight file; overrides the default location or download.
        random_init: skip loading weights (tests, smoke runs); the random weights are seeded,
            so they are the same in every process.
        device: where to put the model, e.g. ``"cpu"``, ``"cuda"``; see :func:`resolve_device`.
        preprocess, input_size, class_names: for a user's own ``nn.Module`` only.
        token_grid: for a user's own vision transformer: the patch grid (H, W) of its token
            layers at ``input_size`` (default: read from a torchvision ``VisionTransformer`` or a
            timm ViT, else None: the largest square of the tokens, :mod:`atlas.models.tokens`).
            A network whose grid is known this way is taken to need ``input_size`` images.
    """
    if isinstance(spec, AtlasModel):
        model = spec
    elif isinstance(spec, nn.Module):
        grid = token_grid if token_grid is not None else vit_token_grid(spec)
        model = AtlasModel(spec, preprocess or (lambda x: x), name=type(spec).__name__,
                           input_size=input_size, class_names=class_names, token_grid=grid,
                           fixed_size=grid is not None)
    elif check_model_spec(spec) == "inceptionv1":
        model = _load_inceptionv1(weights, random_init)
    elif spec.startswith("timm:"):
        model = _load_timm(spec.split(":", 1)[1], weights, random_init)
    else:
        model = _load_torchvision(spec.split(":", 1)[1], weights, random_init)
    for p in model.parameters():
        p.requires_grad_(False)
    return model.eval().to(resolve_device(device))


def check_model_spec(spec: str) -> str:
    """``spec`` if it names a model :func:`load_model` knows how to load (``"inceptionv1"``,
    ``"torchvision:NAME"`` or ``"timm:NAME"``; whether the library has NAME is found when
    loading), else a ModelError."""
    if spec == "inceptionv1" or (isinstance(spec, str) and any(
            spec.startswith(prefix) and spec[len(prefix):] for prefix in ("torchvision:", "timm:"))):
        return spec
    known = ["inceptionv1", "torchvision:<name> (e.g. torchvision:googlenet, torchvision:resnet50, "
                            "torchvision:vit_b_16)", "timm:<name> (with timm installed)"]
    close = difflib.get_close_matches(str(spec), ["inceptionv1", "torchvision:googlenet"], n=2)
    hint = f" Did you mean {', '.join(close)}?" if close else ""
    raise ModelError(f"unknown model {spec!r}.{hint} Known models: {'; '.join(known)}")


def check_model_setting(key: str, spec: str) -> str:
    """:func:`check_model_spec` for a setting: the error is a :class:`~atlas.checks.SettingError`
    naming ``key`` (a config's ``[model] name``, an aligned side's ``model``)."""
    try:
        return check_model_spec(spec)
    except ModelError as e:
        raise SettingError(key, f"must name a model: {e}") from None


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
