"""Once-for-All's own search, as a baseline: evolution under one latency budget.

As Once-for-All's evolution finder (``ofa/nas/search_algorithm/evolution.py``), with its defaults: a population
of 100 random subnets within the budget; each generation keeps the most accurate 25% of the population as
parents and makes ``round(0.5 x 100)`` = 50 mutations (each choice of a random parent resampled with
probability 0.1) and 100 - 50 = 50 crossovers (of two random parents), then ranks parents and children
together (125) for the next generation's parents. A candidate over the budget is drawn again from the same
parent (or pair of parents), as Once-for-All does; here the retries of all children of a generation go to the
latency predictor in one batch per round. 500 generations evaluate 100 + 500 x 100 = 50,100 accuracies. One
run finds one subnet for one budget; a front needs one run per budget.
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


def _initial(space: SearchSpace, n: int, rng: np.random.Generator, latency: BatchFn, max_latency_ms: float,
             counter: list[int], max_rounds: int = 1000) -> tuple[list[Arch], list[float]]:
    """``n`` random subnets within the budget (rejection, batched)."""
    archs: list[Arch] = []
    lats: list[float] = []
    for _ in range(max_rounds):
        need = n - len(archs)
        if need <= 0:
            break
        batch = [random_arch(space, rng) for _ in range(max(need, 8))]
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


def _children(makers: list[Callable[[], Arch]], latency: BatchFn, max_latency_ms: float, counter: list[int],
              max_rounds: int = 1000) -> tuple[list[Arch], list[float]]:
    """One feasible child per maker, each redrawn from its own maker (its parent or parents) until it is within
    the budget; one latency batch per round over every child still missing."""
    archs: list[Arch | None] = [None] * len(makers)
    lats = [0.0] * len(makers)
    todo = list(range(len(makers)))
    for _ in range(max_rounds):
        if not todo:
            break
        batch = [makers[i]() for i in todo]
        values = np.asarray(latency(batch), dtype=np.float64)
        counter[0] += len(batch)
        missing = []
        for i, arch, lat in zip(todo, batch, values):
            if lat <= max_latency_ms:
                archs[i], lats[i] = arch, float(lat)
            else:
                missing.append(i)
        todo = missing
    if todo:
        raise ValueError(f"evolution: {len(todo)} children stayed over {max_latency_ms:g} ms after {max_rounds} "
                         f"draws from their parents; the budget is too tight")
    return [a for a in archs if a is not None], lats


def evolution_search(space: SearchSpace | str, accuracy: BatchFn, latency: BatchFn, max_latency_ms: float, *,
                     population_size: int = 100, parent_ratio: float = 0.25, mutation_prob: float = 0.1,
                     mutation_ratio: float = 0.5, generations: int = 500, seed: int = 0,
                     max_evaluations: int | None = None, initial: Sequence[Arch] = (),
                     patience: int | None = None) -> EvolutionResult:
    """Run the evolution; stops after ``generations`` or once ``max_evaluations`` accuracies were computed.

    The defaults are Once-for-All's (``population_size`` 100, ``parent_ratio`` 0.25, ``mutation_prob`` 0.1,
    ``mutation_ratio`` 0.5, 500 generations): ``population_size`` children per generation.

    ``initial``: subnets within the budget to start from (the rest of the first population is random), e.g.
    the best of a front under this budget (``nas.refine``). ``patience``: stop after that many generations
    without a better subnet.
    """
    space = get_space(space)
    rng = np.random.default_rng(seed)
    start = time.perf_counter()
    counter = [0]
    n_parents = max(1, int(round(population_size * parent_ratio)))
    n_mutations = int(round(population_size * mutation_ratio))
    n_crossovers = population_size - n_mutations

    seeds = list(initial)[:population_size]
    seed_lat = [float(v) for v in np.asarray(latency(seeds), dtype=np.float64)] if seeds else []
    counter[0] += len(seeds)
    over = [a.arch_id for a, v in zip(seeds, seed_lat) if v > max_latency_ms]
    if over:
        raise ValueError(f"evolution: initial subnet {over[0]} is over the budget of {max_latency_ms:g} ms")
    population, pop_lat = list(seeds), list(seed_lat)
    if len(population) < population_size:
        more, more_lat = _initial(space, population_size - len(population), rng, latency, max_latency_ms, counter)
        population, pop_lat = population + more, pop_lat + more_lat
    pop_acc = list(np.asarray(accuracy(population), dtype=np.float64))
    all_archs, all_acc, all_lat = list(population), list(pop_acc), list(pop_lat)
    best_per_gen = [max(pop_acc)]
    for _ in range(generations):
        if max_evaluations is not None and len(all_archs) >= max_evaluations:
            break
        order = np.argsort(-np.asarray(pop_acc), kind="stable")[:n_parents]
        parents = [population[i] for i in order]

        def mutant(parent: Arch) -> Callable[[], Arch]:
            return lambda: mutate(space, parent, mutation_prob, rng)

        def cross(a: Arch, b: Arch) -> Callable[[], Arch]:
            return lambda: crossover(space, a, b, rng)

        makers = [mutant(parents[int(rng.integers(len(parents)))]) for _ in range(n_mutations)]
        makers += [cross(*(parents[int(i)] for i in rng.integers(len(parents), size=2))) for _ in range(n_crossovers)]
        if max_evaluations is not None:  # the last generation is cut to end at exactly max_evaluations
            makers = makers[: max_evaluations - len(all_archs)]
        new, new_lat = _children(makers, latency, max_latency_ms, counter)
        new_acc = list(np.asarray(accuracy(new), dtype=np.float64))
        population = parents + new
        pop_acc = [pop_acc[i] for i in order] + new_acc
        pop_lat = [pop_lat[i] for i in order] + new_lat
        all_archs += new
        all_acc += new_acc
        all_lat += new_lat
        best_per_gen.append(max(pop_acc))
        if patience is not None and len(best_per_gen) > patience and \
                best_per_gen[-1] <= best_per_gen[-1 - patience]:
            break
    best = int(np.argmax(all_acc))
    return EvolutionResult(
        best_arch=all_archs[best], best_accuracy=float(all_acc[best]), best_latency_ms=float(all_lat[best]),
        archs=all_archs, accuracy=np.asarray(all_acc), latency_ms=np.asarray(all_lat),
        best_per_generation=best_per_gen, latency_evaluations=counter[0], wall_s=time.perf_counter() - start,
    )
