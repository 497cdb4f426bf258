"""Once-for-All's own search, as a baseline: evolution under one latency budget.

As ``ofa/nas/search_algorithm/evolution.py``: a population of 100 random subnets within the budget; each
generation keeps the most accurate 25% as parents and fills the population with mutations (half of the
children, each choice resampled with probability 0.1) and crossovers of random parents. Candidates over the
budget are rejected and drawn again (here in batches, so that the latency predictor is called on many
candidates at once). One run finds one subnet for one budget; a front needs one run per budget.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from search_spaces import Arch, SearchSpace, crossover, get_space, mutate, random_arch

__all__ = ["EvolutionResult", "evolution_search"]

BatchFn = Callable[[Sequence[Arch]], np.ndarray]


@dataclass
class EvolutionResult:
    """The best subnet found and every evaluated subnet in evaluation order."""

    best_arch: Arch
    best_accuracy: float
    best_latency_ms: float
    archs: list[Arch] = field(default_factory=list)
    accuracy: np.ndarray = field(default_factory=lambda: np.zeros(0))
    latency_ms: np.ndarray = field(default_factory=lambda: np.zeros(0))
    # Best accuracy after each generation (index 0: the initial population).
    best_per_generation: list[float] = field(default_factory=list)
    latency_evaluations: int = 0
    wall_s: float = 0.0

    @property
    def accuracy_evaluations(self) -> int:
        return len(self.archs)


def _feasible(make: Callable[[], Arch], n: int, latency: BatchFn, max_latency_ms: float,
              counter: list[int], max_rounds: int = 1000) -> tuple[list[Arch], list[float]]:
    """``n`` candidates from ``make`` whose latency is within the budget (rejection, batched)."""
    archs: list[Arch] = []
    lats: list[float] = []
    for _ in range(max_rounds):
        need = n - len(archs)
        if need <= 0:
            break
        batch = [make() for _ in range(max(need, 8))]
        values = np.asarray(latency(batch), dtype=np.float64)
        counter[0] += len(batch)
        for arch, lat in zip(batch, values):
            if lat <= max_latency_ms and len(archs) < n:
                archs.append(arch)
                lats.append(float(lat))
    if len(archs) < n:
        raise ValueError(f"evolution: fewer than {n} subnets within {max_latency_ms:g} ms after {max_rounds} "
                         f"rounds of sampling; the budget is too tight")
    return archs, lats


def evolution_search(space: SearchSpace | str, accuracy: BatchFn, latency: BatchFn, max_latency_ms: float, *,
                     population_size: int = 100, parent_ratio: float = 0.25, mutation_prob: float = 0.1,
                     mutation_ratio: float = 0.5, generations: int = 500, seed: int = 0,
                     max_evaluations: int | None = None) -> EvolutionResult:
    """Run the evolution; stops after ``generations`` or once ``max_evaluations`` accuracies were computed."""
    space = get_space(space)
    rng = np.random.default_rng(seed)
    start = time.perf_counter()
    counter = [0]
    n_parents = max(1, int(round(population_size * parent_ratio)))
    n_mutations = int(round(population_size * mutation_ratio))
    n_crossovers = population_size - n_parents - n_mutations

    population, pop_lat = _feasible(lambda: random_arch(space, rng), population_size, latency, max_latency_ms,
                                    counter)
    pop_acc = list(np.asarray(accuracy(population), dtype=np.float64))
    all_archs, all_acc, all_lat = list(population), list(pop_acc), list(pop_lat)
    best_per_gen = [max(pop_acc)]
    for _ in range(generations):
        if max_evaluations is not None and len(all_archs) >= max_evaluations:
            break
        order = np.argsort(-np.asarray(pop_acc), kind="stable")[:n_parents]
        parents = [population[i] for i in order]
        parent_acc = [pop_acc[i] for i in order]
        parent_lat = [pop_lat[i] for i in order]

        def mutant(parents: list[Arch] = parents) -> Arch:
            return mutate(space, parents[int(rng.integers(len(parents)))], mutation_prob, rng)

        def child(parents: list[Arch] = parents) -> Arch:
            a, b = rng.integers(len(parents), size=2)
            return crossover(space, parents[int(a)], parents[int(b)], rng)

        mutants, mut_lat = _feasible(mutant, n_mutations, latency, max_latency_ms, counter)
        children, child_lat = _feasible(child, n_crossovers, latency, max_latency_ms, counter)
        new = mutants + children
        new_acc = list(np.asarray(accuracy(new), dtype=np.float64))
        population = parents + new
        pop_acc = parent_acc + new_acc
        pop_lat = parent_lat + mut_lat + child_lat
        all_archs += new
        all_acc += new_acc
        all_lat += mut_lat + child_lat
        best_per_gen.append(max(pop_acc))
    best = int(np.argmax(all_acc))
    return EvolutionResult(
        best_arch=all_archs[best], best_accuracy=float(all_acc[best]), best_latency_ms=float(all_lat[best]),
        archs=all_archs, accuracy=np.asarray(all_acc), latency_ms=np.asarray(all_lat),
        best_per_generation=best_per_gen, latency_evaluations=counter[0], wall_s=time.perf_counter() - start,
    )
