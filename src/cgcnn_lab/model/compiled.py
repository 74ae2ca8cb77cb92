"""Element-wise chains of a training step, fused by ``torch.compile`` where PyTorch can, run as written where not.

Eagerly, the batch norm and gate of a gated edge step are ~15 operators, each a pass over a [K, E, 2A] tensor that
no longer fits the cache, with a fresh allocation for most; inductor fuses such a chain into a loop or two. Compiling
needs a C++ compiler (CPU) or Triton (GPU): where it is missing or fails, the same Python function runs eagerly and
one warning says so. Shapes vary from batch to batch (``dynamic=True``: one compilation serves them all); a new
dtype, device or thread count compiles once more (about a second, then cached on disk by PyTorch).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable

import torch


class MaybeCompiled:
    """``fn`` compiled on first use; if compiling or running the compiled code fails, ``fn`` itself from then on."""

    def __init__(self, fn: Callable) -> None:
        self.fn = fn
        self.compiled: Callable | None = None
        self.failed = False

    def __call__(self, *args):
        if self.failed:
            return self.fn(*args)
        if self.compiled is None:
            self.compiled = torch.compile(self.fn, dynamic=True)
        try:
            return self.compiled(*args)
        except Exception as err:  # noqa: BLE001 - no compiler, an unsupported platform: the eager function is exact
            self.failed = True
            first_line = next(iter(str(err).strip().splitlines()), "")[:200]
            warnings.warn(f"torch.compile failed for {self.fn.__name__} ({type(err).__name__}: {first_line}); running "
                          "it uncompiled (slower, the same results)", RuntimeWarning, stacklevel=2)
            return self.fn(*args)
