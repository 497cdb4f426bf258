"""The search stage: an experiment's Optuna search against each device's latency predictor, as library functions.

``search_stage(config, run)`` is what ``nas search`` and ``nas run`` call; ``search_is_complete`` is how
``nas run`` knows the stage is done; ``device_measurers`` gives the hardware-in-the-loop stage its timers.
Every function raises the project's errors (``UsageError``); the command line turns them into one line.
"""

from __future__ import annotations

import functools
import sys
from collections.abc import Mapping, Sequence
from typing import Any

from .errors import UsageError

# Latency predictor kinds, most preferred first, when the device has no evaluation report to choose by.
PREDICTOR_PREFERENCE = ("table_linear", "table", "mlp", "ridge")


def device_store(store: Any = None) -> Any:
    """``store`` when given (a ``DeviceStore`` or its folder), else the one at ``$HWNAS_HOME`` / ``~/.hwnas``."""
    from latency_predictors import DeviceStore, default_root

    if isinstance(store, DeviceStore):
        return store
    return DeviceStore(store if store is not None else default_root())


def load_latency_predictors(space: Any, device_ids: Sequence[str], store: Any = None) -> dict[str, Any]:
    """Device id to its best latency predictor for ``space`` from the device store (``$HWNAS_HOME``).

    "Best" is the predictor with the most subnets within +-10% in the device's ``nas latency eval`` report
    when there is one, else the first of ``PREDICTOR_PREFERENCE`` that exists. A device without a table or
    predictor is a ``UsageError`` naming the command that makes one.
    """
    from latency_predictors.workflow import load_predictors, read_report

    store = device_store(store)
    chosen: dict[str, Any] = {}
    for device_id in device_ids:
        device = store.find(device_id)
        predictors = load_predictors(store, device, space)
        if not predictors:
            raise UsageError(f"no latency table or predictor for space {space.name!r} on device {device_id!r}; "
                             f"run `nas latency build --space {space.name} --device {device_id}` (or "
                             f"`nas latency fit`) first")
        kind = None
        report = store.eval_dir(device_id) / f"{space.name}.json"
        if report.is_file():
            rows = read_report(report).get("predictors", {})
            ranked = sorted((k for k in rows if k in predictors and k != "flops"),
                            key=lambda k: (rows[k].get("within_10pct", 0), rows[k].get("spearman", 0)), reverse=True)
            kind = ranked[0] if ranked else None
        if kind is None:
            kind = next((k for k in PREDICTOR_PREFERENCE if k in predictors), None)
        if kind is None:
            raise UsageError(f"device {device_id!r} has only a FLOPs predictor for {space.name!r}; latency must "
                             f"be measured: run `nas latency build` or `nas latency fit`")
        chosen[device_id] = predictors[kind]
    return chosen


def search_stage(config: Any, run: Any, *, n_trials: int | None = None, latency_predictors: Mapping[str, Any]
                 | None = None, progress: bool = True, store: Any = None) -> dict[str, list]:
    """Run (or continue) the search of an experiment and write its fronts; returns them per device.

    Args:
        config: the ``ExperimentConfig`` (its ``search`` section, devices included, parsed at load).
        run: its ``RunDir`` (the trained supernet must be there).
        n_trials: overrides ``search.n_trials``.
        latency_predictors: device id to predictor; default: loaded from ``store`` (a ``DeviceStore`` or its
            folder; default ``$HWNAS_HOME`` or ``~/.hwnas``).

    Everything that can be checked is checked before any work starts, and before anything is written to the
    run (``check_search``): the config's numbers (and ``n_trials``), the study's storage, the run's supernet
    (this config's, ``nas.accuracy.check_run_supernet``), the predictors and budgets. A run another process is
    searching is refused first (the run's ``search_lock``, held until the fronts are written).
    """
    import contextlib

    from .rundir import RunDir
    from .search_paths import search_lock, search_paths

    run = run if isinstance(run, RunDir) else RunDir(run)
    search = config.search.with_n_trials(n_trials)
    if not search.devices:
        raise UsageError("config: no devices to search for; add e.g. `devices: [local-cpu-1t-ort]`")
    if not run.supernet_checkpoint.is_file():
        raise UsageError(f"run {run.root} has no trained supernet ({run.supernet_checkpoint}); "
                         f"run `nas train CONFIG` first")
    space = search.restrict(config.get_space())
    with contextlib.ExitStack() as held:
        if search_paths(run).lock.exists():  # a run being searched is refused at once, naming the holder
            held.enter_context(search_lock(run))
        objective, space, predictors = check_search(config, run, search, space, latency_predictors, store)
        held.enter_context(search_lock(run))  # made only now: bad input leaves the run folder as it was
        return _search_locked(config, run, search, space, objective, predictors, progress)


