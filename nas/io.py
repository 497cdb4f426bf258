"""Atomic file writes: a temporary file in the target folder, flushed and fsynced, then renamed.

A reader never sees a half-written artifact: either the old file or the new one. Every artifact of a run
(configs, metrics snapshots, fronts, tables) goes through these helpers.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from latency_predictors.devices import write_atomically

from .errors import UsageError


def _cannot_write(target: Path, exc: OSError | ValueError) -> UsageError:
    reason = (exc.strerror if isinstance(exc, OSError) else None) or str(exc) or type(exc).__name__
    try:
        if target.is_dir():
            reason = "it is a folder"
    except (OSError, ValueError):
        pass
    return UsageError(f"cannot write {str(target)!r} ({reason}); give a file path in a folder you can write to")


def check_writable(path: str | os.PathLike[str]) -> Path:
    """Fail fast, before expensive work, when ``path`` cannot be written: ``UsageError`` naming it."""
    target = Path(path)
    try:
        if "\0" in str(target):
            raise ValueError("a NUL character in the name")
        if target.is_dir():
            raise IsADirectoryError(21, "it is a folder")
        folder = target.parent
        while not folder.exists() and folder != folder.parent:
            folder = folder.parent
        if not folder.is_dir() or not os.access(folder, os.W_OK | os.X_OK):
            raise PermissionError(13, f"{folder} is not a writable folder")
    except (OSError, ValueError) as exc:  # also a name too long to look up, or a NUL in it
        raise _cannot_write(target, exc) from exc
    return target


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically (parent folders are created; ``write_atomically``); returns the path.

    A path that cannot be written (no permission, a folder in the way, a name too long, a full disk) is a
    ``UsageError`` naming it.
    """
    return write_atomically(path, data, _cannot_write)


def atomic_write_text(path: str | os.PathLike[str], text: str, encoding: str = "utf-8") -> Path:
    """Write ``text`` to ``path`` atomically."""
    return atomic_write_bytes(path, text.encode(encoding))


def atomic_write_json(path: str | os.PathLike[str], value: Any, indent: int | None = 2) -> Path:
    """Write ``value`` as JSON (sorted keys, trailing newline) to ``path`` atomically."""
    return atomic_write_text(path, json.dumps(value, indent=indent, sort_keys=True) + "\n")
