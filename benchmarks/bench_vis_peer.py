"""Feature visualization strength per step, side by side with Lucent, and MACO against FFT.

For each objective (channel, neuron and direction objectives of ``inception4c`` and
``inception4a``, Lucid's ``mixed4c`` and ``mixed4a``) and each step count, renders one 128 px
picture with

- ``atlas``: :func:`atlas.optvis.visualize`'s defaults (FFT parameterization, Lucid's standard
  transforms, the picture seen by the model at its input size);
- ``atlas-before``: the same without resampling to the input size (the model sees the 128 px
  picture plus the transforms' padding, about 152 px; the default until this benchmark);
- ``lucent``: Lucent's ``render_vis`` (the torch port of Lucid; optional, ``pip install
  torch-lucent``) on the same model, with its defaults (FFT, standard transforms, upsampling to
  224 px), no preprocessing of its own (the model takes RGB in [0, 1]); its channel and neuron
  objectives, and for a direction the dot product (Lucent's ``direction`` is a cosine);
- ``atlas-maco``: the MACO parameterization (:func:`atlas.optvis.maco_image`) with atlas's
  loop, at its tuned learning rate;

and scores every final picture the same way, independently of how it was made: resized to
224 px, the objective's statistic measured without transforms, divided by the 99th percentile
of the same statistic over real photos (``--photos``, every ``--photo-stride``-th file, through
the model's own resize and crop). Statistic: channel -> the channel's mean over positions;
neuron -> the channel at the center position; direction -> mean over positions of the dot
product with the unit direction.

A second part compares MACO with FFT on a torchvision ResNet-50 with random weights (no
weights are downloaded here): that only shows MACO runs on another architecture; random
weights say nothing about which parameterization visualizes better.

    python benchmarks/bench_vis_peer.py --weights ../shared/models/bvlc_googlenet.pth \\
        --photos ../shared/images/imagenet-sample --steps 64,128,256 --threads 2

Prints a table, writes ``benchmarks/results/vis_peer.json`` and the gallery
``docs/gallery/vis_peer.png`` (one row per objective at the largest step count: atlas | lucent
| atlas-maco | atlas-before).
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw

from atlas import optvis
from atlas.data import list_photos
from atlas.models import AtlasModel, capture, load_model
from atlas.optvis.param import PARAMETERIZATIONS

REPO = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class Spec:
    """One objective: kind (channel, neuron, direction), layer, channels (1, or 2 for a direction)."""

    kind: str
    layer: str
    channels: tuple[int, ...]

    @property
    def name(self) -> str:
        return f"{self.kind}:{self.layer}:{'+'.join(map(str, self.channels))}"

    def vector(self, n_channels: int) -> torch.Tensor:
        v = torch.zeros(n_channels)
        v[list(self.channels)] = 1.0
        return v / v.norm()

    def atlas_objective(self, n_channels: int) -> optvis.Objective:
        if self.kind == "channel":
            return optvis.channel(self.layer, self.channels[0])
        if self.kind == "neuron":
            return optvis.neuron(self.layer, self.channels[0])
        return optvis.direction(self.layer, self.vector(n_channels))

    def statistic(self, acts: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) activations -> (B,) the score described in the module docstring."""
        if self.kind == "channel":
            return acts[:, self.channels[0]].mean(dim=(1, 2))
        if self.kind == "neuron":
            return acts[:, self.channels[0], acts.shape[2] // 2, acts.shape[3] // 2]
        v = self.vector(acts.shape[1]).to(acts)
        return torch.einsum("bchw,c->bhw", acts, v).mean(dim=(1, 2))


DEFAULT_SPECS = ("channel:inception4c:447,channel:inception4c:100,channel:inception4c:300,"
                 "channel:inception4a:50,channel:inception4a:300,neuron:inception4c:447,"
                 "direction:inception4c:97+447")


def parse_specs(text: str) -> list[Spec]:
    out = []
    for item in text.split(","):
        kind, layer, chans = item.strip().split(":")
        if kind not in ("channel", "neuron", "direction"):
            raise SystemExit(f"unknown objective kind {kind!r} in {item!r}: channel, neuron or direction")
        out.append(Spec(kind, layer, tuple(int(c) for c in chans.split("+"))))
    return out


def layer_acts(model: AtlasModel, images: torch.Tensor, layer: str) -> torch.Tensor:
    """(B, 3, h, w) in [0, 1] -> the layer's activations at the model's input size."""
    s = model.input_size
    if tuple(images.shape[2:]) != (s, s):
        images = F.interpolate(images, size=(s, s), mode="bilinear", align_corners=False)
    with torch.no_grad(), capture(model, [layer], detach=True) as a:
        optvis.evaluate(model, optvis.channel(layer, 0), images)
    return a[layer]


def photo_scores(model: AtlasModel, specs: list[Spec], photos: list[Path], batch: int = 25) -> dict[str, np.ndarray]:
    """The statistic of every spec over the photos: name -> (N,)."""
    out: dict[str, list[np.ndarray]] = {s.name: [] for s in specs}
    layers = sorted({s.layer for s in specs})
    for start in range(0, len(photos), batch):
        x = torch.stack([model.image_transform(Image.open(p)) for p in photos[start:start + batch]])
        for layer in layers:
            acts = layer_acts(model, x, layer)
            for s in specs:
                if s.layer == layer:
                    out[s.name].append(s.statistic(acts).numpy())
    return {k: np.concatenate(v) for k, v in out.items()}


def render_atlas(model: AtlasModel, spec: Spec, steps: int, size: int, *, param: str = "fft",
                 input_size: int | None = -1, seed: int = 0) -> torch.Tensor:
    """atlas's render: ``input_size=-1`` means :func:`visualize`'s default (the model's input size)."""
    n_channels = layer_acts(model, torch.full((1, 3, 32, 32), 0.5), spec.layer).shape[1]
    g = torch.Generator().manual_seed(seed)
    p = optvis.make_image(param, size, generator=g, device=model.device)
    res = optvis.render_vis(model, spec.atlas_objective(n_channels), p, optvis.standard_transforms(), steps=steps,
                            lr=PARAMETERIZATIONS[param], generator=g,
                            input_size=model.input_size if input_size == -1 else input_size)
    return res.images


def render_lucent(model: AtlasModel, spec: Spec, steps: int, size: int, seed: int = 0) -> torch.Tensor:
    from lucent.optvis import objectives, param, render

    torch.manual_seed(seed)
    name = "net_" + spec.layer  # Lucent names modules by their path with "_"
    if spec.kind == "channel":
        obj = objectives.channel(name, spec.channels[0])
    elif spec.kind == "neuron":
        obj = objectives.neuron(name, spec.channels[0])
    else:
        # Lucent's own ``direction`` is a cosine; Lucid's (and atlas's) is the dot product, which
        # is also what is scored, so the dot product is given to Lucent's loop as an Objective.
        n_channels = layer_acts(model, torch.full((1, 3, 32, 32), 0.5), spec.layer).shape[1]
        v = spec.vector(n_channels)[None, :, None, None]
        obj = objectives.Objective(lambda hook: -(hook(name) * v).sum(1).mean(), name=f"dot {name}")
    imgs = render.render_vis(model, obj, lambda: param.image(size), thresholds=(steps,), preprocess=False,
                             progress=False, show_image=False)
    return torch.from_numpy(imgs[-1]).permute(0, 3, 1, 2).float()


def have_lucent() -> bool:
    try:
        import lucent.optvis.render  # noqa: F401
    except Exception as e:  # noqa: BLE001 -- any import failure means "not available"
        print(f"# lucent not available ({type(e).__name__}: {e}); install torch-lucent to compare", file=sys.stderr)
        return False
    return True


def label(img: Image.Image, text: str) -> Image.Image:
    out = Image.new("RGB", (img.width, img.height + 14), "white")
    out.paste(img, (0, 14))
    ImageDraw.Draw(out).text((2, 1), text, fill="black")
    return out


def gallery(rows: list[tuple[str, list[tuple[str, torch.Tensor]]]], path: Path) -> None:
    tiles = []
    for title, cells in rows:
        row = [label(Image.fromarray(optvis.to_uint8(img[0])), f"{name}") for name, img in cells]
        w = sum(t.width for t in row) + 4 * (len(row) - 1)
        strip = Image.new("RGB", (w, row[0].height + 14), "white")
        ImageDraw.Draw(strip).text((2, 1), title, fill="black")
        x = 0
        for t in row:
            strip.paste(t, (x, 14))
            x += t.width + 4
        tiles.append(strip)
    h = sum(t.height for t in tiles) + 6 * (len(tiles) - 1)
    sheet = Image.new("RGB", (max(t.width for t in tiles), h), "white")
    y = 0
    for t in tiles:
        sheet.paste(t, (0, y))
        y += t.height + 6
    path.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(path)


def resnet_part(steps: int, size: int) -> list[dict]:
    """MACO vs FFT on a random-init torchvision ResNet-50 (runs; nothing more is claimed)."""
    model = load_model("torchvision:resnet50", random_init=True, device="cpu")
    spec = Spec("channel", "layer3", (7,))
    noise = torch.rand(8, 3, model.input_size, model.input_size, generator=torch.Generator().manual_seed(0))
    ref = float(np.percentile(spec.statistic(layer_acts(model, noise, spec.layer)).numpy(), 99))
    out = []
    for param in ("fft", "maco"):
        t0 = time.perf_counter()
        img = render_atlas(model, spec, steps, size, param=param)
        sec = time.perf_counter() - t0
        value = float(spec.statistic(layer_acts(model, img, spec.layer))[0])
        out.append({"model": "resnet50 (random init)", "objective": spec.name, "method": f"atlas-{param}",
                    "steps": steps, "value": value, "ratio_to_noise_p99": value / ref, "seconds": sec})
        print(f"resnet50 random  {spec.name:28s} {param:5s} steps {steps:4d}  {value:9.3f} "
              f"({value / ref:5.2f}x noise p99)  {sec:6.1f} s", flush=True)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--weights", required=True, help="BVLC InceptionV1 weights (bvlc_googlenet.pth)")
    ap.add_argument("--photos", required=True, help="folder of real photos (the reference statistic)")
    ap.add_argument("--photo-stride", type=int, default=4, help="use every N-th photo [%(default)s]")
    ap.add_argument("--objectives", default=DEFAULT_SPECS, help="kind:layer:channel[+channel],... [%(default)s]")
    ap.add_argument("--steps", default="64,128,256")
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--methods", default="atlas,lucent,atlas-maco,atlas-before")
    ap.add_argument("--resnet", action="store_true", help="also MACO vs FFT on a random-init ResNet-50")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", default=str(REPO / "benchmarks" / "results" / "vis_peer.json"))
    ap.add_argument("--gallery", default=str(REPO / "docs" / "gallery" / "vis_peer.png"))
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    specs = parse_specs(args.objectives)
    steps_list = [int(s) for s in args.steps.split(",")]
    methods = [m for m in args.methods.split(",") if m != "lucent" or have_lucent()]

    model = load_model("inceptionv1", weights=args.weights, device="cpu")
    photos = list_photos(args.photos)
    photos = photos[::args.photo_stride]
    t0 = time.perf_counter()
    ref = photo_scores(model, specs, photos)
    p99 = {k: float(np.percentile(v, 99)) for k, v in ref.items()}
    print(f"# {len(photos)} photos scored in {time.perf_counter() - t0:.0f} s; "
          f"{platform.processor() or platform.machine()}, torch {torch.__version__}, {args.threads} threads")
    print(f"{'objective':30s} {'method':13s} {'steps':>5s} {'value':>9s} {'x p99':>7s} {'s':>7s}")
    rows: list[dict] = []
    pictures: dict[str, list[tuple[str, torch.Tensor]]] = {}
    for spec in specs:
        for steps in steps_list:
            for method in methods:
                t = time.perf_counter()
                if method == "lucent":
                    img = render_lucent(model, spec, steps, args.size)
                elif method == "atlas-before":
                    img = render_atlas(model, spec, steps, args.size, input_size=None)
                elif method.startswith("atlas-"):
                    img = render_atlas(model, spec, steps, args.size, param=method.split("-", 1)[1])
                else:
                    img = render_atlas(model, spec, steps, args.size)
                sec = time.perf_counter() - t
                value = float(spec.statistic(layer_acts(model, img, spec.layer))[0])
                ratio = value / p99[spec.name]
                rows.append({"model": "inceptionv1", "objective": spec.name, "method": method, "steps": steps,
                             "value": value, "photos_p99": p99[spec.name], "ratio": ratio, "seconds": sec})
                print(f"{spec.name:30s} {method:13s} {steps:5d} {value:9.2f} {ratio:7.2f} {sec:7.1f}", flush=True)
                if steps == max(steps_list):
                    pictures.setdefault(spec.name, []).append((f"{method} {ratio:.1f}x", img))
    if args.resnet:
        rows += resnet_part(max(steps_list), args.size)

    print("\n# mean ratio to the photos' p99, per method and steps")
    for steps in steps_list:
        line = [f"steps {steps:4d}"]
        for method in methods:
            r = [x["ratio"] for x in rows if x.get("ratio") is not None and x["method"] == method and x["steps"] == steps
                 and x["model"] == "inceptionv1"]
            s = [x["seconds"] for x in rows if x["method"] == method and x["steps"] == steps and x["model"] == "inceptionv1"]
            line.append(f"{method} {np.mean(r):.2f}x ({np.mean(s):.1f} s)")
        print("  ".join(line))
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps({"command": " ".join(sys.argv), "threads": args.threads,
                                           "photos": len(photos), "rows": rows}, indent=1))
    gallery([(name, cells) for name, cells in pictures.items()], Path(args.gallery))
    print(f"wrote {args.json} and {args.gallery}")


if __name__ == "__main__":
    main()
