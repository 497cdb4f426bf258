"""Accuracy of latency predictions against measurements, and the report files of ``nas latency eval``."""

from __future__ import annotations

import csv
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np


def _ranks(x: np.ndarray) -> np.ndarray:
    order = np.argsort(x, kind="mergesort")
    ranks = np.empty(len(x))
    ranks[order] = np.arange(len(x), dtype=float)
    # Average the ranks of ties.
    values, inverse = np.unique(x, return_inverse=True)
    if len(values) != len(x):
        sums = np.bincount(inverse, weights=ranks)
        counts = np.bincount(inverse)
        ranks = (sums / counts)[inverse]
    return ranks


def spearman(a: Sequence[float], b: Sequence[float]) -> float:
    ra, rb = _ranks(np.asarray(a, float)), _ranks(np.asarray(b, float))
    if ra.std() == 0 or rb.std() == 0:
        return float("nan")
    return float(np.corrcoef(ra, rb)[0, 1])


def kendall(a: Sequence[float], b: Sequence[float]) -> float:
    """Kendall's tau-b."""
    x, y = np.asarray(a, float), np.asarray(b, float)
    dx = np.sign(x[:, None] - x[None, :])
    dy = np.sign(y[:, None] - y[None, :])
    upper = np.triu(np.ones_like(dx, dtype=bool), k=1)
    concordant = float((dx * dy)[upper].sum())
    nx, ny = float((dx != 0)[upper].sum()), float((dy != 0)[upper].sum())
    return concordant / np.sqrt(nx * ny) if nx and ny else float("nan")


def accuracy(predicted_ms: Sequence[float], measured_ms: Sequence[float]) -> dict[str, float]:
    """MAPE (%), RMSE (ms), share within +-5% and +-10%, Spearman and Kendall rank correlation."""
    p, m = np.asarray(predicted_ms, float), np.asarray(measured_ms, float)
    rel = np.abs(p - m) / m
    return {"mape_pct": float(100 * rel.mean()), "rmse_ms": float(np.sqrt(np.mean((p - m) ** 2))),
            "within_5pct": float((rel <= 0.05).mean()), "within_10pct": float((rel <= 0.10).mean()),
            "spearman": spearman(p, m), "kendall": kendall(p, m), "n": int(len(m))}


def write_csv(path: str | os.PathLike[str], rows: Sequence[Mapping[str, Any]]) -> None:
    from .devices import atomic_write_text

    if not rows:
        return
    import io

    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(path, buffer.getvalue())


def scatter_plot(path: str | os.PathLike[str], measured_ms: Sequence[float],
                 predictions: Mapping[str, Sequence[float]], title: str) -> None:
    """Predicted-vs-measured scatter, one colour per predictor, with the +-10% band."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    m = np.asarray(measured_ms, float)
    fig, ax = plt.subplots(figsize=(5.5, 5))
    for name, p in predictions.items():
        ax.scatter(m, p, s=10, alpha=0.7, label=name)
    values = np.concatenate([m, *[np.asarray(p, float) for p in predictions.values()]])
    lo, hi = float(values.min()) * 0.95, float(values.max()) * 1.05
    line = np.array([lo, hi])
    ax.plot(line, line, "k-", lw=0.8)
    ax.plot(line, line * 1.1, "k--", lw=0.5)
    ax.plot(line, line * 0.9, "k--", lw=0.5)
    ax.set_xlim(lo, hi)
    ax.set_ylim(lo, hi)
    ax.set_xlabel("measured latency (ms)")
    ax.set_ylabel("predicted latency (ms)")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7)
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(path).with_name(f".{Path(path).name}.tmp.png")
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    os.replace(tmp, path)
