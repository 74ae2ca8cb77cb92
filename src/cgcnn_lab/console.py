"""Where output goes: a terminal or notebook gets live progress bars, a log file or pipe plain lines."""

from __future__ import annotations

import sys


def interactive() -> bool:
    """True when a person watches the output: a terminal, or a Jupyter kernel (whose streams are no TTY).

    A redirected log gets plain lines instead of progress bars (tqdm's redraws made the demo's log 150 KB)."""
    if _in_jupyter_kernel():
        return True
    stream = sys.stderr
    return bool(getattr(stream, "isatty", None) and stream.isatty())


def _in_jupyter_kernel() -> bool:
    """Running inside a Jupyter kernel, not merely in a process that imported ipykernel (a notebook grader or
    test suite does): the kernel's shell is a ZMQInteractiveShell."""
    if "ipykernel" not in sys.modules or "IPython" not in sys.modules:
        return False
    shell = sys.modules["IPython"].get_ipython()
    return any(c.__name__ == "ZMQInteractiveShell" for c in type(shell).__mro__)  # Colab's shell subclasses it
