"""Which version of an installed library is here, read from its package metadata.

The one place a version is looked up: the snapshot's record of the machine, the ONNX cache's keys and
the prompts sentence-transformers adds at load all ask here. Reading the metadata, rather than a
module's ``__version__``, never imports the library (importing sentence-transformers imports torch)."""

from __future__ import annotations

import importlib.metadata


def library_version(name: str) -> str | None:
    """An installed distribution's version, or None when it is not installed."""
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def major_version(name: str) -> int | None:
    """The first number of an installed distribution's version; None when it is absent or not a number."""
    version = library_version(name)
    if version is None:
        return None
    try:
        return int(version.split(".", 1)[0])
    except ValueError:
        return None
