"""Sharing the CPU between cgcnn-lab trainings: each uses its share of the cores, not all of them.

PyTorch's CPU kernels run on OpenMP threads, and GNU OpenMP lets a thread that has finished its part spin before
it sleeps. Alone, that spinning is what makes two threads fast; with more busy threads than cores, every process
burns the cores its neighbours need, and three trainings on two cores took 14x as long as one
(bench/shared_cores.py, BENCHMARKS.md). Sleeping at once (``OMP_WAIT_POLICY=PASSIVE``) cures that but makes a
lone run ~1.6x slower. So instead each training registers itself while it runs, and at every epoch uses the
cores it may run on divided by the trainings running (one thread each when there are more trainings than cores:
a single thread never spins). ``--threads N`` fixes the number instead.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path


def available_cores() -> int:
    """The cores this process may run on (its CPU affinity: a container's or taskset's limit, not the machine's)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        return os.cpu_count() or 1


def set_threads(threads: int) -> int:
    """Use ``threads`` CPU threads for PyTorch's kernels (0: leave the number as it is); returns the number."""
    import torch

    if threads and torch.get_num_threads() != threads:
        torch.set_num_threads(threads)
    return torch.get_num_threads()


class CoreShare:
    """While inside ``with CoreShare():``, this process counts as a running training; :meth:`threads` is its
    share of the cores. The register is a folder of pid files (per user, in the temporary folder); files of
    processes that died without cleaning up are ignored and removed."""

    def __init__(self, folder: Path | None = None) -> None:
        self.folder = folder or Path(tempfile.gettempdir()) / f"cgcnn-lab-{_user()}" / "training"
        self.mine = self.folder / str(os.getpid())

    def __enter__(self):
        self.folder.mkdir(parents=True, exist_ok=True)
        self.mine.touch()
        return self

    def __exit__(self, *exc) -> None:
        self.mine.unlink(missing_ok=True)

    def running(self) -> int:
        """Trainings registered and alive (this one included)."""
        alive = 0
        for path in self.folder.iterdir():
            if not path.name.isdigit():
                continue
            if _alive(int(path.name)):
                alive += 1
            else:
                path.unlink(missing_ok=True)
        return max(alive, 1)

    def threads(self) -> int:
        return max(1, available_cores() // self.running())


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process with that pid: alive
        return True
    return True


def _user() -> str:
    getuid = getattr(os, "getuid", None)
    return str(getuid()) if getuid else os.environ.get("USERNAME", "user")
