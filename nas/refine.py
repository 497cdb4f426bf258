"""Best subnet per latency budget: a refinement of the front for each budget a user will ask for.

A Pareto front found with a few thousand trials is good everywhere and best nowhere in particular: at one
budget, Once-for-All's evolution (50,100 evaluations for that budget alone) finds subnets a fraction of a point
more accurate. For each ``(device, budget)`` of ``SearchConfig.refinement_targets`` this searches that budget
alone with far more evaluations, scored in batches on integer genomes (``nas.scoring``: the accuracy MLP on a
one-hot array, table latency as a gather and sum; about 10^5 subnets a second), so a budget costs about a second:

- ``evolve_islands``: Once-for-All's evolution (mutation with probability 0.1 per choice, uniform crossover,
  the most accurate as parents) in ``ISLANDS_PER_RESOLUTION`` islands per resolution, all islands' children
  scored in one call per generation. One island per resolution, because a resolution changes every layer's
  latency at once and one population settles on the resolution that looks best early; at most ``NICHE``
  parents per depth pattern, so several patterns are refined side by side. The study's best subnets within
  the budget seed the first island of their resolution; the rest start random. Islands stop after
  ``PATIENCE`` generations without progress;
- then the best subnet of each of the ``FINISH`` best depth patterns is finished by ``knapsack_search`` (its
  block choices re-solved as a multiple-choice knapsack on the budget) and ``local_search`` (steepest ascent
  over one and two changes); the best of all wins.

Measured on Once-for-All's own problem (``experiments/benchmarks/budget_search.py``), this is at least as good as
a full Once-for-All evolution at every budget tried, in less time than the front itself took.
Each budget's winner becomes a trial of the study (user attribute ``refined_for``: ``"<device> <= <ms>"``), with
its accuracy and every device's latency (the objectives' own values), so the fronts, ``nas query`` and the
dashboard see it like any other trial. A refinement already in the study is not run again. ``polish`` (the
earlier per-arch local search) is kept for callers with objectives on archs.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import optuna

from search_spaces import Arch, SearchSpace, arch_counts, arch_to_string
from search_spaces._genome import archs_of, canonical, gene_layout, genomes_of, random_genomes

from .scoring import GenomeFn, genome_scorer

__all__ = ["REFINED_ATTR", "BudgetResult", "evolve_islands", "local_search", "neighbours", "polish", "refine_budgets",
           "search_budget"]

REFINED_ATTR = "refined_for"
SEEDS = 100               # the study's most accurate subnets within the budget that start a refinement
POPULATION = 100          # an island's first population: the seeds, then random subnets within the budget
PARENTS = 100             # an island's most accurate subnets so far, parents of each generation
CHILDREN = 200            # candidates per island and generation (half mutations, half crossovers)
MUTATION_PROB = 0.1       # per gene, as Once-for-All's
PATIENCE = 20             # generations without a better subnet before an island stops
NICHE = 4                 # parents of one structure (resolution, depths, widths) per island at most
ISLANDS_PER_RESOLUTION = 2  # independent populations per resolution
PRUNE = 0.01              # an island this far (accuracy) below the best one stops ...
PRUNE_AFTER = 40          # ... from this generation on
FINISH = 8                # structures whose best subnet is finished by knapsack and local search
LOCAL_EVALUATIONS = 100_000  # accuracy evaluations of one local search at most
PAIR_MARGIN = 0.002       # local search: pairs of changes whose single gains sum to more than -0.2 point

ArchBatchFn = Callable[[Sequence[Arch]], np.ndarray]


def _changes(space: SearchSpace, arch: Arch) -> tuple[dict[str, Any], list[tuple[str, Any, Arch]]]:
    """``arch``'s parameters, and every distinct single change ``(parameter, value, new arch)`` of them."""
    from .search_params import decode_params, params_of, search_params

    params = params_of(space, arch)
    seen = {arch.arch_id}
    out = []
    for name, choices in search_params(space).items():
        for value in choices:
            if value == params[name]:
                continue
            other = decode_params(space, {**params, name: value})
            if other.arch_id not in seen:
                seen.add(other.arch_id)
                out.append((name, value, other))
    return params, out