def predictor_space(resolutions: Sequence[int], search: Any, space: Any) -> Any:
    """``space`` limited to the ``resolutions`` an imported accuracy predictor covers; ``search.resolutions`` it
    does not cover are a ``UsageError`` (checked before any work: ``nas run`` before importing it)."""
    import dataclasses

    outside = [r for r in search.resolutions if r not in resolutions]
    if outside:
        raise UsageError(f"search.resolutions {outside} are not covered by the imported accuracy predictor; "
                         f"allowed: {', '.join(map(str, resolutions))}")
    covered = tuple(r for r in space.resolutions if r in resolutions)
    if not covered:
        raise UsageError(f"the imported accuracy predictor covers resolutions "
                         f"{', '.join(map(str, resolutions))}, none of which the search may pick "
                         f"({', '.join(map(str, space.resolutions))})")
    return dataclasses.replace(space, resolutions=covered)


def load_search_accuracy_predictor(path: Any, search: Any, space: Any) -> tuple[Any, Any]:
    """``(predictor, space)``: the run's saved accuracy predictor, and ``space`` limited to the resolutions it
    covers when it says which (Once-for-All's imported predictor); ``search.resolutions`` it does not cover
    are a ``UsageError``."""
    from .accuracy import AccuracyPredictor
    from .ofa_zoo import OFAAccuracyPredictor, covers_resolutions

    if not covers_resolutions(path):
        return AccuracyPredictor.load(path), space
    predictor = OFAAccuracyPredictor.load(path)
    return predictor, predictor_space(predictor.resolutions, search, space)


def check_budgets(search: Any, space: Any, predictors: Mapping[str, Any], mixed: Mapping[str, Any]) -> None:
    """``UsageError`` for a device budget (``max_latency_ms`` / ``search.latency_budgets_ms``) below the predicted
    latency of the space's smallest subnet, the fastest a latency table predicts (in each precision the fronts
    may hold: ``mixed`` is ``check_precisions``' per-device ``(archs, policies) -> ms``): no subnet could meet it,
    and the search would say so only at its end. Per-stage mixes of precisions are not checked (one may be faster
    than both)."""
    import numpy as np

    from search_spaces import PrecisionPolicy, arch_to_string, sample, smallest

    from .study import as_batch_fn

    if search.mixed_precision:
        return
    fastest = smallest(space)
    # A learned predictor need not rank the smallest subnet fastest: it and a seeded sample are all asked, and
    # only a budget none of them meets is refused (the search still says so at its end for the rest).
    archs = [fastest, *sample(space, 255, seed=0)]
    for device, budget in search.budgets.items():
        candidates = []
        if "fp32" in search.precisions:
            candidates.append(float(np.min(as_batch_fn(predictors[device])(archs))))
        if search.quantized:
            int8 = [PrecisionPolicy.uniform(space, "int8")] * len(archs)
            candidates.append(float(np.min(mixed[device](archs, int8))))
        ms = min(candidates)
        if ms > budget:
            raise UsageError(f"no subnet meets the latency budget of {budget:g} ms on device {device!r}: of the "
                             f"smallest subnet ({arch_to_string(space, fastest)}) and {len(archs) - 1} sampled ones, "
                             f"the fastest is predicted at {ms:.4g} ms; set devices[{device}].max_latency_ms (or "
                             f"search.latency_budgets_ms) to at least that")


