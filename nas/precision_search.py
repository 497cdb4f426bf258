"""The precision search: quantised subnets join the study, so the fronts hold arch + precision policy.

After the fp32 search (and its budget refinement), with ``search.precisions: [fp32, int8]``:

1. **Screen** every fp32 subnet of the study at int8, for free: each device's latency predictor reads the int8
   entries of its lookup table (``LookupTable.predict(space, archs, policies)``), and the int8 accuracy is
   estimated as the search accuracy minus the median drop measured so far (none in the first round). A subnet
   is a candidate when its int8 estimate would be non-dominated among the fp32 subnets, the quantised ones
   already measured and the other estimates, within the device's budget; ``search.precision_candidates`` per
   device and round at most, spread over the latency range.
2. **Measure** each candidate quantised: extracted, BN-recalibrated, calibrated and quantised exactly as
   ``nas query --export`` writes it (``nas.quantize``), its top-1 measured by ONNX Runtime on the validation split
   (``DirectEvaluator.evaluate(archs, policies=...)``). Its search accuracy is the fp32 search accuracy minus the
   measured drop (with direct accuracy: the quantised accuracy itself), so predicted and measured subnets stay
   on one scale.
3. With ``search.mixed_precision``, each candidate also gets per-stage mixes: its groups (stem, stages, head)
   in int8 one by one from the least sensitive (KL of its outputs from fp32's, ``group_sensitivities``), all but
   the 1, 2 and 3 most sensitive, each measured the same way and timed by the table per group.
4. In the last round, with cheap objectives (the accuracy predictor and a ``table``/``table_linear`` latency
   predictor), every budget the fp32 search refines (``nas.refine``) is refined at int8 too: the most accurate
   subnet whose int8 version the table puts within it (accuracy estimated with the measured drop) is measured too
   (its trial's ``refined_for`` says ``<device> <= <budget> ms (int8)``).
5. Each measured subnet is a **trial** of the study (its arch parameters plus ``precision.<group>``, its
   objectives, user attributes ``policy``, ``precision``, ``direct_accuracy``, ``accuracy_drop``): the fronts,
   optuna-dashboard and ``trials_dataframe()`` see them as any other.

A second round screens again with the measured drop. The study records the rounds done, over how many fp32
trials and whether with mixes (user attribute ``precision_search``): a continued search screens again only when the
fp32 search has grown, ``search.mixed_precision`` changed or a round is missing (after a kill), and never measures a
subnet already in the study under that policy
(accuracies are cached by the evaluator too).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import optuna

from search_spaces import Arch, PrecisionPolicy, SearchSpace, arch_counts, arch_to_string, precision_label

from .errors import UsageError
from .fronts import member_id
from .pareto import non_dominated_mask
from .refine import REFINED_ATTR
from .search_config import SearchConfig
from .search_params import params_of, policy_distributions, policy_params, search_params
from .study import TrialTable, study_trials

__all__ = ["CALIBRATION_ATTR", "POLICY_ATTR", "ROUNDS", "check_calibration", "check_precisions", "mixed_latency",
           "search_precisions"]

POLICY_ATTR = "policy"
ROUNDS = 2
# The study's record of the rounds done, and over how many fp32 trials: a search grown since screens again.
STATE_ATTR = "precision_search"
# The study's record of the calibration method its quantised subnets were measured under (a study without one:
# nas.search_config.DEFAULT_QUANTIZATION_METHOD, what the search used before the method could be chosen).
CALIBRATION_ATTR = "quantization_method"
# With mixed precision: the mixes that keep the 1, 2 and 3 most sensitive groups in fp32.
MIXED_KEEP = (1, 2, 3)

MixedFn = Callable[[Sequence[Arch], Sequence[PrecisionPolicy | None]], np.ndarray]


def mixed_latency(predictor: Any, device: str, space: SearchSpace) -> MixedFn:
    """``(archs, policies) -> ms`` of a device's latency predictor, checked now on the space's largest subnet in
    int8: a predictor that cannot read precision (no table with int8 entries, or a kind that does not see
    precision) is a ``UsageError`` naming what to build."""
    from search_spaces import largest

    predict = getattr(predictor, "predict_mixed", None)
    kind = getattr(predictor, "kind", type(predictor).__name__)
    hint = (f"build its int8 entries: nas latency build --space {space.name} --device {device} --precisions fp32 "
            f"int8 (then a table, table_linear or residual predictor reads them)")
    if not callable(predict):
        raise UsageError(f"search.precisions lists int8, and the latency predictor of device {device!r} ({kind}) "
                         f"cannot predict quantised subnets; {hint}")

    def fn(archs: Sequence[Arch], policies: Sequence[PrecisionPolicy | None]) -> np.ndarray:
        return np.asarray(predict(list(archs), list(policies)), dtype=np.float64).ravel()

    try:
        fn([largest(space)], [PrecisionPolicy.uniform(space, "int8")])
    except Exception as exc:  # LatencyError (no int8 entries, a kind blind to precision), MissingEntryError
        raise UsageError(f"device {device!r} cannot predict int8 subnets ({exc}); {hint}") from None
    return fn


def check_precisions(config: SearchConfig, space: SearchSpace, latency_predictors: Mapping[str, Any],
                     evaluator: Any) -> dict[str, MixedFn]:
    """Each device's ``(archs, policies) -> ms`` when ``config`` lists int8 (empty otherwise), checked before any
    work: ``UsageError`` for a run without a dataset (quantised subnets are measured, never predicted) or a device
    whose predictor cannot read int8."""
    if not config.quantized:
        return {}
    if evaluator is None:
        raise UsageError("search.precisions lists int8, and quantised subnets are measured on the validation "
                         "split: the config needs a dataset section (a run without one can only search fp32)")
    return {d: mixed_latency(latency_predictors[d], d, space) for d in config.devices}


def _spread(order: np.ndarray, limit: int) -> np.ndarray:
    """At most ``limit`` of ``order`` (indices sorted by latency), evenly spread over it."""
    if order.size <= limit:
        return order
    return order[np.unique(np.linspace(0, order.size - 1, limit).round().astype(int))]


def _measured_drop(study: optuna.Study) -> float:
    drops = [t.user_attrs["accuracy_drop"] for t in study.get_trials(deepcopy=False)
             if t.state == optuna.trial.TrialState.COMPLETE and "accuracy_drop" in t.user_attrs
             and t.user_attrs.get("precision") == "int8"]
    return float(np.median(drops)) if drops else 0.0


def _key(arch: Arch, policy: PrecisionPolicy) -> str:
    """The subnet's id as the study's trial table and the fronts know it (``nas.fronts.member_id``)."""
    return member_id(arch.arch_id, str(policy))


def _screen(table: TrialTable, space: SearchSpace, config: SearchConfig, latency: Mapping[str, MixedFn],
            drop: float) -> list[Arch]:
    """fp32 subnets of the study (its trials ``table``) whose uniform int8 version could join a device's front
    (see the module; ``drop``: the median measured int8 accuracy drop) and that still miss a measurement: their
    int8 version, or (with ``search.mixed_precision``) any mix."""
    fp32 = table.fp32()
    keys = set(table.keys())
    mixed = {a.arch_id for i, a in enumerate(table.archs) if precision_label(table.policy(i)) == "mixed"}
    int8 = PrecisionPolicy.uniform(space, "int8")
    first: dict[str, int] = {}
    for i, arch in enumerate(fp32.archs):
        first.setdefault(arch.arch_id, i)
    idx = np.array(sorted(first.values()), dtype=int)
    if idx.size == 0:
        return []
    archs = [fp32.archs[i] for i in idx]
    est_acc = np.clip(fp32.accuracy[idx] - drop, 0.0, 1.0)
    quantised = [i for i in range(len(table.archs)) if table.policy(i) is not None]
    chosen: dict[str, Arch] = {}
    for k, device in enumerate(config.devices):
        lat_q = latency[device](archs, [int8] * len(archs))
        acc = [est_acc, table.accuracy[quantised]]
        lat = [lat_q, table.latency_ms[quantised, k]]
        if "fp32" in config.precisions:
            acc.append(fp32.accuracy[idx])
            lat.append(fp32.latency_ms[idx, k])
        acc_all, lat_all = np.concatenate(acc), np.concatenate(lat)
        budget = config.budgets.get(device)
        within = np.ones(acc_all.size, dtype=bool) if budget is None else lat_all <= budget
        mask = np.zeros(acc_all.size, dtype=bool)
        if within.any():
            mask[np.flatnonzero(within)] = non_dominated_mask(acc_all[within], lat_all[within])
        new = [j for j in np.flatnonzero(mask[:len(archs)]) if archs[j].arch_id not in chosen and (
               _key(archs[j], int8) not in keys or (config.mixed_precision and archs[j].arch_id not in mixed))]
        order = np.array(sorted(new, key=lambda j: lat_q[j]), dtype=int)
        for j in _spread(order, config.precision_candidates):
            chosen[archs[j].arch_id] = archs[j]
    return list(chosen.values())


def _refined(study: optuna.Study, table: TrialTable, space: SearchSpace, config: SearchConfig, accuracy: Callable,
             latency_predictors: Mapping[str, Any], drop: float, seed: int, log: Callable[[str], None] | None
             ) -> dict[str, tuple[Arch, str]]:
    """The per-budget refinement (``nas.refine.search_budget``) at int8: for each budget to refine, the subnet whose
    int8 version scores best within it (accuracy: the search's minus the median measured drop; latency: the
    device's table at int8 with its correction), not yet measured at int8. Only with cheap objectives (the
    accuracy predictor, a ``table``/``table_linear`` latency predictor): refinement scores 100,000s of subnets.
    Returns arch id to (arch, the budget it was refined for)."""
    from search_spaces._genome import archs_of, genomes_of

    from .refine import SEEDS, search_budget
    from .scoring import genome_scorer, precision_latency_scorer

    evaluations = config.evaluations_per_refinement
    targets = config.refinement_targets()
    if evaluations <= 0 or not targets:
        return {}
    acc_g, vectorised = genome_scorer(space, accuracy)
    if not vectorised:
        return {}
    keys = set(table.keys())
    fp32 = table.fp32()
    int8 = PrecisionPolicy.uniform(space, "int8")
    done = {t.user_attrs.get(REFINED_ATTR) for t in study.get_trials(deepcopy=False)}
    seeds_all = genomes_of(space, fp32.archs)
    found: dict[str, tuple[Arch, str]] = {}
    for n, (device, budget) in enumerate(targets):
        key = f"{device} <= {budget:g} ms (int8)"
        lat_g = precision_latency_scorer(space, latency_predictors[device], "int8")
        if key in done or lat_g is None or not len(seeds_all):
            continue
        within = np.flatnonzero(lat_g(seeds_all) <= budget)
        if within.size == 0:
            continue
        best = within[np.argsort(-fp32.accuracy[within], kind="stable")][:SEEDS]
        result = search_budget(space, lambda g: np.clip(acc_g(g) - drop, 0.0, 1.0), lat_g, budget,
                               seeds_all[best], seed=seed + n, max_evaluations=evaluations)
        if result is None:
            continue
        arch = archs_of(space, result.genome[None, :])[0]
        if _key(arch, int8) not in keys:
            found.setdefault(arch.arch_id, (arch, key))
        if log is not None:
            log(f"refined {key}: {100 * result.accuracy:.2f}% estimated at {result.latency_ms:.3f} ms "
                f"({result.evaluations} evaluations)")
    return found


def _mixes(space: SearchSpace, arch: Arch, order: Sequence[str]) -> list[PrecisionPolicy]:
    """Per-stage mixes of ``arch``: the groups of ``order`` (least sensitive first) int8 but the last 1, 2, 3."""
    from .quantize import prefix_policies

    counts = sorted({len(order) - keep for keep in MIXED_KEEP if 0 < len(order) - keep < len(order)})
    return prefix_policies(space, arch, list(order), counts)


def check_calibration(study: optuna.Study, config: SearchConfig) -> None:
    """``UsageError`` when the study's quantised subnets were calibrated with another method than
    ``search.quantization_method``: their accuracies (measured once, never again) would stand on fronts recorded as
    the config's calibration, and exports would calibrate otherwise. Checked before any trial."""
    from .search_config import DEFAULT_QUANTIZATION_METHOD
    from .search_params import POLICY_PREFIX

    if not config.quantized:
        return  # the fronts hold no quantised subnet (write_fronts leaves the study's out)
    if not any(any(k.startswith(POLICY_PREFIX) for k in t.params) for t in study.get_trials(deepcopy=False)):
        return  # none measured yet
    recorded = study.user_attrs.get(CALIBRATION_ATTR) or DEFAULT_QUANTIZATION_METHOD
    if recorded != config.quantization_method:
        raise UsageError(f"study {study.study_name!r} holds quantised subnets calibrated with {recorded!r}, and "
                         f"search.quantization_method is {config.quantization_method!r}: set it back to "
                         f"{recorded!r}, or set search.study_name to another name to search under "
                         f"{config.quantization_method!r} (the stored fronts are kept)")


