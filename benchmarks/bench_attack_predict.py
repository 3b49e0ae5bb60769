"""The attack's forward passes: a contiguous batch (the naive way) against the channels-last
batch that ``atlas.tools.attack.predict`` feeds the model, on the same images, same weights.

    python benchmarks/bench_attack_predict.py --weights ../shared/models/bvlc_googlenet.pth

Prints images/s for both and the largest difference in the softmax probabilities.
"""

from __future__ import annotations

import argparse
import time

import torch

from atlas.models import load_model
from atlas.tools.attack import predict


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--weights", default=None, help="InceptionV1 weights [random init]")
    ap.add_argument("--images", type=int, default=128)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    model = load_model("inceptionv1", weights=args.weights, random_init=args.weights is None)
    x = torch.rand(args.images, 3, model.input_size, model.input_size, generator=torch.Generator().manual_seed(0))

    @torch.no_grad()
    def naive() -> torch.Tensor:
        return torch.cat([model(x[i:i + args.batch_size]).softmax(1) for i in range(0, len(x), args.batch_size)])

    with torch.no_grad():
        naive()  # warm-up
        predict(model, x[: args.batch_size], args.batch_size)
        best = {}
        for name, fn in (("contiguous (naive)", naive), ("channels-last (predict)", lambda: predict(model, x,
                                                                                                   args.batch_size))):
            times = []
            for _ in range(args.rounds):
                t = time.perf_counter()
                out = fn()
                times.append(time.perf_counter() - t)
            best[name] = (min(times), out)
    (t0, a), (t1, b) = best.values()
    print(f"{args.images} images of {model.input_size} px, batches of {args.batch_size}, {torch.get_num_threads()} "
          f"threads, best of {args.rounds}")
    for name, (t, _) in best.items():
        print(f"  {name:<26} {args.images / t:7.1f} images/s")
    print(f"  speed-up {t0 / t1:.2f}x; largest probability difference {float((a - b).abs().max()):.1e}; "
          f"same top-1 on {float((a.argmax(1) == b.argmax(1)).float().mean()) * 100:.1f}%")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
