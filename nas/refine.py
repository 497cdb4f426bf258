"""Best subnet per latency budget: a refinement of the front for each budget a user will ask for.

A Pareto front found with a few thousand trials is good everywhere and best nowhere in particular: at one
budget, Once-for-All's evolution (50,100 evaluations for that budget alone) finds subnets a fraction of a point
more accurate. For each ``(device, budget)`` of ``SearchConfig.refinement_targets`` this runs that evolution
(``nas.evolution``, Once-for-All's operators and redraw rule), started from the study's most accurate subnets
within the budget instead of random ones and stopped when it stops improving, then polishes its winner by
steepest ascent over single-choice changes (``polish``), on the same objectives.
Each budget's winner becomes a trial of the study (user attribute ``refined_for``: ``"<device> <= <ms>"``), with
its accuracy and every device's latency, so the fronts, ``nas query`` and the dashboard see it like any other
trial. A refinement already in the study is not run again.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import optuna

from search_spaces import Arch, SearchSpace, arch_counts, arch_to_string

from .evolution import evolution_search

__all__ = ["REFINED_ATTR", "neighbours", "polish", "refine_budgets"]

REFINED_ATTR = "refined_for"
POPULATION = 100          # Once-for-All's population
SEEDS = 100               # of it, the study's most accurate subnets within the budget (25 + random: worse)
PATIENCE = 10             # generations without a better subnet before a refinement stops
EVOLUTION_SHARE = 0.6     # of a refinement's evaluations; the rest polish the winner (``polish``)

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
    table = study_trials(study, space)
    distributions = {name: optuna.distributions.CategoricalDistribution(list(choices))
                     for name, choices in search_params(space).items()}
    budgets = config.budgets
    added = []
    for n, (device, budget) in enumerate(todo):
        k = list(config.devices).index(device)
        within = np.flatnonzero(table.latency_ms[:, k] <= budget)
        if within.size == 0:
            continue  # no subnet of the study meets it; write_fronts says so for a device's own budget
        best = within[np.argsort(-table.accuracy[within], kind="stable")][:SEEDS]
        evolve = max(POPULATION, int(evaluations * EVOLUTION_SHARE))
        result = evolution_search(space, accuracy, latency[device], budget, initial=[table.archs[i] for i in best],
                                  generations=max(1, math.ceil(evolve / POPULATION) - 1),
                                  max_evaluations=evolve, patience=PATIENCE, seed=seed + n)
        arch, best_acc, used = polish(space, result.best_arch, float(result.best_accuracy), accuracy,
                                      latency[device], budget, evaluations - result.accuracy_evaluations)
        used += result.accuracy_evaluations
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
                     f"({used} evaluations; best of the front there "
                     f"{100 * float(table.accuracy[best[0]]):.2f}%)")
    return added
