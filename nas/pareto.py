"""Pareto math for (accuracy, latency) points: accuracy is maximised, latency minimised. Plain numpy."""

from __future__ import annotations

import numpy as np

__all__ = ["hypervolume_2d", "hypervolume_curve", "knee_point", "non_dominated_mask", "pareto_indices",
           "reference_point"]


def _as_points(accuracy, latency_ms) -> tuple[np.ndarray, np.ndarray]:
    acc = np.asarray(accuracy, dtype=np.float64).ravel()
    lat = np.asarray(latency_ms, dtype=np.float64).ravel()
    if acc.shape != lat.shape:
        raise ValueError(f"accuracy has {acc.size} values, latency {lat.size}")
    return acc, lat


def non_dominated_mask(accuracy, latency_ms) -> np.ndarray:
    """True for each point no other point dominates (at least as accurate and as fast, better in one).

    Exact duplicates of a non-dominated point are all kept (neither dominates the other).
    """
    acc, lat = _as_points(accuracy, latency_ms)
    mask = np.zeros(acc.size, dtype=bool)
    if acc.size == 0:
        return mask
    # Sort by latency ascending, accuracy descending; a point is non-dominated when it is strictly more
    # accurate than every faster point (or ties the best of its own latency).
    order = np.lexsort((-acc, lat))
    best_acc = -np.inf
    i = 0
    while i < order.size:
        j = i
        while j < order.size and lat[order[j]] == lat[order[i]]:
            j += 1
        group = order[i:j]
        top = acc[group[0]]
        if top > best_acc:
            mask[group[acc[group] == top]] = True
            best_acc = top
        i = j
    return mask


def pareto_indices(accuracy, latency_ms) -> np.ndarray:
    """Indices of the non-dominated points, sorted by latency ascending."""
    acc, lat = _as_points(accuracy, latency_ms)
    idx = np.flatnonzero(non_dominated_mask(acc, lat))
    return idx[np.argsort(lat[idx], kind="stable")]


def hypervolume_2d(accuracy, latency_ms, ref_accuracy: float, ref_latency_ms: float) -> float:
    """Area dominated by the points and bounded by the reference point (worst accuracy, worst latency).

    Points not strictly better than the reference in both objectives add nothing.
    """
    acc, lat = _as_points(accuracy, latency_ms)
    keep = (acc > ref_accuracy) & (lat < ref_latency_ms)
    acc, lat = acc[keep], lat[keep]
    if acc.size == 0:
        return 0.0
    idx = pareto_indices(acc, lat)
    acc, lat = acc[idx], lat[idx]  # latency ascending, accuracy ascending
    # Each front point i owns the slab between its latency and the next point's latency.
    right = np.append(lat[1:], ref_latency_ms)
    return float(np.sum((right - lat) * (acc - ref_accuracy)))


def hypervolume_curve(accuracy, latency_ms, ref_accuracy: float, ref_latency_ms: float,
                      points: np.ndarray | None = None) -> np.ndarray:
    """Hypervolume of the first ``n`` points for every ``n`` in ``points`` (default 1..N)."""
    acc, lat = _as_points(accuracy, latency_ms)
    ns = np.arange(1, acc.size + 1) if points is None else np.asarray(points, dtype=int)
    return np.array([hypervolume_2d(acc[:n], lat[:n], ref_accuracy, ref_latency_ms) for n in ns])


def reference_point(accuracy, latency_ms, margin: float = 0.05) -> tuple[float, float]:
    """A reference point a little worse than the worst observed accuracy and latency."""
    acc, lat = _as_points(accuracy, latency_ms)
    acc_span = float(acc.max() - acc.min()) or 1.0
    lat_span = float(lat.max() - lat.min()) or 1.0
    return float(acc.min() - margin * acc_span), float(lat.max() + margin * lat_span)


def knee_point(accuracy, latency_ms) -> int:
    """Index of the front member farthest from the line joining the front's extremes (normalised axes).

    With fewer than three front members, the most accurate one is returned.
    """
    acc, lat = _as_points(accuracy, latency_ms)
    if acc.size == 0:
        raise ValueError("knee_point of an empty set")
    idx = pareto_indices(acc, lat)
    if idx.size < 3:
        return int(idx[np.argmax(acc[idx])])
    a, t = acc[idx], lat[idx]
    a_n = (a - a.min()) / ((a.max() - a.min()) or 1.0)
    t_n = (t - t.min()) / ((t.max() - t.min()) or 1.0)
    # Line from the fastest (0, a_n[0]) to the most accurate (1, a_n[-1]); distance of each point above it.
    p0 = np.array([t_n[0], a_n[0]])
    p1 = np.array([t_n[-1], a_n[-1]])
    d = p1 - p0
    norm = float(np.hypot(*d)) or 1.0
    dist = (d[0] * (a_n - p0[1]) - d[1] * (t_n - p0[0])) / norm
    return int(idx[int(np.argmax(dist))])
