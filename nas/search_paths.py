"""Where the search keeps its artifacts in a run folder, and the lock that lets one process search a run.

One search per run at a time: ``search_lock`` (an ``fcntl.flock`` on ``search/search.lock``, released by the
OS when its holder dies) makes a second ``nas search`` on the same run refuse at once, naming the holder.
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NamedTuple

from .errors import BusyError, UsageError

__all__ = ["FRONTS_NAME", "JOURNAL_NAME", "SearchPaths", "run_path", "search_lock", "search_paths"]


JOURNAL_NAME = "study.journal"


FRONTS_NAME = "fronts.sqlite"


class SearchPaths(NamedTuple):
    """Where the search stages keep their artifacts inside a run folder (``RunDir``'s sub-folders)."""

    journal: Path  # RUN/search/study.journal: the Optuna study (default storage)
    accuracy_cache: Path  # RUN/search/accuracy.jsonl: direct accuracies by arch id and split
    accuracy_predictor: Path  # RUN/search/accuracy_predictor.json (+ _report.json)
    fronts: Path  # RUN/fronts/fronts.sqlite: the front store
    hil: Path  # RUN/fronts/hil.json: predicted against measured latency of front members
    plot: Path  # RUN/plots/fronts.png
    lock: Path  # RUN/search/search.lock: held by the process searching this run (``search_lock``)


def run_path(run_dir: Any) -> Path:
    """The folder of a run, from a path or a ``RunDir``-like object (``.root`` or ``.path``)."""
    if isinstance(run_dir, (str, os.PathLike)):
        return Path(run_dir)
    for name in ("root", "path"):
        value = getattr(run_dir, name, None)
        if isinstance(value, (str, os.PathLike)):
            return Path(value)
    return Path(run_dir)


def search_paths(run_dir: Any) -> SearchPaths:
    """The search artifacts' paths of the run folder ``run_dir`` (a path or a ``RunDir``)."""
    root = run_path(run_dir)
    return SearchPaths(journal=root / "search" / JOURNAL_NAME, accuracy_cache=root / "search" / "accuracy.jsonl",
                       accuracy_predictor=root / "search" / "accuracy_predictor.json",
                       fronts=root / "fronts" / FRONTS_NAME, hil=root / "fronts" / "hil.json",
                       plot=root / "plots" / "fronts.png", lock=root / "search" / "search.lock")


_held_lock = threading.Lock()


_held: dict[Path, list[Any]] = {}  # lock path -> [FileLock, depth], locks this process holds


@contextlib.contextmanager
def search_lock(run_dir: Any) -> Iterator[None]:
    """Hold the run's search lock: one process searches (or rewrites the fronts of) a run at a time.

    Re-entrant within a process (the command takes it before fitting the accuracy predictor, ``run_search``
    inside). The lock is an ``fcntl.flock`` (``supernets.training.FileLock``), so a killed holder never
    blocks the next search.

    Raises:
        BusyError: another process holds it; the message names it (pid and host).
        UsageError: the lock file cannot be made or opened (a folder in its place, a read-only run folder).
    """
    from supernets.training import FileLock, LockBusyError

    path = search_paths(run_dir).lock.absolute()
    with _held_lock:
        entry = _held.get(path)
        if entry is None:
            try:
                lock = FileLock(path, f"the search of run {str(run_path(run_dir))!r}").acquire()
            except LockBusyError as exc:
                raise BusyError(str(exc)) from None
            except OSError as exc:  # a folder (or a file where a folder should be) there, a read-only run
                raise UsageError(f"the search lock {path} of run {str(run_path(run_dir))!r} cannot be taken "
                                 f"({exc.strerror or type(exc).__name__}: {exc.filename}); it must be a file this "
                                 f"user can write, in a folder (move away what is there)") from None
            entry = _held[path] = [lock, 0]
        entry[1] += 1
    try:
        yield
    finally:
        with _held_lock:
            entry[1] -= 1
            if entry[1] == 0:
                del _held[path]
                entry[0].release()
