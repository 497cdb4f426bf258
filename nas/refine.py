"""Best subnet per latency budget: a refinement of the front for each budget a user will ask for.

A Pareto front found with a few thousand trials is good everywhere and best nowhere in particular: at one
budget, Once-for-All's evolution (50,100 evaluations for that budget alone) finds subnets a fraction of a point
more accurate. For each ``(device, budget)`` of ``SearchConfig.refinement_targets`` this runs that evolution
(``nas.evolution``, Once-for-All's operators and redraw rule), started from the study's most accurate subnets
within the budget instead of random ones and stopped when it stops improving, on the same objectives.
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

__all__ = ["REFINED_ATTR", "refine_budgets"]

REFINED_ATTR = "refined_for"
POPULATION = 100          # Once-for-All's population; the seeds are the study's best this many within budget
PATIENCE = 10             # generations without a better subnet before a refinement stops

ArchBatchFn = Callable[[Sequence[Arch]], np.ndarray]


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
        best = within[np.argsort(-table.accuracy[within], kind="stable")][:POPULATION]
        result = evolution_search(space, accuracy, latency[device], budget, initial=[table.archs[i] for i in best],
                                  generations=max(1, math.ceil(evaluations / POPULATION) - 1),
                                  max_evaluations=evaluations, patience=PATIENCE, seed=seed + n)
        arch = result.best_arch
        lats = [float(latency[d]([arch])[0]) for d in config.devices]
        counts = arch_counts(space, arch)
        trial = optuna.trial.create_trial(
            params=params_of(space, arch), distributions=distributions,
            values=[float(result.best_accuracy), *lats],
            user_attrs={REFINED_ATTR: _key(device, budget), "arch": arch_to_string(space, arch),
                        "params": counts.params, "macs": counts.macs,
                        "refine_evaluations": result.accuracy_evaluations},
            system_attrs={f"constraints:latency:{d}": lats[j] - budgets[d]
                          for j, d in enumerate(config.devices) if d in budgets},
        )
        study.add_trial(trial)
        added.append(trial)
        if progress is not None:
            progress(f"refined {_key(device, budget)}: {100 * result.best_accuracy:.2f}% at {lats[k]:.3f} ms "
                     f"({result.accuracy_evaluations} evaluations, {result.wall_s:.1f} s; best of the front there "
                     f"{100 * float(table.accuracy[best[0]]):.2f}%)")
    return added
