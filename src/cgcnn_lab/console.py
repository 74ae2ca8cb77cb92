"""Where output goes: a terminal or notebook gets live progress bars, a log file or pipe plain lines."""

from __future__ import annotations

import sys


def interactive() -> bool:
    """True when a person watches the output: a terminal, or a Jupyter kernel (whose streams are no TTY).

    A redirected log gets plain lines instead of progress bars (tqdm's redraws made the demo's log 150 KB)."""
    if "ipykernel" in sys.modules:
        return True
    stream = sys.stderr
    return bool(getattr(stream, "isatty", None) and stream.isatty())