def neighbours(space: SearchSpace, arch: Arch) -> list[Arch]:
    """Every distinct subnet one searched choice away from ``arch`` (a resolution, a depth, one block slot)."""
    return [other for _, _, other in _changes(space, arch)[1]]


def polish(space: SearchSpace, arch: Arch, acc: float, accuracy: ArchBatchFn, latency: ArchBatchFn,
           budget_ms: float, max_evaluations: int, pairs: int = 12) -> tuple[Arch, float, int]:
    """Local search from ``arch`` within the budget, at most ``max_evaluations`` accuracy evaluations.

    Each step scores every single-choice change, and pairs of changes that trade latency within the budget:
    one of the ``pairs`` changes that gain most accuracy but break the budget, with one of the ``pairs`` that
    save latency at the least accuracy. It moves to the best subnet found while one improves. Evolution
    explores; this settles the last choices, where a better subnet at a tight budget usually needs one block
    made larger and another smaller at once, which mutations at probability 0.1 rarely propose.
    """
    from .search_params import decode_params

    used = 0
    current_lat = float(np.asarray(latency([arch]), dtype=np.float64)[0])
    while used < max_evaluations:
        params, singles = _changes(space, arch)
        if not singles:
            break
        singles = singles[: max_evaluations - used]
        archs = [other for _, _, other in singles]
        lat = np.asarray(latency(archs), dtype=np.float64)
        values = np.asarray(accuracy(archs), dtype=np.float64)
        used += len(archs)
        feasible = lat <= budget_ms
        candidates = [(float(values[i]), archs[i], float(lat[i])) for i in np.flatnonzero(feasible)]
        gainers = [i for i in np.argsort(-values) if not feasible[i] and values[i] > acc][:pairs]
        savers = [i for i in np.argsort(-values) if lat[i] < current_lat][:pairs]
        combos, seen = [], {a.arch_id for a in archs}
        for g in gainers:
            for v in savers:
                if singles[g][0] == singles[v][0]:
                    continue
                other = decode_params(space, {**params, singles[g][0]: singles[g][1], singles[v][0]: singles[v][1]})
                if other.arch_id not in seen:
                    seen.add(other.arch_id)
                    combos.append(other)
        if combos and used < max_evaluations:
            combo_lat = np.asarray(latency(combos), dtype=np.float64)
            ok = [c for c, v in zip(combos, combo_lat) if v <= budget_ms][: max_evaluations - used]
            if ok:
                combo_acc = np.asarray(accuracy(ok), dtype=np.float64)
                used += len(ok)
                ok_lat = {c.arch_id: float(v) for c, v in zip(combos, combo_lat)}
                candidates += [(float(a), c, ok_lat[c.arch_id]) for a, c in zip(combo_acc, ok)]
        if not candidates:
            break
        best_acc, best_arch, best_lat = max(candidates, key=lambda t: t[0])
        if best_acc <= acc:
            break
        arch, acc, current_lat = best_arch, best_acc, best_lat
    return arch, acc, used


# --- the batched search of one budget (genomes, ``search_spaces._genome``) ------------------------------------


@dataclass
class BudgetResult:
    """The most accurate subnet found within one budget, and what finding it took."""

    genome: np.ndarray
    accuracy: float
    latency_ms: float
    evaluations: int            # accuracy evaluations (distinct subnets within the budget)
    latency_evaluations: int    # distinct subnets whose latency was computed
    generations: int
    polish_steps: int
    start_accuracy: float       # the best seed's
    evolution_evaluations: int = 0   # of ``evaluations``, the evolution's (the rest: knapsack, local search)
    evolution_accuracy: float = float("nan")  # the evolution's best, before knapsack and local search


