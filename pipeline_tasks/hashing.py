"""The sha256 of a file's bytes, the one helper for it (standard library only: the CLI, the
registry and the checkpoints all key things by it)."""

from __future__ import annotations

import hashlib
from pathlib import Path


def file_sha256(path: str | Path) -> str:
    """64 hex digits of sha256 over ``path``'s bytes, read in chunks (``hashlib.file_digest``)."""
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()
