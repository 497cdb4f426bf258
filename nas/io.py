"""Atomic file writes: a temporary file in the target folder, flushed and fsynced, then renamed.

A reader never sees a half-written artifact: either the old file or the new one. Every artifact of a run
(configs, metrics snapshots, fronts, tables) goes through these helpers.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically (parent folders are created); returns the path."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, target)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    return target


def atomic_write_text(path: str | os.PathLike[str], text: str, encoding: str = "utf-8") -> Path:
    """Write ``text`` to ``path`` atomically."""
    return atomic_write_bytes(path, text.encode(encoding))


def atomic_write_json(path: str | os.PathLike[str], value: Any, indent: int | None = 2) -> Path:
    """Write ``value`` as JSON (sorted keys, trailing newline) to ``path`` atomically."""
    return atomic_write_text(path, json.dumps(value, indent=indent, sort_keys=True) + "\n")
