"""The one way the project draws a progress bar.

Training (``supernets``), latency measurement (``latency_predictors``) and the search share it, for the same
reason ``_ray`` and ``_files`` live here. A bar is drawn only when asked for *and* standard error is a
terminal: in a log file or a pipe, tqdm's carriage-return redraws pile up into one unreadable line, and the
per-stage and per-epoch summary lines already say what happened. tqdm is imported only when a bar is made.
"""

from __future__ import annotations

from typing import Any

__all__ = ["progress_bar"]


def progress_bar(enabled: bool, **kwargs: Any) -> Any:
    """A ``tqdm`` bar with ``kwargs`` (total, desc, unit, ...), drawn when ``enabled`` and stderr is a terminal
    (``disable=None`` is tqdm's "off when not a terminal")."""
    from tqdm import tqdm

    return tqdm(disable=None if enabled else True, **kwargs)
