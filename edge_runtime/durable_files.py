"""Writing files so that a power cut leaves the old content or the new, never half of either."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path


def write_atomically(path: Path, data: bytes) -> None:
    """Replace `path` atomically and durably: write a temporary file beside it, sync it, rename it over.

    The temporary name ends in `.tmp`, so a reader listing `*.json` or `*.png` never picks up one a power cut
    left behind, and a start-up sweep of `*.tmp` removes it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    descriptor, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(descriptor, "wb") as out:
            out.write(data)
            out.flush()
            os.fsync(out.fileno())
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    sync_directory(path.parent)


def write_new_durably(path: Path, data: bytes) -> None:
    """Create `path`, which must not exist yet, and sync it to disk before returning."""
    with path.open("xb") as out:
        out.write(data)
        out.flush()
        os.fsync(out.fileno())


def sync_directory(path: Path) -> None:
    """Persist a rename across power loss; directories cannot be opened for syncing on Windows."""
    if os.name != "posix":
        return
    descriptor = os.open(path, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)