def check_search(config: Any, run: Any, search: Any, space: Any, latency_predictors: Mapping[str, Any] | None,
                 store: Any) -> tuple[Any, Any, dict[str, Any]]:
    """Every check of the search stage that reads only: ``(objective, space, predictors)``, where ``objective``
    is the run's saved accuracy predictor when the search uses it (else None) and ``space`` is limited to the
    resolutions that predictor covers."""
    from .accuracy import check_run_supernet
    from .precision_search import check_precisions
    from .search_paths import search_paths
    from .study import check_storage

    paths = search_paths(run)
    check_storage(search, run)  # a database that cannot be opened, a damaged journal (touches nothing in the run)
    check_run_supernet(config, run)  # damaged, another config's (seed, data, training), another space's
    objective: Any = None
    if config.dataset is None and not (search.accuracy == "predictor" and paths.accuracy_predictor.is_file()):
        raise UsageError(f"the config has no dataset, so subnets cannot be evaluated: search.accuracy must be "
                         f"predictor, with a predictor in {paths.accuracy_predictor} (supernet.accuracy_predictor "
                         f"imports one)")
    if search.accuracy == "predictor" and paths.accuracy_predictor.is_file():
        objective, space = load_search_accuracy_predictor(paths.accuracy_predictor, search, space)
    elif config.dataset is not None:  # subnets evaluated on the data (directly, or to fit the predictor)
        from .data import check_split_sizes

        check_split_sizes(config.dataset, config.seed, {"val": (1, "the search's accuracy of subnets"),
                                                        "test": (1, "the fronts' test accuracy")})
    from .fronts import check_front_store

    check_front_store(paths.fronts)  # a damaged store fails now, before any predictor fit or trial
    predictors = dict(latency_predictors) if latency_predictors is not None else \
        load_latency_predictors(space, search.devices, store)
    if all(d in predictors for d in search.devices):  # run_search names a missing one
        # int8 needs data to measure quantised subnets on (the evaluator's stand-in here) and tables that read it.
        mixed = check_precisions(search, space, predictors, config.dataset)
        check_budgets(search, space, predictors, mixed)
    return objective, space, predictors


def _search_locked(config: Any, run: Any, search: Any, space: Any, objective: Any, predictors: dict[str, Any],
                   progress: bool) -> dict[str, list]:
    import dataclasses

    from .accuracy import AccuracyCache, DirectEvaluator, SupernetAccuracy, fit_accuracy_predictor
    from .data import load_dataset
    from .io import atomic_write_json
    from .search import run_search
    from .search_paths import search_paths
    from .study import supernet_identity

    paths = search_paths(run)
    train = config.train
    evaluator = None
    if config.dataset is not None:
        data_factory = functools.partial(load_dataset, config.dataset, max(space.resolutions), config.seed)
        evaluator = DirectEvaluator(
            SupernetAccuracy(str(run.supernet_checkpoint), data_factory,
                             bn_images=train.bn_recal_images,
                             max_images=getattr(train, "max_val_images", None), seed=config.seed,
                             device=train.device, quantization_method=search.quantization_method),
            AccuracyCache(paths.accuracy_cache, supernet_identity(run.supernet_checkpoint)),
            workers=search.eval_workers,
            gpus_per_worker=config.ray.gpus_per_worker)
    try:
        if search.accuracy == "direct":
            objective = evaluator
        elif objective is None:  # no predictor saved yet: fit one on directly evaluated subnets
            objective, report = fit_accuracy_predictor(space, evaluator.evaluate, search.predictor_samples,
                                                       search.predictor_holdout, search.seed)
            objective.save(paths.accuracy_predictor)
            atomic_write_json(paths.accuracy_predictor.with_name("accuracy_predictor_report.json"),
                              report.to_dict())
            print(f"accuracy predictor: RMSE {report.rmse:.4f}, Spearman {report.spearman:.3f}, Kendall "
                  f"{report.kendall:.3f} on {report.n_test} held-out subnets", file=sys.stderr)

        def show(done: int, total: int) -> None:
            # On a terminal one line redrawn; in a log or a pipe a line per batch of trials.
            if progress and sys.stderr.isatty():
                print(f"\rsearch: {done}/{total} trials", end="" if done < total else "\n", file=sys.stderr,
                      flush=True)
            elif progress:
                print(f"search: {done}/{total} trials", file=sys.stderr, flush=True)

        meta: dict[str, Any] = {"dataset": None}  # no dataset: exports keep the supernet's batch norms
        if config.dataset is not None:
            meta = {"dataset": {f.name: getattr(config.dataset, f.name) for f in dataclasses.fields(config.dataset)},
                    "data_seed": config.seed, "bn_images": train.bn_recal_images,
                    "data_resolution": max(space.resolutions)}
        return run_search(search, run, objective, predictors, space=space, final_evaluator=evaluator,
                          checkpoint=str(run.supernet_checkpoint), progress=show, meta=meta,
                          log=(lambda line: print(line, file=sys.stderr, flush=True)) if progress else None,
                          accuracy_identity=accuracy_identity(search))
    finally:
        if evaluator is not None:
            evaluator.close()


