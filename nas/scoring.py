"""Cheap objectives on whole batches of genomes (``search_spaces._genome``): no arch objects, one call each.

``genome_scorer(space, objective)`` turns a search objective into ``genomes -> values`` that equals the
objective's own ``predict`` on the genomes' archs (tests/search/test_scoring.py):

- hwnas's accuracy MLP (``nas.accuracy.AccuracyPredictor``, clipped to [0, 1] as its ``predict``) and
  Once-for-All's imported predictor (``nas.ofa_zoo.OFAAccuracyPredictor``, refusing uncovered resolutions):
  the batch one-hot encoded as one array (``encode_genomes``), the MLP applied once;
- a lookup table's sum (``latency_predictors.CompiledTable``, and ``TableSumPredictor`` /
  ``TableLinearPredictor`` through their table): a gather and a row sum;
- anything with ``predict_genomes`` for the same space;
- any other objective (direct evaluation, learned predictors): the genomes' archs through its batch function.

Objectives wrapped by ``nas.study.as_batch_fn`` are recognised through the wrapper's ``objective``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import numpy as np

from search_spaces import SearchSpace
from search_spaces._encoding import encode_genomes
from search_spaces._genome import archs_of

__all__ = ["GenomeFn", "genome_scorer", "precision_latency_scorer", "remap_genomes"]

GenomeFn = Callable[[np.ndarray], np.ndarray]


def remap_genomes(source: SearchSpace, target: SearchSpace) -> Callable[[np.ndarray], np.ndarray] | None:
    """``source`` genomes as ``target`` genomes, when the two spaces differ only in resolutions and ``target``
    has every resolution of ``source`` (e.g. a space restricted to some resolutions); else None."""
    if source == target:
        return lambda g: g
    if dataclasses.replace(source, resolutions=target.resolutions) != target or \
            any(r not in target.resolutions for r in source.resolutions):
        return None
    table = np.asarray([target.resolutions.index(r) for r in source.resolutions], dtype=np.int64)

    def remap(g: np.ndarray) -> np.ndarray:
        out = np.array(g, dtype=np.int64, copy=True)
        out[:, 0] = table[out[:, 0]]
        return out

    return remap


def _mlp_scorer(space: SearchSpace, mlp: Any, clip: bool) -> GenomeFn | None:
    remap = remap_genomes(space, mlp.space)
    if remap is None:
        return None

    def score(genomes: np.ndarray) -> np.ndarray:
        x = encode_genomes(mlp.space, remap(np.asarray(genomes, dtype=np.int64)), dtype=np.float64)
        y = np.asarray(mlp.predict_encoded(x), dtype=np.float64)
        return np.clip(y, 0.0, 1.0) if clip else y

    return score


def _table_scorer(space: SearchSpace, table: Any, scale: float = 1.0, offset: float = 0.0) -> GenomeFn | None:
    from latency_predictors.lut import CompiledTable

    compiled = CompiledTable(table, space)
    if scale == 1.0 and offset == 0.0:
        return compiled.predict_genomes
    return lambda g: scale * compiled.predict_genomes(g) + offset


def _fast_scorer(space: SearchSpace, objective: Any) -> GenomeFn | None:
    from latency_predictors.lut import CompiledTable

    from .accuracy import AccuracyPredictor
    from .ofa_zoo import OFAAccuracyPredictor

    if isinstance(objective, AccuracyPredictor) and objective.weights:
        return _mlp_scorer(space, objective, clip=True)
    if isinstance(objective, OFAAccuracyPredictor):
        inner = _mlp_scorer(space, objective.mlp, clip=False)
        if inner is None:
            return None
        covered = np.asarray([r in objective.resolutions for r in space.resolutions])

        def ofa(genomes: np.ndarray) -> np.ndarray:
            g = np.asarray(genomes, dtype=np.int64)
            outside = np.flatnonzero(~covered[g[:, 0]])
            if outside.size:
                objective.check(archs_of(space, g[outside[:1]]))  # raises, naming the resolution
            return inner(g)

        return ofa
    if isinstance(objective, CompiledTable):
        return objective.predict_genomes if objective.space == space else _table_scorer(space, objective.table)
    if callable(getattr(objective, "predict_genomes", None)) and getattr(objective, "space", None) == space:
        return objective.predict_genomes
    kind, table = getattr(objective, "kind", None), getattr(objective, "table", None)
    if table is not None and getattr(objective, "space", None) is not None and \
            getattr(objective.space, "name", None) == space.name:
        if kind == "table":
            return _table_scorer(space, table)
        if kind == "table_linear":
            return _table_scorer(space, table, float(objective.scale), float(objective.offset))
    return None


def genome_scorer(space: SearchSpace, objective: Any, method: str = "predict") -> tuple[GenomeFn, bool]:
    """``(score, vectorised)``: ``score(genomes)`` -> float64 values of ``objective`` on ``space``'s genomes,
    and whether it runs without making archs (False: through ``objective``'s batch function)."""
    raw = getattr(objective, "objective", objective)  # nas.study.as_batch_fn keeps what it wraps
    fast = _fast_scorer(space, raw)
    if fast is not None:
        return fast, True
    fn = objective if callable(objective) and getattr(objective, "objective", None) is not None else \
        getattr(raw, method, None) or getattr(raw, "evaluate", None) or raw

    def slow(genomes: np.ndarray) -> np.ndarray:
        archs = archs_of(space, np.asarray(genomes, dtype=np.int64))
        return np.asarray(fn(archs), dtype=np.float64).ravel() if archs else np.zeros(0)

    return slow, False


def precision_latency_scorer(space: SearchSpace, objective: Any, precision: str) -> GenomeFn | None:
    """``genomes -> ms`` of ``space``'s subnets with every layer at ``precision`` (e.g. ``int8``), from a device's
    ``table`` or ``table_linear`` predictor whose table holds that precision's entries (its correction applied to
    the precision's sum, as ``predict_mixed`` does); None for any other objective (it cannot be vectorised)."""
    from latency_predictors.lut import CompiledTable

    raw = getattr(objective, "objective", objective)
    kind, table = getattr(raw, "kind", None), getattr(raw, "table", None)
    if kind not in ("table", "table_linear") or table is None or precision not in table.precisions or \
            getattr(getattr(raw, "space", None), "name", None) != space.name:
        return None
    compiled = CompiledTable(table, space, precision)
    if kind == "table":
        return compiled.predict_genomes
    scale, offset = float(raw.scale), float(raw.offset)
    return lambda g: scale * compiled.predict_genomes(g) + offset