def search_precisions(study: optuna.Study, space: SearchSpace, config: SearchConfig, accuracy: Callable,
                      latency_predictors: Mapping[str, Any], evaluator: Any, *,
                      log: Callable[[str], None] | None = None) -> list[optuna.trial.FrozenTrial]:
    """Add the quantised subnets that could join the fronts to ``study`` as trials (see the module); returns
    the trials added. ``accuracy``: the search's fp32 accuracy objective (batched); ``evaluator``: a
    ``DirectEvaluator`` (quantised subnets are always measured, never predicted).

    Raises:
        UsageError: no evaluator (a run without a dataset), or a device whose predictor cannot read int8.
    """
    if not config.quantized:
        return []
    latency = check_precisions(config, space, latency_predictors, evaluator)
    check_calibration(study, config)
    if study.user_attrs.get(CALIBRATION_ATTR) != config.quantization_method:  # the method of what it adds now
        study.set_user_attr(CALIBRATION_ATTR, config.quantization_method)
    int8 = PrecisionPolicy.uniform(space, "int8")
    distributions = {name: optuna.distributions.CategoricalDistribution(list(choices))
                     for name, choices in search_params(space).items()}
    distributions.update(policy_distributions(space))
    budgets = config.budgets
    added: list[optuna.trial.FrozenTrial] = []
    table = study_trials(study, space)  # read again after each round that adds trials
    fp32_trials = len(table.fp32().archs)
    state = study.user_attrs.get(STATE_ATTR) or {}
    same = state.get("fp32_trials") == fp32_trials and bool(state.get("mixed")) == config.mixed_precision
    first = int(state.get("rounds", 0)) + 1 if same else 1
    done = {"fp32_trials": fp32_trials, "mixed": config.mixed_precision}
    for round_ in range(first, ROUNDS + 1):
        drop = _measured_drop(study)
        archs = _screen(table, space, config, latency, drop)
        refined = _refined(study, table, space, config, accuracy, latency_predictors, drop, config.seed, log) \
            if round_ == ROUNDS else {}  # with the drop measured in the first round
        archs += [a for i, (a, _key) in refined.items() if i not in {b.arch_id for b in archs}]
        if not archs:  # nothing to measure this round (the last one may still refine budgets at int8)
            study.set_user_attr(STATE_ATTR, {**done, "rounds": round_})
            continue
        known = set(table.keys())
        subjects = [a for a in archs if _key(a, int8) not in known]
        policies: list[PrecisionPolicy] = [int8] * len(subjects)
        uniform = len(subjects)
        if config.mixed_precision:
            for arch, ranked in zip(archs, evaluator.group_sensitivities(archs)):
                for policy in _mixes(space, arch, [group for group, _kl in ranked]):
                    if _key(arch, policy) not in known:
                        subjects.append(arch)
                        policies.append(policy)
        if not subjects:
            study.set_user_attr(STATE_ATTR, {**done, "rounds": round_})
            continue
        quantised = np.asarray(evaluator.evaluate(subjects, "val", policies), dtype=np.float64)
        direct = np.asarray(evaluator.evaluate(subjects, "val"), dtype=np.float64)
        searched = np.asarray(accuracy(subjects), dtype=np.float64)
        values = np.clip(searched - (direct - quantised), 0.0, 1.0)
        lats = np.stack([latency[d](subjects, policies) for d in config.devices], axis=1)
        for i, (arch, policy) in enumerate(zip(subjects, policies)):
            counts = arch_counts(space, arch)
            trial = optuna.trial.create_trial(
                params={**params_of(space, arch), **policy_params(space, policy)}, distributions=distributions,
                values=[float(values[i]), *map(float, lats[i])],
                user_attrs={"arch": arch_to_string(space, arch), "params": counts.params, "macs": counts.macs,
                            POLICY_ATTR: str(policy), "precision": precision_label(policy),
                            "direct_accuracy": float(quantised[i]), "accuracy_drop": float(direct[i] - quantised[i]),
                            **({REFINED_ATTR: refined[arch.arch_id][1]}
                               if arch.arch_id in refined and policy == int8 else {})},
                system_attrs={f"constraints:latency:{d}": float(lats[i, k]) - budgets[d]
                              for k, d in enumerate(config.devices) if d in budgets},
            )
            study.add_trial(trial)
            added.append(trial)
        study.set_user_attr(STATE_ATTR, {**done, "rounds": round_})
        table = study_trials(study, space)
        if log is not None:
            drop = 100.0 * (direct[:uniform] - quantised[:uniform])
            change = (f" (top-1 change {-np.median(drop):+.2f} points median, {-drop.max():+.2f} worst)"
                      if uniform else "")
            log(f"precision search, round {round_}: {uniform} subnets quantised to int8{change}"
                + (f", {len(subjects) - uniform} per-stage mixes" if config.mixed_precision else ""))
    return added