def accuracy_identity(search: Any) -> str:
    """What the search's accuracies come from, as its study records it: ``"direct"`` (the supernet evaluated) or
    ``"predictor"`` (the run's accuracy predictor; its file is not part of it: processes sharing a study each fit
    their own, alike up to rounding)."""
    return "direct" if search.accuracy == "direct" else "predictor"


def search_is_complete(config: Any, run: Any) -> bool:
    """True when the run's study has ``search.n_trials`` finished proposed trials and its fronts are stored for
    every device, written under this config's settings (``nas.search.fronts_settings``: each device's budget, the
    budgets refined, the precisions and their calibration): what ``nas run`` checks to skip the stage. Fronts
    written under other settings (a budget changed since, int8 listed or dropped) are not this search's."""
    from .fronts import get_front_store
    from .search import WRITTEN_FROM_KEY, fronts_settings
    from .search_paths import search_paths
    from .study import load_study, sampler_trials_done

    search = config.search
    paths = search_paths(run)
    if not paths.fronts.is_file():
        return False
    try:
        study = load_study(run, search)
    except (UsageError, KeyError):
        return False
    done = sampler_trials_done(study)
    if paths.fronts.stat().st_size == 0:
        return False
    store = get_front_store(paths.fronts, create=False)
    written = store.get_meta(WRITTEN_FROM_KEY)
    written = written if isinstance(written, dict) else {}
    return (done >= search.n_trials and set(search.devices) <= set(store.devices())
            and all(written.get(key) == value for key, value in fronts_settings(search).items()))


def device_measurers(space: Any, device_ids: Sequence[str], store: Any = None, use_ray: bool = True,
                     progress: bool = False, measure_config: Any = None) -> dict[str, Any]:
    """Device id to ``measure(archs, policies=None) -> measured ms`` for ``nas.search.hardware_in_the_loop``.

    fp32 subnets (no policy, or a policy that keeps every group in fp32) are the deployed static subnets
    measured end to end with ``latency_predictors``' protocol on the device's node (Ray resource
    ``device:<id>``). A subnet with a ``search_spaces.PrecisionPolicy`` is quantised under it
    (``nas.quantize.quantized_subnet_model``: the graph ``nas quantize`` writes, fresh weights) and timed end
    to end by ONNX Runtime on this machine's CPU (``latency_predictors.workflow.measure_quantized``, kept with
    the device's measurements): only one-thread ONNX Runtime CPU devices run those; any other device with a
    quantised subnet to measure is a ``UsageError`` before anything is timed.
    """
    from latency_predictors import MeasureConfig
    from latency_predictors.remote import measure_archs
    from latency_predictors.workflow import measure_quantized
    from search_spaces import policy_or_none

    from .latency_builders import static_builder
    from .quantize import QUANTIZER_ID, quantized_subnet_model

    store = device_store(store)
    config = measure_config or MeasureConfig()
    measurers = {}
    for device_id in device_ids:
        device = store.resolve(device_id)

        def measure(archs: Sequence[Any], policies: Sequence[Any] | None = None, device: Any = device
                    ) -> list[float]:
            archs = list(archs)
            policies = [None] * len(archs) if policies is None else [policy_or_none(p) for p in policies]
            if len(policies) != len(archs):
                raise ValueError(f"{len(policies)} precision policies for {len(archs)} subnets")
            quantized = [i for i, p in enumerate(policies) if p is not None]
            if quantized and not device.times_quantized:
                raise UsageError(f"device {device.id!r} cannot time quantised subnets: they run in ONNX Runtime on "
                                 f"the CPU (a local-cpu-<n>t-ort device), and {device.id!r} runs "
                                 f"{device.backend or 'nothing here'} on {device.accelerator}")
            out = [float("nan")] * len(archs)
            plain = [i for i, p in enumerate(policies) if p is None]
            if plain:
                results = measure_archs(space, [archs[i] for i in plain], static_builder(), device, config,
                                        lock_path=store.lock_path(device.id), use_ray=use_ray, progress=progress)
                for i, m in zip(plain, results):
                    out[i] = float(m.latency_ms)
            if quantized:
                runs = measure_quantized(store, device, space, [archs[i] for i in quantized],
                                         [policies[i] for i in quantized], quantized_subnet_model, config, runs=1,
                                         progress=progress, quantizer=QUANTIZER_ID)
                for i, r in zip(quantized, runs):
                    out[i] = float(r[0])
            return out

        measurers[device_id] = measure
    return measurers
