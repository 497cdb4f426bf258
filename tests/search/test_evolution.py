from __future__ import annotations

import numpy as np
import pytest

from nas.evolution import evolution_search

from .conftest import ToyObjectives


def test_evolution_respects_budget_improves_and_is_seeded():
    toy = ToyObjectives()
    lat = toy.latency()
    budget = float(np.median(lat(__import__("search_spaces").sample(toy.space, 50, 0))))
    runs = [evolution_search(toy.space, toy.accuracy, lat, budget, population_size=20, generations=8, seed=s)
            for s in (1, 1)]
    result = runs[0]
    assert result.accuracy_evaluations == 20 + 8 * 20  # Once-for-All's: population_size children per generation
    assert (result.latency_ms <= budget).all() and result.best_latency_ms <= budget
    assert result.best_per_generation[-1] >= result.best_per_generation[0]
    assert result.latency_evaluations >= result.accuracy_evaluations
    assert runs[1].best_arch == result.best_arch
    capped = evolution_search(toy.space, toy.accuracy, lat, budget, population_size=20, generations=50,
                              max_evaluations=50, seed=0)
    assert capped.accuracy_evaluations == 50
    with pytest.raises(ValueError, match="too tight"):
        evolution_search(toy.space, toy.accuracy, lat, 0.001, population_size=4, generations=1)