class _Objectives:
    """The two scorers of one budget, each subnet scored once: canonical genomes are hashed to 64 bits (a
    collision, about 1e-8 likely among a million subnets, would only skip one candidate) and kept sorted."""

    def __init__(self, space: SearchSpace, accuracy: GenomeFn, latency: GenomeFn, budget_ms: float,
                 cap: int | None = None) -> None:
        self.space, self.accuracy, self.latency, self.budget = space, accuracy, latency, budget_ms
        self.cap = cap  # accuracy evaluations at most, over every call
        weights = np.random.default_rng(0x5EED).integers(1, 2**63, size=gene_layout(space).length, dtype=np.int64)
        self.weights = weights.astype(np.uint64) | np.uint64(1)
        self.seen = np.zeros(0, dtype=np.uint64)
        self.evaluations = 0
        self.latency_evaluations = 0

    def _hash(self, c: np.ndarray) -> np.ndarray:
        with np.errstate(over="ignore"):
            return (c.astype(np.uint64) * self.weights).sum(axis=1, dtype=np.uint64)

    def new(self, genomes: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The canonical genomes of ``genomes`` not scored before (first occurrences, in order), their hashes
        (not yet marked as seen) and their rows in ``genomes``."""
        c = canonical(self.space, genomes)
        h = self._hash(c)
        if len(h) == 0:
            return c, h, np.zeros(0, dtype=np.int64)
        order = np.argsort(h, kind="stable")
        sorted_h = h[order]
        first = np.sort(order[np.concatenate([[True], sorted_h[1:] != sorted_h[:-1]])])
        at = np.searchsorted(self.seen, h[first])
        known = self.seen[np.minimum(at, max(len(self.seen) - 1, 0))] == h[first] if len(self.seen) else \
            np.zeros(len(first), dtype=bool)
        fresh = first[~known]
        return c[fresh], h[fresh], fresh

    def room(self) -> int:
        """Accuracy evaluations left under ``cap``."""
        return max(0, self.cap - self.evaluations) if self.cap is not None else 1 << 62

    def score(self, genomes: np.ndarray, limit: int | None = None
              ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """``(genomes, accuracy, latency, rows)`` of the new ones within the budget (the first ``limit`` of
        them; ``rows``: where they are in ``genomes``). Those scored and those over the budget count as seen;
        new ones past ``limit`` stay unseen."""
        g, h, rows = self.new(genomes)
        if g.shape[0] == 0:
            return g, np.zeros(0), np.zeros(0), rows
        lat = np.asarray(self.latency(g), dtype=np.float64)
        self.latency_evaluations += g.shape[0]
        within = lat <= self.budget
        ok = np.flatnonzero(within)
        if self.cap is not None:
            limit = self.room() if limit is None else min(limit, self.room())
        if limit is not None:
            ok = ok[:max(0, limit)]
        fresh = np.sort(np.concatenate([h[~within], h[ok]]))
        self.seen = np.insert(self.seen, np.searchsorted(self.seen, fresh), fresh)  # stays sorted, O(n)
        g, lat = g[ok], lat[ok]
        acc = np.asarray(self.accuracy(g), dtype=np.float64) if g.shape[0] else np.zeros(0)
        self.evaluations += g.shape[0]
        return g, acc, lat, rows[ok]


def structure_keys(layout, genomes: np.ndarray) -> np.ndarray:
    """One integer per genome for its resolution, depths and widths (what blocks cannot change)."""
    cols = [0, *layout.depth_gene, *layout.width_gene]
    key = np.zeros(len(genomes), dtype=np.int64)
    for c in cols:
        key = key * int(layout.cardinality[c]) + genomes[:, c]
    return key


def _rank_within(keys: np.ndarray) -> np.ndarray:
    """For each position, how many earlier positions have the same key."""
    n = len(keys)
    by_key = np.lexsort((np.arange(n), keys))
    sorted_keys = keys[by_key]
    starts = np.concatenate([[True], sorted_keys[1:] != sorted_keys[:-1]]) if n else np.zeros(0, dtype=bool)
    group_start = np.maximum.accumulate(np.where(starts, np.arange(n), 0)) if n else np.zeros(0, dtype=np.int64)
    rank = np.empty(n, dtype=np.int64)
    rank[by_key] = np.arange(n) - group_start
    return rank


def _moves(layout, genome: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Every single-gene change of ``genome``: (gene, value) pairs."""
    genes, values = [], []
    for gene, card in enumerate(layout.cardinality.tolist()):
        for v in range(card):
            if v != genome[gene]:
                genes.append(gene)
                values.append(v)
    return np.asarray(genes, dtype=np.int64), np.asarray(values, dtype=np.int64)


def local_search(obj: _Objectives, genome: np.ndarray, acc: float, lat: float, *, max_evaluations: int,
                 margin: float = PAIR_MARGIN) -> tuple[np.ndarray, float, float, int]:
    """Steepest ascent within the budget over changes of one or two genes; moves while one is more accurate.

    Each step scores every single change (accuracy and latency, within the budget or not), then the pairs of
    changes within the budget whose two single gains add up to more than ``-margin``: the accuracy of
    a pair is close to the sum of its parts, and a better subnet at a tight budget often needs one block made
    larger and another smaller at once, which mutations rarely propose."""
    layout = gene_layout(obj.space)
    steps = 0
    while obj.evaluations < max_evaluations:
        genes, values = _moves(layout, genome)
        if obj.room() < len(genes):
            break
        singles = np.repeat(genome[None, :], len(genes), axis=0)
        singles[np.arange(len(genes)), genes] = values
        s_acc = np.asarray(obj.accuracy(singles), dtype=np.float64) - acc
        s_lat = np.asarray(obj.latency(singles), dtype=np.float64)
        obj.evaluations += len(singles)
        obj.latency_evaluations += len(singles)
        i, j = np.triu_indices(len(genes), k=1)
        keep = (genes[i] != genes[j]) & (s_acc[i] + s_acc[j] > -margin)
        i, j = i[keep], j[keep]
        pairs = singles[i]
        pairs[np.arange(len(i)), genes[j]] = values[j]
        feasible = s_lat <= obj.budget
        cands = [(singles[feasible], s_acc[feasible] + acc, s_lat[feasible])]
        g, a, la, _ = obj.score(pairs, limit=max_evaluations - obj.evaluations)
        cands.append((g, a, la))
        g, a, la = (np.concatenate(x) for x in zip(*cands))
        if a.size == 0 or a.max() <= acc:
            break
        k = int(np.argmax(a))
        genome, acc, lat = canonical(obj.space, g[k][None])[0], float(a[k]), float(la[k])
        steps += 1
    return genome, acc, lat, steps


def _start(obj: _Objectives, seeds: np.ndarray, resolution: int, size: int, rng: np.random.Generator,
           max_rounds: int = 8) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """An island's first population at one resolution (a gene index): the ``seeds`` at it, then random subnets
    within the budget, then (where random ones are rarely within it) mutations of the cheapest subnet."""
    layout = gene_layout(obj.space)
    parts = [obj.score(seeds[seeds[:, 0] == resolution])[:3]]
    have = len(parts[0][0])
    cheapest = np.zeros((1, layout.length), dtype=np.int64)
    cheapest[0, 0] = resolution
    for n in range(max_rounds):
        if have >= size:
            break
        if n < max_rounds // 2:
            g = random_genomes(obj.space, 4 * size, rng)
        else:  # mutations of the cheapest subnet, each gene redrawn with probability 0.2
            g = np.repeat(cheapest, 4 * size, axis=0)
            redraw = rng.random(g.shape) < 0.2
            g = np.where(redraw, (rng.random(g.shape) * layout.cardinality).astype(np.int64), g)
            if n == max_rounds // 2:
                g[0] = cheapest[0]
        g[:, 0] = resolution
        more = obj.score(g, limit=size - have)[:3]
        parts.append(more)
        have += len(more[0])
    return tuple(np.concatenate(x) for x in zip(*parts))  # type: ignore[return-value]


def _select(layout, island: np.ndarray, genomes: np.ndarray, acc: np.ndarray, parents: int,
            niche: int | None) -> np.ndarray:
    """Per island, the indices of its ``parents`` most accurate genomes, at most ``niche`` of one structure
    (``structure_keys``: resolution, depths, widths), sorted by island."""
    order = np.argsort(-acc, kind="stable")
    if niche is not None:
        keys = structure_keys(layout, genomes[order]) * (int(island.max()) + 1) + island[order]
        order = order[_rank_within(keys) < niche]
    order = order[_rank_within(island[order]) < parents]
    return order[np.argsort(island[order], kind="stable")]


def evolve_islands(obj: _Objectives, island: np.ndarray, genomes: np.ndarray, acc: np.ndarray, lat: np.ndarray,
                   rng: np.random.Generator, *, parents: int, children: int, mutation_prob: float, niche: int | None,
                   patience: int, max_evaluations: int, prune: float = np.inf, prune_after: int = 0,
                   oversample: int = 2
                   ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, int]:
    """Once-for-All's evolution for several islands at once, each at one resolution, batched.

    Each generation every island that still improves makes ``children`` candidates (``oversample`` times
    over): half mutations of a random parent of its own (each gene but the resolution redrawn with
    ``mutation_prob``), half uniform crossovers of two of its parents; all candidates of all islands are
    scored in one call, and those new and within the budget join their island. An island's parents are its
    ``parents`` most accurate subnets so far, at most ``niche`` per depth pattern, so that several patterns
    are refined side by side instead of the first good one taking over. An island stops after ``patience``
    generations without a better subnet, or once its best is more than ``prune`` below the best island's after
    ``prune_after`` generations; the evolution stops when all have stopped (or at ``max_evaluations``).
    Returns every island's final parents (island, genomes, accuracy, latency) and the generations run.
    """
    layout = gene_layout(obj.space)
    mutable = layout.cardinality.copy()
    mutable[0] = 1  # the resolution is the island's
    n_islands = int(island.max()) + 1
    keep = _select(layout, island, genomes, acc, parents, niche)
    isl, pop, pop_acc, pop_lat = island[keep], genomes[keep], acc[keep], lat[keep]
    best = np.full(n_islands, -np.inf)
    np.maximum.at(best, isl, pop_acc)
    stale = np.zeros(n_islands, dtype=np.int64)
    generations = 0
    while obj.evaluations < max_evaluations:
        behind = (best < best.max() - prune) & (generations >= prune_after)
        active = np.flatnonzero((stale < patience) & ~behind & np.isin(np.arange(n_islands), isl))
        if active.size == 0:
            break
        generations += 1
        counts = np.bincount(isl, minlength=n_islands)
        starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
        who = np.repeat(active, children * oversample // 2)

        def pick(who: np.ndarray = who, starts: np.ndarray = starts, counts: np.ndarray = counts) -> np.ndarray:
            return starts[who] + (rng.random(len(who)) * counts[who]).astype(np.int64)

        mutants = pop[pick()]
        redraw = (rng.random(mutants.shape) < mutation_prob) & (mutable > 1)
        mutants = np.where(redraw, (rng.random(mutants.shape) * mutable).astype(np.int64), mutants)
        a, b = pop[pick()], pop[pick()]
        crosses = np.where(rng.random(a.shape) < 0.5, a, b)
        g, a_new, l_new, rows = obj.score(np.concatenate([mutants, crosses]),
                                          limit=max_evaluations - obj.evaluations)
        all_isl = np.concatenate([isl, np.concatenate([who, who])[rows]])
        all_g, all_a = np.concatenate([pop, g]), np.concatenate([pop_acc, a_new])
        all_l = np.concatenate([pop_lat, l_new])
        keep = _select(layout, all_isl, all_g, all_a, parents, niche)
        isl, pop, pop_acc, pop_lat = all_isl[keep], all_g[keep], all_a[keep], all_l[keep]
        new_best = np.full(n_islands, -np.inf)
        np.maximum.at(new_best, isl, pop_acc)
        stale = np.where(new_best > best, 0, stale + 1)
        best = np.maximum(best, new_best)
    return isl, pop, pop_acc, pop_lat, generations


def _active_slots(layout, genome: np.ndarray) -> list[int]:
    """The slot genes of ``genome`` that are blocks of its subnet."""
    out = []
    for s, slots in enumerate(layout.slot_genes):
        depth = int(layout.depths[s][genome[layout.depth_gene[s]]])
        out += list(slots[:1] if len(slots) == 1 else slots[:depth])
    return out


def knapsack_search(obj: _Objectives, genome: np.ndarray, acc: float, lat: float, *, candidates: int = 32,
                    grid: int = 4000, max_steps: int = 20) -> tuple[np.ndarray, float, float, int]:
    """Block choices re-solved as a knapsack at the subnet's resolution and depths, while that improves.

    With the resolution, depths and widths fixed, a subnet's table latency is a sum over its blocks, and its
    accuracy near ``genome`` is nearly one too: every single change of one block is scored (accuracy and
    latency, within the budget or not), and the multiple-choice knapsack "one variant per block, most
    accuracy gained, latency within the budget" is solved exactly by dynamic programming over latency in
    ``grid`` steps (each block's latency rounded up, so every solution is within the budget). The solutions
    at ``candidates`` capacities near the budget are scored for real; the best replaces ``genome`` when it
    is more accurate, and the next step starts from it. Changes many blocks at once, where ``local_search``
    changes two. Counts its single-change scoring as accuracy evaluations.
    """
    layout = gene_layout(obj.space)
    steps = 0
    for _ in range(max_steps):
        slots = _active_slots(layout, genome)
        n_var = [int(layout.cardinality[g]) for g in slots]
        rows = np.repeat(genome[None, :], sum(n_var), axis=0)
        item = np.repeat(np.arange(len(slots)), n_var)
        value = np.concatenate([np.arange(k) for k in n_var])
        if obj.room() < len(rows):
            break
        rows[np.arange(len(rows)), np.asarray(slots)[item]] = value
        d_acc = np.asarray(obj.accuracy(rows), dtype=np.float64) - acc
        d_lat = np.asarray(obj.latency(rows), dtype=np.float64) - lat
        obj.evaluations += len(rows)
        obj.latency_evaluations += len(rows)
        # Costs shifted to >= 0 per block; capacity what the budget leaves.
        offsets = np.concatenate([[0], np.cumsum(n_var)])
        low = np.asarray([d_lat[offsets[i]:offsets[i + 1]].min() for i in range(len(slots))])
        cost = d_lat - low[item]
        room = obj.budget - lat - low.sum()
        if room < 0:
            break
        step = max(room / grid, 1e-9)
        weight = np.ceil(cost / step - 1e-9).astype(np.int64)
        cap = int(np.floor(room / step + 1e-9))
        best = np.zeros(cap + 1)
        choice = np.zeros((len(slots), cap + 1), dtype=np.int64)
        for i in range(len(slots)):
            new = np.full(cap + 1, -np.inf)
            pick = np.zeros(cap + 1, dtype=np.int64)
            for v in range(n_var[i]):
                w, gain = int(weight[offsets[i] + v]), d_acc[offsets[i] + v]
                if w > cap:
                    continue
                shifted = np.full(cap + 1, -np.inf)
                shifted[w:] = best[: cap + 1 - w] + gain
                better = shifted > new
                new[better], pick[better] = shifted[better], v
            best, choice[i] = new, pick
        capacities = np.unique(np.linspace(max(0, cap - cap // 8), cap, candidates).astype(np.int64))
        found = []
        for c in capacities:
            g = genome.copy()
            for i in range(len(slots) - 1, -1, -1):
                v = int(choice[i, c])
                g[slots[i]] = v
                c -= int(weight[offsets[i] + v])
            found.append(g)
        g, a, la, _ = obj.score(np.asarray(found))
        if a.size == 0 or a.max() <= acc:
            break
        k = int(np.argmax(a))
        genome, acc, lat = g[k], float(a[k]), float(la[k])
        steps += 1
    return genome, acc, lat, steps


def search_budget(space: SearchSpace, accuracy: GenomeFn, latency: GenomeFn, budget_ms: float,
                  seeds: np.ndarray, *, seed: int = 0, max_evaluations: int = 1_000_000,
                  islands_per_resolution: int = ISLANDS_PER_RESOLUTION, population: int = POPULATION,
                  parents: int = PARENTS, children: int = CHILDREN, mutation_prob: float = MUTATION_PROB,
                  niche: int | None = NICHE, patience: int = PATIENCE, polish: bool = True,
                  finish: int = FINISH, prune: float = PRUNE, prune_after: int = PRUNE_AFTER
                  ) -> BudgetResult | None:
    """The most accurate subnet within ``budget_ms`` that a batched island evolution and a local search find.

    ``islands_per_resolution`` islands per resolution (a resolution changes every layer's latency at once, so
    one population drifts to the resolution that looks best early and rarely crosses to another): the first
    island of each resolution starts from the ``seeds`` at it (genomes within the budget, e.g. the best of a
    front), all are filled up with random subnets within the budget to ``population``; ``evolve_islands``
    runs them until none improves for ``patience`` generations (or one is ``prune`` behind). With ``polish``,
    the best subnet of each of the ``finish`` best structures (resolution and depths) is then finished by
    ``knapsack_search`` and ``local_search``; the most accurate subnet found wins. At most ``max_evaluations``
    accuracy evaluations (besides one of the seeds, to report where it started); None when nothing within the
    budget was found. Deterministic for a given ``seed``.
    """
    layout = gene_layout(space)
    seeds = canonical(space, np.asarray(seeds, dtype=np.int64).reshape(-1, layout.length))
    rng = np.random.default_rng(np.random.SeedSequence([seed, 13]))
    obj = _Objectives(space, accuracy, latency, budget_ms, cap=max_evaluations)
    start = float(np.max(accuracy(seeds))) if len(seeds) else float("nan")
    parts, labels = [], []
    n_res = int(layout.cardinality[0])
    for k in range(n_res * max(1, islands_per_resolution)):
        part = _start(obj, seeds if k < n_res else seeds[:0], k % n_res, population, rng)
        parts.append(part)
        labels.append(np.full(len(part[0]), k, dtype=np.int64))
    g, acc, lat = (np.concatenate(x) for x in zip(*parts))
    if len(g) == 0:
        return None
    island = np.concatenate(labels)
    _, g, acc, lat, generations = evolve_islands(obj, island, g, acc, lat, rng, parents=parents, children=children,
                                                 mutation_prob=mutation_prob, niche=niche, patience=patience,
                                                 max_evaluations=max_evaluations, prune=prune,
                                                 prune_after=prune_after)
    # Finish: the best subnet of each of the ``finish`` best structures, re-solved as a knapsack of its block
    # choices, then searched locally (one or two changes, structure included); the best of them wins.
    order = np.argsort(-acc, kind="stable")
    keys = structure_keys(layout, g[order])
    starts = order[_rank_within(keys) == 0][: max(1, finish)]
    top = int(np.argmax(acc))
    best_g, best_a, best_l, steps = g[top], float(acc[top]), float(lat[top]), 0
    evolved = obj.evaluations
    if polish:
        for i in starts:
            cand = knapsack_search(obj, g[i], float(acc[i]), float(lat[i]))
            cand = local_search(obj, *cand[:3], max_evaluations=obj.evaluations + LOCAL_EVALUATIONS)
            steps += cand[3]
            if cand[1] > best_a:
                best_g, best_a, best_l = cand[0], cand[1], cand[2]
    return BudgetResult(genome=best_g, accuracy=best_a, latency_ms=best_l, evaluations=obj.evaluations,
                        latency_evaluations=obj.latency_evaluations, generations=generations, polish_steps=steps,
                        start_accuracy=start, evolution_evaluations=evolved, evolution_accuracy=float(acc[top]))


def _key(device: str, budget_ms: float) -> str:
    return f"{device} <= {budget_ms:g} ms"


def refine_budgets(study: optuna.Study, space: SearchSpace, config: Any, accuracy: ArchBatchFn,
                   latency: Mapping[str, ArchBatchFn], *, seed: int = 0,
                   progress: Callable[[str], None] | None = None) -> list[optuna.trial.FrozenTrial]:
    """Refine every target of ``config`` not yet in ``study``; returns the trials added."""
    from .search_params import params_of, search_params
    from .study import study_trials

    evaluations = config.evaluations_per_refinement
    targets = config.refinement_targets()
    if evaluations <= 0 or not targets:
        return []
    done = {t.user_attrs.get(REFINED_ATTR) for t in study.get_trials(deepcopy=False)}
    todo = [(d, b) for d, b in targets if _key(d, b) not in done]
    if not todo:
        return []
    table = study_trials(study, space).fp32()
    distributions = {name: optuna.distributions.CategoricalDistribution(list(choices))
                     for name, choices in search_params(space).items()}
    budgets = config.budgets
    added = []
    acc_g, _ = genome_scorer(space, accuracy)
    lat_g = {d: genome_scorer(space, latency[d])[0] for d in config.devices}
    for n, (device, budget) in enumerate(todo):
        k = list(config.devices).index(device)
        within = np.flatnonzero(table.latency_ms[:, k] <= budget)
        if within.size == 0:
            continue  # no subnet of the study meets it; write_fronts says so for a device's own budget
        best = within[np.argsort(-table.accuracy[within], kind="stable")][:SEEDS]
        started = time.perf_counter()
        result = search_budget(space, acc_g, lat_g[device], budget, genomes_of(space, [table.archs[i] for i in best]),
                               seed=seed + n, max_evaluations=evaluations)
        took = time.perf_counter() - started
        if result is None:
            continue
        arch = archs_of(space, result.genome[None, :])[0]
        best_acc, used = float(accuracy([arch])[0]), result.evaluations  # the objective's own value
        lats = [float(latency[d]([arch])[0]) for d in config.devices]
        counts = arch_counts(space, arch)
        trial = optuna.trial.create_trial(
            params=params_of(space, arch), distributions=distributions,
            values=[best_acc, *lats],
            user_attrs={REFINED_ATTR: _key(device, budget), "arch": arch_to_string(space, arch),
                        "params": counts.params, "macs": counts.macs,
                        "refine_evaluations": used},
            system_attrs={f"constraints:latency:{d}": lats[j] - budgets[d]
                          for j, d in enumerate(config.devices) if d in budgets},
        )
        study.add_trial(trial)
        added.append(trial)
        if progress is not None:
            progress(f"refined {_key(device, budget)}: {100 * best_acc:.2f}% at {lats[k]:.3f} ms "
                     f"({used} evaluations in {took:.2f} s; best of the front there "
                     f"{100 * float(table.accuracy[best[0]]):.2f}%)")
    return added
