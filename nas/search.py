"""The search: an Optuna study over a space against accuracy and every device's latency, then per-device fronts.

``run_search`` runs (or continues) the study (``nas.study``: storage, sampler, the ask/tell loop; parameters
in ``nas.search_params``), refines each budget users will ask for (``nas.refine``), and writes one Pareto front
per device to the run's front store in one transaction; ``hardware_in_the_loop`` re-measures the front members
on their devices. Paths and the one-search-per-run lock are in ``nas.search_paths``.

One study covers every target device, so each subnet's accuracy is computed once and reused by every device's
front. (One study per device sharing an accuracy cache was the alternative; it repeats sampler work per device
and makes the devices' searches propose different subnets, so more subnets need an accuracy evaluation.)
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import optuna

from search_spaces import Arch, SearchSpace, arch_to_string, get_space

from .errors import UsageError
from .fronts import FrontMember, ReferencePoint, check_front_store, get_front_store
from .pareto import pareto_indices
from .precision_search import check_calibration, check_precisions, search_precisions
from .refine import refine_budgets
from .search_config import SearchConfig
from .search_paths import run_path, search_lock, search_paths
from .study import ArchBatchFn, as_batch_fn, open_study, optimize, study_trials, supernet_identity

__all__ = ["HilReport", "front_members", "fronts_settings", "hardware_in_the_loop", "run_search",
           "write_fronts"]


# --- fronts --------------------------------------------------------------------------------------------


def front_members(archs: Sequence[Arch], accuracy: np.ndarray, latency_ms: np.ndarray,
                  max_latency_ms: float | None = None, keys: Sequence[str] | None = None) -> list[int]:
    """Indices of the distinct non-dominated subnets within the budget, latency ascending. Subnets are told apart
    by ``keys`` (``TrialTable.keys``: arch id and precision policy), by arch id without them."""
    first: dict[str, int] = {}
    for i, arch in enumerate(archs):
        if max_latency_ms is None or latency_ms[i] <= max_latency_ms:
            first.setdefault(arch.arch_id if keys is None else keys[i], i)
    idx = np.array(sorted(first.values()), dtype=int)
    if idx.size == 0:
        return []
    keep = pareto_indices(accuracy[idx], latency_ms[idx])
    return [int(i) for i in idx[keep]]


def run_search(config: SearchConfig, run_dir: Any, accuracy: Any, latency_predictors: Mapping[str, Any], *,
               space: SearchSpace | str, final_evaluator: Any = None,
               counts_fn: Callable[[SearchSpace, Arch], Any] | None = None, checkpoint: str | None = None,
               progress: Callable[[int, int], None] | None = None,
               meta: Mapping[str, Any] | None = None,
               log: Callable[[str], None] | None = None,
               accuracy_identity: str | None = None) -> dict[str, list[FrontMember]]:
    """Search, then write one front per device to the run's front store; returns the fronts.

    Args:
        config: the parsed search config (devices, sampler, budgets, storage).
        run_dir: the run folder (a path or a ``RunDir``).
        accuracy: the accuracy objective, batched (callable or ``.predict``/``.evaluate``): validation
            accuracy from direct evaluation or from a predictor.
        latency_predictors: device id to a latency predictor (``.predict(archs) -> ms``) or callable.
        space: the searched space (or its name), limited to ``config.resolutions`` when those are set.
        final_evaluator: optional ``.evaluate(archs, split)`` giving direct accuracy; front members get
            their validation accuracy from it (``split="val"``) and their test accuracy (``split="test"``).
        counts_fn: ``(space, arch) -> Counts`` with ``params`` and ``macs`` (default
            ``search_spaces.arch_counts``, from the plan).
        checkpoint: the supernet checkpoint the members' weights come from, stored with each member
            (relative to the run folder when it lies inside it, so a copied or moved run keeps working);
            the study records its identity (``nas.study.supernet_identity``) and refuses another's.
        progress: called with (finished, total) after each batch.
        meta: JSON values kept in the front store (``dataset``: the config's dataset section and
            ``bn_images``, so that ``nas query --export`` can recalibrate batch norms from the run alone).
        log: receives a line per refined budget (``nas.refine``: ``search.budgets_ms`` and each device's
            ``max_latency_ms``, refined after the trials when the accuracy objective is cheap) and per round of
            the precision search.
        accuracy_identity: what the accuracy objective is (``"direct"`` or ``"predictor"``), recorded by the
            study, which refuses another (``nas.study.open_study``).

    With ``config.precisions`` listing int8, the refinement is followed by the precision search
    (``nas.precision_search``): quantised subnets that could join a front are measured through
    ``final_evaluator`` and added as trials; the fronts then hold fp32 and quantised members (``policy``).

    The study is the run's (named after it unless ``config.study_name`` says otherwise) in a journal file of
    the run, or in ``config.storage``: a database that processes searching it at once share, each running
    its part of ``config.n_trials`` (``nas.study_shared``); each then writes the fronts of all of them.

    Raises:
        BusyError: another process is searching this run (``search_lock``).
        UsageError: a device's latency budget is met by no subnet found (the fronts stored before are kept);
            the study holds another space's, devices' or supernet's trials.
        DamagedFileError: the run's front store is damaged (found before the first trial; nothing written).
    """
    space = config.restrict(get_space(space))
    missing = [d for d in config.devices if d not in latency_predictors]
    if missing:
        raise UsageError(f"no latency predictor for device(s) {', '.join(missing)}; have: "
                         f"{', '.join(latency_predictors) or 'none'}")
    acc_fn = as_batch_fn(accuracy, "evaluate")
    lat_fns = {d: as_batch_fn(latency_predictors[d]) for d in config.devices}
    check_precisions(config, space, latency_predictors, final_evaluator)
    with search_lock(run_dir):
        check_front_store(search_paths(run_dir).fronts)  # a damaged store fails now, not after the trials
        study = open_study(config, run_dir, space, supernet=supernet_identity(checkpoint), accuracy=accuracy_identity)
        check_calibration(study, config)
        optimize(study, space, config, acc_fn, lat_fns, progress)
        refine_budgets(study, space, config, acc_fn, lat_fns, seed=config.seed, progress=log)
        search_precisions(study, space, config, acc_fn, latency_predictors, final_evaluator, log=log)
        fronts = write_fronts(study, space, config, run_dir, lat_fns, final_evaluator=final_evaluator,
                              counts_fn=counts_fn, checkpoint=_run_relative(checkpoint, run_dir),
                              search_accuracy=acc_fn, meta=meta)
    # Stored relative to the run folder; returned as the caller named it.
    return {device: [replace(m, checkpoint=checkpoint) for m in members]
            for device, members in fronts.items()}


def _run_relative(path: str | None, run_dir: Any) -> str | None:
    """``path`` relative to the run folder when it lies inside it (``nas.query.open_fronts`` resolves it)."""
    if not path:
        return path
    try:
        return str(Path(path).resolve().relative_to(run_path(run_dir).resolve()))
    except ValueError:
        return path


def write_fronts(study: optuna.Study, space: SearchSpace, config: SearchConfig, run_dir: Any,
                 latency: Mapping[str, ArchBatchFn], *, final_evaluator: Any = None,
                 counts_fn: Callable[[SearchSpace, Arch], Any] | None = None, checkpoint: str | None = None,
                 search_accuracy: ArchBatchFn | None = None,
                 meta: Mapping[str, Any] | None = None) -> dict[str, list[FrontMember]]:
    """Per-device fronts of the study's finished trials, stored (with the reference subnets) in the run.

    All devices' fronts replace the stored ones in one transaction, and only when every one is complete:
    a device whose budget no subnet meets is a ``UsageError`` naming the fastest subnet found, and the
    store is left as it was. Members keep the latency measured on their device by hardware in the loop
    (the store's measurements, by arch id and device). A damaged store is a ``DamagedFileError`` naming it,
    raised when it is opened or read, before anything is written into it. Fronts written from the same
    finished trials under the same settings (``_written_from``) are left as they are: a search that added
    nothing keeps what hardware in the loop made of them, and ``nas run``'s later stages stay done.
    """
    from search_spaces import largest, smallest

    store = get_front_store(search_paths(run_dir).fronts)
    source = _written_from(study, space, config, checkpoint, meta, direct=final_evaluator is not None)
    if store.get_meta(WRITTEN_FROM_KEY) == source and set(config.devices) <= set(store.devices()):
        return {d: store.front(d) for d in config.devices}
    if counts_fn is None:
        from search_spaces import arch_counts as counts_fn  # noqa: N813
    table = study_trials(study, space)
    # Only the precisions the config lists: a study that once had int8 trials keeps them, but a config that
    # narrows search.precisions to fp32 (or to int8) fronts only what it asks for.
    quantized_ok, fp32_ok = any(p != "fp32" for p in config.precisions), "fp32" in config.precisions
    keep = [i for i in range(len(table.archs)) if (quantized_ok if table.policy(i) is not None else fp32_ok)]
    if len(keep) < len(table.archs):
        table = table.subset(keep)
    archs, acc, lats, keys = table.archs, table.accuracy, table.latency_ms, table.keys()
    budgets = config.budgets
    chosen = {d: front_members(archs, acc, lats[:, k], budgets.get(d), keys) for k, d in enumerate(config.devices)}
    for k, device in enumerate(config.devices):
        if not chosen[device]:
            raise UsageError(_empty_front_message(space, device, budgets.get(device), archs, lats[:, k]))
    member_idx = sorted({i for idx in chosen.values() for i in idx})
    val = {i: float(acc[i]) for i in member_idx}
    test: dict[int, float | None] = dict.fromkeys(member_idx)
    if final_evaluator is not None and member_idx:
        member_archs = [archs[i] for i in member_idx]
        policies = [table.policy(i) for i in member_idx]
        extra = {"policies": policies} if any(p is not None for p in policies) else {}
        direct_val = as_batch_fn(lambda a: final_evaluator.evaluate(a, split="val", **extra))(member_archs)
        direct_test = as_batch_fn(lambda a: final_evaluator.evaluate(a, split="test", **extra))(member_archs)
        val = {i: float(v) for i, v in zip(member_idx, direct_val)}
        test = {i: float(v) for i, v in zip(member_idx, direct_test)}
    counts = {i: counts_fn(space, archs[i]) for i in member_idx}
    fronts: dict[str, list[FrontMember]] = {}
    references: dict[str, list[ReferencePoint]] = {}
    ref_archs = {"largest": largest(space), "smallest": smallest(space)}
    ref_acc = (search_accuracy(list(ref_archs.values())) if search_accuracy is not None
               else np.full(len(ref_archs), np.nan))
    for k, device in enumerate(config.devices):
        fronts[device] = [
            FrontMember(
                device=device, arch=archs[i], arch_string=arch_to_string(space, archs[i]),
                arch_id=archs[i].arch_id, val_accuracy=val[i], test_accuracy=test[i],
                predicted_latency_ms=float(lats[i, k]), measured_latency_ms=None,  # set from the store below
                macs=int(counts[i].macs), params=int(counts[i].params), checkpoint=checkpoint,
                trial_number=table.numbers[i],
                policy=None if table.policy(i) is None else str(table.policy(i)),
            )
            for i in chosen[device]
        ]
        ref_lat = latency[device](list(ref_archs.values()))
        references[device] = [
            ReferencePoint(device=device, name=name, arch=arch, accuracy=float(ref_acc[j]),
                           latency_ms=float(ref_lat[j]))
            for j, (name, arch) in enumerate(ref_archs.items())
        ]
    with store.transaction():
        for device in config.devices:
            measured = _measured_ms(store, device)
            store.write_front(device, [replace(m, measured_latency_ms=measured.get(m.member_id))
                                       for m in fronts[device]])
            store.write_references(device, references[device])
        store.set_meta("space", space.name)
        store.set_meta("budgets_ms", budgets)
        store.set_meta("devices", list(config.devices))
        store.set_meta("precisions", list(config.precisions))
        store.set_meta("mixed_precision", config.mixed_precision)
        store.set_meta("quantization_method", config.quantization_method)
        for key, value in (meta or {}).items():
            store.set_meta(key, value)
        store.set_meta(WRITTEN_FROM_KEY, source)
    return {d: store.front(d) for d in config.devices}


WRITTEN_FROM_KEY = "written_from"


def _written_from(study: optuna.Study, space: SearchSpace, config: SearchConfig, checkpoint: str | None,
                  meta: Mapping[str, Any] | None, direct: bool) -> Any:
    """What the fronts ``write_fronts`` stores are made of (as the store keeps it, JSON): the study's finished
    trials (trials are only ever added) and every setting the fronts depend on."""
    finished = [t.number for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))]
    return json.loads(json.dumps({
        "study": study.study_name, "trials": len(finished), "last_trial": max(finished, default=-1),
        "space": space.name, "resolutions": list(space.resolutions), "devices": list(config.devices),
        **fronts_settings(config), "checkpoint": checkpoint, "meta": dict(meta or {}), "direct_accuracy": direct,
    }, sort_keys=True, default=str))


def fronts_settings(config: SearchConfig) -> dict[str, Any]:
    """The search settings stored fronts are made under (as ``write_fronts`` records them in ``written_from``,
    JSON): the accuracy objective, each device's budget (which caps its front), the budgets refined, the precisions
    and their calibration (of quantised subnets; None for fp32-only fronts). Fronts written under other settings are
    not this config's (``search_is_complete``)."""
    return json.loads(json.dumps({
        "accuracy": config.accuracy, "budgets_ms": config.budgets, "refine_budgets_ms": list(config.budgets_ms),
        "precisions": list(config.precisions), "mixed_precision": config.mixed_precision,
        "quantization_method": config.quantization_method if config.quantized else None,
    }, sort_keys=True))


def _measured_ms(store: Any, device: str) -> dict[str, float]:
    """Member id (``FrontMember.member_id``: the arch id for fp32, with the policy otherwise) to the latency
    measured on ``device`` (hardware in the loop), from the store."""
    measured = {m.member_id: m.measured_latency_ms for m in store.front(device) if m.measured_latency_ms is not None}
    measured.update({m.member_id: m.measured_latency_ms for m in store.measurements(device)})
    return {key: float(ms) for key, ms in measured.items()}


def _empty_front_message(space: SearchSpace, device: str, budget_ms: float | None, archs: Sequence[Arch],
                         latency_ms: np.ndarray) -> str:
    if budget_ms is None or not archs or not np.isfinite(latency_ms).any():
        return (f"the search has no finished subnet with a latency on device {device!r} ({len(archs)} trials); "
                f"the stored fronts are kept; run `nas search` again")
    fastest = int(np.nanargmin(latency_ms))
    return (f"no subnet meets the latency budget of {budget_ms:g} ms on device {device!r}: the fastest of "
            f"{len(archs)} subnets found takes {latency_ms[fastest]:.4g} ms "
            f"({arch_to_string(space, archs[fastest])}); set devices[{device}].max_latency_ms (or "
            f"search.latency_budgets_ms) to at least that; the stored fronts are kept")


# --- hardware in the loop ------------------------------------------------------------------------------


class HilReport(NamedTuple):
    """Predicted against measured latency of one device's front members (in the front's order, latency
    ascending before re-measuring); ``policies`` holds each member's precision policy (None: fp32)."""

    device: str
    arch_ids: list[str]
    member_ids: list[str]
    policies: list[str | None]
    predicted_ms: list[float]
    measured_ms: list[float]
    mape: float
    spearman: float
    members_before: int
    members_after: int

    def to_dict(self) -> dict[str, Any]:
        return self._asdict()


def hardware_in_the_loop(run_dir: Any, measure: Mapping[str, Any], *, store: Any = None) -> dict[str, HilReport]:
    """Re-measure every front member on its device and rebuild the fronts on measured latency.

    Args:
        run_dir: the run folder (its ``fronts/fronts.sqlite`` is read and updated).
        measure: device id to a batched measurement (a callable or an object with ``.measure``/``.predict``),
            called ``fn(archs)`` when every member of the device's front is fp32, else ``fn(archs, policies)``
            with one ``search_spaces.PrecisionPolicy`` (or None for fp32) per arch; it returns one latency in
            ms per arch. Devices without one are left as they are.
        store: a front store to use instead of the run's file.

    The predicted and measured latencies are kept in the store's ``measurements`` table (by member id, with
    the policy) and the report is also written to ``fronts/hil.json`` in the run folder. Holds the run's
    ``search_lock``, so a search never rewrites the fronts in between.
    """
    with search_lock(run_dir):
        return _hardware_in_the_loop(run_dir, measure, store)


def _measure_members(fn: Any, members: Sequence[FrontMember]) -> np.ndarray:
    """``fn``'s latency (ms) of each member: ``fn(archs)`` when all are fp32, else ``fn(archs, policies)``."""
    from search_spaces import policy_from_string

    archs = [m.arch for m in members]
    if all(m.policy is None for m in members):
        return as_batch_fn(getattr(fn, "measure", fn))(archs)
    call = getattr(fn, "measure", None) or getattr(fn, "predict", None) or fn
    if not callable(call):
        raise TypeError(f"{fn!r} is neither callable nor has .measure() or .predict()")
    spaces: dict[str, SearchSpace] = {}
    policies = [None if m.policy is None else
                policy_from_string(spaces.setdefault(m.arch.space, get_space(m.arch.space)), m.policy, m.arch)
                for m in members]
    values = np.asarray(call(archs, policies), dtype=np.float64).ravel()
    if values.size != len(archs):
        raise ValueError(f"measure returned {values.size} values for {len(archs)} subnets")
    return values


def _hardware_in_the_loop(run_dir: Any, measure: Mapping[str, Any], store: Any) -> dict[str, HilReport]:
    from scipy.stats import spearmanr

    from .fronts import Measurement, with_measured
    from .io import atomic_write_json

    store = get_front_store(store if store is not None else search_paths(run_dir).fronts)
    reports: dict[str, HilReport] = {}
    for device in store.devices():
        if device not in measure:
            continue
        members = store.front(device)
        measured = _measure_members(measure[device], members)
        predicted = np.array([m.predicted_latency_ms for m in members])
        updated = [with_measured(m, t) for m, t in zip(members, measured)]
        with store.transaction():
            store.write_measurements([Measurement(device, m.arch_id, m.predicted_latency_ms, float(t), m.policy)
                                      for m, t in zip(members, measured)])
            store.write_front(device, updated)
        after = len(store.front(device))
        rho = float(spearmanr(predicted, measured).statistic) if len(members) > 2 else float("nan")
        reports[device] = HilReport(
            device=device, arch_ids=[m.arch_id for m in members], member_ids=[m.member_id for m in members],
            policies=[m.policy for m in members], predicted_ms=predicted.tolist(),
            measured_ms=[float(t) for t in measured],
            mape=float(np.mean(np.abs(predicted - measured) / measured)) if len(members) else float("nan"),
            spearman=rho, members_before=len(members), members_after=after,
        )
    if reports:
        atomic_write_json(search_paths(run_dir).hil, {d: r.to_dict() for d, r in reports.items()})
    return reports
