"""The installed cgcnn-lab version, read from the package metadata (pyproject.toml's, the one source): every
floor that records it (the top-level package, model cards) reads it here."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("cgcnn-lab")
except PackageNotFoundError:  # run from a source tree that was never installed
    __version__ = "unknown"
