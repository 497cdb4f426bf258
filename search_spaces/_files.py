"""One error for a damaged file of ours, shared by every package that reads one.

Lookup tables, predictors, device records, front stores and checkpoints are all written by the project;
a reader that finds one truncated, malformed or unreadable raises ``DamagedFileError`` naming the file
and what to do, and ``nas/cli.py`` turns it into one line (exit status 2). It lives here because
``search_spaces`` is the one package every other may import (imports go downward only).
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
from collections.abc import Iterator
from pathlib import Path

__all__ = ["READ_ERRORS", "DamagedFileError", "keep_copy", "reading", "short_text"]

# What parsing a damaged file raises: OSError (unreadable), ValueError (bad JSON, bad text, a value out of
# range: ``json.JSONDecodeError`` and ``UnicodeDecodeError`` are ValueErrors), KeyError / IndexError (a
# missing field), TypeError / AttributeError (a field of the wrong kind).
READ_ERRORS: tuple[type[BaseException], ...] = (OSError, ValueError, KeyError, IndexError, TypeError,
                                                 AttributeError)


class DamagedFileError(ValueError):
    """A file the project wrote that cannot be read back; the message names it and what to do."""

    def __init__(self, path: str | os.PathLike[str], what: str, reason: str, remedy: str) -> None:
        self.path = os.fspath(path)
        super().__init__(f"{what} {self.path} is damaged or unreadable ({reason}); {remedy}")


def keep_copy(path: str | os.PathLike[str], suffix: str) -> Path:
    """Copy ``path`` to ``PATH.<suffix>`` (``.<suffix>.1``, ``.2``... when that exists) before a damaged file of
    ours is mended, so nothing it held is lost; returns the copy's path. ``OSError`` when it cannot be made."""
    backup = Path(f"{os.fspath(path)}.{suffix}")
    number = 0
    while backup.exists():
        number += 1
        backup = Path(f"{os.fspath(path)}.{suffix}.{number}")
    shutil.copy2(path, backup)
    return backup


REASON_CHARS = 160
"""The longest reason a one-line error quotes from another library's message (``short_text``)."""


def short_text(text: str, limit: int = REASON_CHARS, first_sentence: bool = False) -> str:
    """The first paragraph of ``text`` on one line (terminal colour codes dropped; with ``first_sentence``, only
    its first sentence), cut at a word boundary with an ellipsis when longer than ``limit``: how a one-line
    error quotes a library's reason, which may run to paragraphs (torch.load's) or hold one huge token."""
    text = re.sub(r"\x1b\[[0-9;]*m", "", text).strip()
    text = " ".join(re.split(r"\n\s*\n", text, maxsplit=1)[0].split())
    if first_sentence:
        text = re.split(r"(?<=[.!?])\s", text, maxsplit=1)[0]
    if len(text) <= limit:
        return text
    cut = text[:limit].rsplit(" ", 1)[0].rstrip(" ,;:") if " " in text[:limit] else text[:limit]
    return f"{cut}..."


def _reason(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    if isinstance(exc, KeyError | IndexError):
        text = f"missing {text}" if text else "a missing field"
    return f"{type(exc).__name__}: {short_text(text)}" if text else type(exc).__name__


@contextlib.contextmanager
def reading(path: str | os.PathLike[str], what: str, remedy: str,
            errors: tuple[type[BaseException], ...] = READ_ERRORS) -> Iterator[None]:
    """Run the body that reads and parses ``path``; any of ``errors`` becomes ``DamagedFileError``.

    Args:
        path: the file being read.
        what: what it is, for the message (``"lookup table"``).
        remedy: what the user should do (``"run 'nas latency build' again to remeasure it"``).
        errors: the exception types that mean the file is damaged (add e.g. ``sqlite3.DatabaseError``).
    """
    try:
        yield
    except DamagedFileError:
        raise
    except errors as exc:
        raise DamagedFileError(path, what, _reason(exc), remedy) from exc
