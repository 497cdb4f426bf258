"""Accuracy of latency predictions against measurements, and the report files of ``nas latency eval``."""

from __future__ import annotations

import csv
import io
import os
from collections.abc import Callable, Mapping, Sequence
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
    """Kendall's tau-b (scipy's O(n log n) algorithm: no n x n matrix)."""
    from scipy.stats import kendalltau

    x, y = np.asarray(a, float), np.asarray(b, float)
    if len(x) < 2 or np.ptp(x) == 0 or np.ptp(y) == 0:
        return float("nan")
    return float(kendalltau(x, y).statistic)


def accuracy(predicted_ms: Sequence[float], measured_ms: Sequence[float]) -> dict[str, float]:
    """MAPE (%), RMSE (ms), share within +-5% and +-10%, Spearman and Kendall rank correlation."""
    p, m = np.asarray(predicted_ms, float), np.asarray(measured_ms, float)
    rel = np.abs(p - m) / m
    return {"mape_pct": float(100 * rel.mean()), "rmse_ms": float(np.sqrt(np.mean((p - m) ** 2))),
            "within_5pct": float((rel <= 0.05).mean()), "within_10pct": float((rel <= 0.10).mean()),
            "spearman": spearman(p, m), "kendall": kendall(p, m), "n": int(len(m))}


CURVE_METRICS = ("spearman", "kendall", "within_5pct", "within_10pct", "mape_pct")


def accuracy_curve(make: Callable[[], Any], archs: Sequence[Any], measured_ms: Sequence[float],
                   sizes: Sequence[int], *, draws: int = 5, seed: int = 0, min_test: int = 5
                   ) -> list[dict[str, float]]:
    """Accuracy against the number of training samples, cross-validated on what is measured.

    For each size ``m`` (skipped where fewer than ``min_test`` subnets would be left to test on): ``draws``
    seeded random splits into ``m`` training subnets and the rest; ``make()`` gives an unfitted predictor
    (``fit`` / ``predict``), fitted on the training part and judged on the rest. Returns one row per size:
    ``samples``, ``draws``, ``test`` (subnets tested per draw) and the mean over draws of ``CURVE_METRICS``.
    """
    y = np.asarray(measured_ms, float)
    archs = list(archs)
    rng = np.random.default_rng(seed)
    rows = []
    for m in sizes:
        if m < 1 or m + min_test > len(y):
            continue
        results = []
        for _ in range(draws):
            order = rng.permutation(len(y))
            train, test = order[:m], order[m:]
            predictor = make().fit([archs[i] for i in train], y[train])
            results.append(accuracy(predictor.predict([archs[i] for i in test]), y[test]))
        row: dict[str, float] = {"samples": int(m), "draws": int(draws), "test": int(len(y) - m)}
        for key in CURVE_METRICS:
            values = np.array([r[key] for r in results], float)
            row[key] = float(np.nanmean(values)) if np.isfinite(values).any() else float("nan")
        rows.append(row)
    return rows


def learning_curve(make: Callable[[], Any], archs: Sequence[Any], measured_ms: Sequence[float], *,
                   folds: int = 5, fractions: Sequence[float] = (0.25, 0.5, 0.75, 1.0), seed: int = 0,
                   min_train: int = 3) -> dict[str, Any]:
    """How the cross-validated error falls with the samples, and what measuring more is predicted to gain.

    ``folds``-fold cross-validation, each training fold cut to ``fractions`` of itself; the held-out MAPE at each
    training size is fitted by a power law ``MAPE = c * m^slope`` (least squares in log-log), which predicts the
    MAPE from all ``n`` samples and from ``2 n``. ``gain_pct`` is the predicted fall in MAPE (points) from
    doubling the samples (0 when the curve does not fall). Fewer than ``min_train + 1`` samples: no curve.
    """
    y = np.asarray(measured_ms, float)
    archs = list(archs)
    n = len(y)
    out: dict[str, Any] = {"samples": n, "points": [], "slope": None, "mape_pct_at_n": None,
                           "mape_pct_at_2n": None, "gain_pct": None}
    if n < min_train + 1:
        return out
    rng = np.random.default_rng(seed)
    k = min(folds, n)
    fold = rng.permutation(n) % k
    points = []
    for f in sorted(set(fractions)):
        errors, sizes = [], []
        for i in range(k):
            train = np.flatnonzero(fold != i)
            test = np.flatnonzero(fold == i)
            m = max(min_train, min(len(train), int(round(f * len(train)))))
            train = rng.permutation(train)[:m]
            predictor = make().fit([archs[j] for j in train], y[train])
            p = predictor.predict([archs[j] for j in test])
            errors.extend(np.abs(p - y[test]) / y[test])
            sizes.append(m)
        points.append({"samples": float(np.mean(sizes)), "mape_pct": float(100 * np.mean(errors))})
    # Keep one point per distinct size (small n rounds several fractions to the same size).
    unique = {round(p["samples"], 6): p for p in points}
    points = [unique[key] for key in sorted(unique)]
    out["points"] = points
    if len(points) >= 2:
        lx = np.log([p["samples"] for p in points])
        ly = np.log([max(p["mape_pct"], 1e-9) for p in points])
        slope, intercept = np.polyfit(lx, ly, 1)
        at_n = float(np.exp(intercept + slope * np.log(n)))
        at_2n = float(np.exp(intercept + slope * np.log(2 * n)))
        out.update(slope=float(slope), mape_pct_at_n=at_n, mape_pct_at_2n=min(at_2n, at_n),
                   gain_pct=max(0.0, at_n - at_2n))
    return out


def write_csv(path: str | os.PathLike[str], rows: Sequence[Mapping[str, Any]]) -> None:
    from .devices import atomic_write_text

    if not rows:
        return
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(path, buffer.getvalue())


def scatter_plot(path: str | os.PathLike[str], measured_ms: Sequence[float],
                 predictions: Mapping[str, Sequence[float]], title: str) -> None:
    """Predicted-vs-measured scatter, one colour per predictor, with the +-10% band."""
    import matplotlib

    from .devices import atomic_write_bytes

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
    # Rendered in memory, then written atomically under a unique temporary name: two evaluations of one space
    # on one device never write the same temporary file, and a failure leaves none behind.
    buffer = io.BytesIO()
    try:
        fig.savefig(buffer, format="png", dpi=110)
    finally:
        plt.close(fig)
    atomic_write_bytes(path, buffer.getvalue())
