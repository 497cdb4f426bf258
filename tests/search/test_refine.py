"""Per-budget refinement (issue 13): after the front, each budget users will ask for gets Once-for-All's
evolution started from the study's best subnets within it; winners are trials of the study."""

from __future__ import annotations

import numpy as np
import pytest

from nas.refine import REFINED_ATTR
from nas.search import run_search
from nas.search_config import SearchConfig
from nas.study import load_study, study_trials

from .conftest import stub_counts


def _best_within(table, k, budget):
    ok = table.latency_ms[:, k] <= budget
    return float(table.accuracy[ok].max())


def test_each_budget_gets_a_winner_at_least_as_good_as_the_front(tmp_path, toy):
    lat = {"fast": toy.latency(0.5), "slow": toy.latency(1.0)}
    plain = SearchConfig.parse({"n_trials": 60, "batch_size": 30, "population_size": 20, "refine_evaluations": 0},
                               [{"id": "fast", "max_latency_ms": 9.0}, "slow"])
    run_search(plain, tmp_path / "plain", toy.accuracy, lat, space="ofa_mbv3_cifar", counts_fn=stub_counts)
    before = study_trials(load_study(tmp_path / "plain"), toy.space)

    config = SearchConfig.parse({"n_trials": 60, "batch_size": 30, "population_size": 20, "budgets_ms": [10, 18],
                                 "refine_evaluations": 400}, [{"id": "fast", "max_latency_ms": 9.0}, "slow"])
    # Budgets above a device's own max_latency_ms are not refined on it (its front stops there).
    assert config.refinement_targets() == [("fast", 9.0), ("slow", 10.0), ("slow", 18.0)]
    lines = []
    fronts = run_search(config, tmp_path / "run", toy.accuracy, lat, space="ofa_mbv3_cifar", counts_fn=stub_counts,
                        log=lines.append)
    study = load_study(tmp_path / "run")
    refined = {t.user_attrs[REFINED_ATTR]: t for t in study.get_trials() if REFINED_ATTR in t.user_attrs}
    # slow <= 10 ms: no subnet of the study is that fast on "slow" (13.6 ms at best), so nothing to refine.
    assert set(refined) == {"fast <= 9 ms", "slow <= 18 ms"}
    assert len(lines) == 2 and all("refined" in line for line in lines)
    for key, trial in refined.items():
        device, budget = key.split(" <= ")[0], float(key.split(" <= ")[1].split()[0])
        k = ["fast", "slow"].index(device)
        assert trial.values[1 + k] <= budget  # within its budget, latencies of every device recorded
        assert len(trial.values) == 3 and trial.user_attrs["refine_evaluations"] <= 400
        # At least as good as the same search's front without refinement (same seed, same trials before it).
        assert trial.values[0] >= _best_within(before, k, budget) - 1e-12
    # The device's front answers its own budget with the winner or better (here the toy's "slow" latency is
    # twice "fast", so the refinement of slow <= 18 ms searched the same constraint and may have done better).
    best_fast = max(m.val_accuracy for m in fronts["fast"])
    assert best_fast >= refined["fast <= 9 ms"].values[0]
    assert best_fast == max(t.values[0] for t in study.get_trials() if t.values[1] <= 9.0)
    # Continuing the search does not refine again.
    n = len(study.get_trials())
    run_search(config, tmp_path / "run", toy.accuracy, lat, space="ofa_mbv3_cifar", counts_fn=stub_counts)
    assert len(load_study(tmp_path / "run").get_trials()) == n


def test_direct_accuracy_is_not_refined_by_default():
    config = SearchConfig.parse({"budgets_ms": [5]}, ["d"])
    assert config.evaluations_per_refinement == 0
    assert SearchConfig.parse({"accuracy": "predictor"}, ["d"]).evaluations_per_refinement == 1_000_000


def test_polish_moves_only_within_the_budget_and_never_down(toy):
    from nas.refine import neighbours, polish
    from search_spaces import sample

    lat = toy.latency()
    start = sample(toy.space, 1, seed=5)[0]
    budget = float(lat([start])[0]) + 0.5
    acc0 = float(toy.accuracy([start])[0])
    arch, acc, used = polish(toy.space, start, acc0, toy.accuracy, lat, budget, 2000)
    assert acc >= acc0 and float(lat([arch])[0]) <= budget and 0 < used <= 2000
    # A local optimum: no single change within the budget is better.
    others = [a for a in neighbours(toy.space, arch) if lat([a])[0] <= budget]
    assert max(toy.accuracy(others)) <= acc or used >= 2000
    assert all(a.arch_id != arch.arch_id for a in neighbours(toy.space, arch))


def _toy_genome_objectives(toy, scale=1.0):
    from nas.scoring import genome_scorer
    from nas.study import as_batch_fn

    acc, _ = genome_scorer(toy.space, as_batch_fn(toy.accuracy))
    lat, _ = genome_scorer(toy.space, as_batch_fn(toy.latency(scale)))
    return acc, lat


def test_search_budget_stays_within_its_budget_beats_its_seeds_and_is_seeded(toy):
    from nas.refine import search_budget
    from search_spaces import sample
    from search_spaces._genome import archs_of, genomes_of

    acc, lat = _toy_genome_objectives(toy)
    archs = sample(toy.space, 300, seed=1)
    values = lat(genomes_of(toy.space, archs))
    budget = float(np.percentile(values, 20))
    seeds = genomes_of(toy.space, [a for a, v in zip(archs, values) if v <= budget])
    runs = [search_budget(toy.space, acc, lat, budget, seeds, seed=3, max_evaluations=20_000, children=40,
                          parents=20, population=30, patience=5, finish=2) for _ in range(2)]
    result = runs[0]
    assert result is not None and result.latency_ms <= budget
    assert result.accuracy >= float(acc(seeds).max()) == result.start_accuracy
    assert result.accuracy == pytest.approx(float(toy.accuracy(archs_of(toy.space, result.genome[None]))[0]))
    assert 0 < result.evaluations <= 20_000 and result.evolution_evaluations <= result.evaluations
    assert (runs[1].genome == result.genome).all() and runs[1].evaluations == result.evaluations
    # A cap is a cap, finishing included; a budget nothing meets has no answer.
    capped = search_budget(toy.space, acc, lat, budget, seeds, seed=3, max_evaluations=300, children=40,
                           parents=20, population=30, patience=5)
    assert capped.evaluations <= 300
    assert search_budget(toy.space, acc, lat, 1e-6, seeds[:0], seed=0, max_evaluations=1000) is None


def test_knapsack_and_local_search_only_move_up_within_the_budget(toy):
    from nas.refine import _Objectives, knapsack_search, local_search
    from search_spaces import sample
    from search_spaces._genome import genomes_of

    acc, lat = _toy_genome_objectives(toy)
    start = genomes_of(toy.space, sample(toy.space, 1, seed=11))
    a0, l0 = float(acc(start)[0]), float(lat(start)[0])
    budget = l0 + 0.3
    for search in (knapsack_search, lambda o, g, a, la: local_search(o, g, a, la, max_evaluations=50_000)):
        obj = _Objectives(toy.space, acc, lat, budget)
        genome, a, la, steps = search(obj, start[0], a0, l0)
        assert a >= a0 and la <= budget and steps >= 1
        assert a == pytest.approx(float(acc(genome[None])[0])) and la == pytest.approx(float(lat(genome[None])[0]))
