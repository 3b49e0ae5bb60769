"""Forward-mode automatic differentiation, as collect's attribution uses it.

:func:`dual_level` is :func:`torch.autograd.forward_ad.dual_level`, except that it first loads
the forward-AD decompositions torch keeps for TorchScript. atlas never compiles TorchScript,
but torch builds those decompositions with ``torch.jit.script`` on the first forward-AD use in
a process, and ``torch.jit.script`` is deprecated, so every ``atlas collect`` printed a
``FutureWarning`` about code the user never wrote. They are loaded here once, with exactly that
warning (its message, its category) ignored for the one import; every other warning is left
alone.
"""

from __future__ import annotations

import contextlib
import importlib
import sys
import warnings
from collections.abc import Iterator

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
    _load_decompositions()
    with fwAD.dual_level() as level:
        yield level


__all__ = ["dual_level"]
