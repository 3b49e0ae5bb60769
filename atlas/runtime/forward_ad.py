"""Forward-mode automatic differentiation, as collect's attribution uses it.

:func:`dual_level` is :func:`torch.autograd.forward_ad.dual_level`, except that it first loads
the forward-AD decompositions torch keeps for TorchScript. atlas never compiles TorchScript,
but torch builds those decompositions with ``torch.jit.script`` on the first forward-AD use in
a process, and ``torch.jit.script`` is deprecated, so every ``atlas collect`` printed a
``FutureWarning`` about code the user never wrote. They are loaded here once, with exactly that
warning (its message, its category) ignored for the one import; every other warning is left
alone.

Attention has no forward-mode derivative in torch's fused kernels: ``nn.MultiheadAttention``'s
fast path (``_native_multi_head_attention``, which it takes for inference without gradients) and
the flash and memory-efficient kernels of ``scaled_dot_product_attention``. Inside
:func:`dual_level` the fast path is off and attention runs the math kernel, which has one, so
forward AD goes through a vision transformer; both are restored on exit.
"""

from __future__ import annotations

import contextlib
import importlib
import sys
import warnings
from collections.abc import Iterator

import torch
import torch.autograd.forward_ad as fwAD

_DECOMPOSITIONS = "torch._decomp.decompositions_for_jvp"


def _load_decompositions() -> None:
    if _DECOMPOSITIONS in sys.modules:
        return
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r"`torch\.jit\.script` is deprecated", category=FutureWarning)
        try:
            importlib.import_module(_DECOMPOSITIONS)
        except ImportError:  # a torch without them: forward AD does not load them either
            pass


@contextlib.contextmanager
def dual_level() -> Iterator[int]:
    """Enter a forward-AD level (see :func:`torch.autograd.forward_ad.dual_level`)."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    _load_decompositions()
    fastpath = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)
    try:
        with fwAD.dual_level() as level, sdpa_kernel(SDPBackend.MATH):
            yield level
    finally:
        torch.backends.mha.set_fastpath_enabled(fastpath)


__all__ = ["dual_level"]
