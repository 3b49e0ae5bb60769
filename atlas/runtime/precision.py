"""Mixed precision for the model's passes (collect and render): ``"fp32"``, ``"bf16"``, ``"fp16"``.

Micikevicius et al., "Mixed Precision Training" (ICLR 2018): under ``torch.autocast``,
convolutions and matmuls run in the low precision while reductions and the results that are
kept stay float32. Parameters (the model's and the optimized images') stay float32 throughout.
"""

from __future__ import annotations

import contextlib

import torch

__all__ = ["PRECISIONS", "autocast", "check_precision"]

#: Accepted precision names.
PRECISIONS: tuple[str, ...] = ("fp32", "bf16", "fp16")
_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def check_precision(precision: str) -> str:
    """``precision`` if it is one of :data:`PRECISIONS`, else a ValueError that lists them."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, not {precision!r}")
    return precision


def autocast(precision: str, device: torch.device | str) -> contextlib.AbstractContextManager:
    """``torch.autocast`` for ``"bf16"``/``"fp16"`` on ``device``'s type; a no-op for ``"fp32"``."""
    if check_precision(precision) == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(torch.device(device).type, dtype=_DTYPES[precision])
