"""The Optuna search: a space's factorized parameters, objectives on several devices, per-device fronts.

One study covers every target device: its objectives are ``[accuracy, latency on device 1, latency on
device 2, ...]``. Each trial is one subnet, so its accuracy (the expensive objective) is computed once and
reused by every device's front; the latencies come from cheap predictors. NSGA-II's non-dominated sorting
in the joint space keeps subnets that are good on any one device. (One study per device sharing an
accuracy cache was the alternative; it repeats sampler work per device and makes the devices' searches
propose different subnets, so more subnets need an accuracy evaluation.)

Every stage's depth and every block slot's choices are suggested on each trial (one slot per stage for
spaces whose blocks are shared; a slot's choices as one categorical over its block variants), so the
parameter set has a fixed length and multivariate samplers can model the whole space; ``decode_params``
drops the slots beyond the sampled depth. The first two trials of a new study are the largest and the
smallest subnets, which anchor both ends of every front.

The study lives in an Optuna storage (a journal file in the run folder by default); the sampler works on an
in-memory copy and each finished batch of trials is appended to the storage (one write per trial). Running
the search again continues it: ``n_trials`` counts finished trials in total, and the storage only ever holds
finished trials, each once, so a kill loses at most the batch being evaluated. The sampler's random state
is not stored, so a continued search seeds its sampler from ``(seed, finished trials)``: it proposes new
subnets instead of replaying its first ones.

One search per run at a time: ``search_lock`` (an ``fcntl.flock`` on ``search/search.lock``, released by the
OS when its holder dies) makes a second ``nas search`` on the same run refuse at once, naming the holder.
"""

from __future__ import annotations

import contextlib
import itertools
import math
import os
import threading
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import optuna

from search_spaces import (
    Arch,
    BlockArch,
    SearchSpace,
    StageArch,
    arch_counts,
    arch_to_string,
    get_space,
    validate,
)

from .errors import BusyError, UsageError
from .fronts import FrontMember, ReferencePoint, get_front_store
from .pareto import pareto_indices
from .refine import refine_budgets
from .search_config import SearchConfig

__all__ = [
    "ArchBatchFn",
    "as_batch_fn",
    "create_sampler",
    "decode_params",
    "front_members",
    "load_study",
    "open_study",
    "run_search",
    "search_params",
    "search_lock",
    "search_paths",
    "study_trials",
    "TrialTable",
    "suggest_arch",
]

ArchBatchFn = Callable[[Sequence[Arch]], np.ndarray]
"""A batched objective: a list of archs to one float per arch (accuracy in [0, 1], or latency in ms)."""

JOURNAL_NAME = "study.journal"
FRONTS_NAME = "fronts.sqlite"


class SearchPaths(NamedTuple):
    """Where the search stages keep their artifacts inside a run folder (``RunDir``'s sub-folders)."""

    journal: Path  # RUN/search/study.journal: the Optuna study (default storage)
    accuracy_cache: Path  # RUN/search/accuracy.jsonl: direct accuracies by arch id and split
    accuracy_predictor: Path  # RUN/search/accuracy_predictor.json (+ _report.json)
    fronts: Path  # RUN/fronts/fronts.sqlite: the front store
    hil: Path  # RUN/fronts/hil.json: predicted against measured latency of front members
    plot: Path  # RUN/plots/fronts.png
    lock: Path  # RUN/search/search.lock: held by the process searching this run (``search_lock``)


def run_path(run_dir: Any) -> Path:
    """The folder of a run, from a path or a ``RunDir``-like object (``.root`` or ``.path``)."""
    if isinstance(run_dir, (str, os.PathLike)):
        return Path(run_dir)
    for name in ("root", "path"):
        value = getattr(run_dir, name, None)
        if isinstance(value, (str, os.PathLike)):
            return Path(value)
    return Path(run_dir)


def search_paths(run_dir: Any) -> SearchPaths:
    """The search artifacts' paths of the run folder ``run_dir`` (a path or a ``RunDir``)."""
    root = run_path(run_dir)
    return SearchPaths(journal=root / "search" / JOURNAL_NAME, accuracy_cache=root / "search" / "accuracy.jsonl",
                       accuracy_predictor=root / "search" / "accuracy_predictor.json",
                       fronts=root / "fronts" / FRONTS_NAME, hil=root / "fronts" / "hil.json",
                       plot=root / "plots" / "fronts.png", lock=root / "search" / "search.lock")


_held_lock = threading.Lock()
_held: dict[Path, list[Any]] = {}  # lock path -> [FileLock, depth], locks this process holds


@contextlib.contextmanager
def search_lock(run_dir: Any) -> Iterator[None]:
    """Hold the run's search lock: one process searches (or rewrites the fronts of) a run at a time.

    Re-entrant within a process (the command takes it before fitting the accuracy predictor, ``run_search``
    inside). The lock is an ``fcntl.flock`` (``supernets.training.FileLock``), so a killed holder never
    blocks the next search.

    Raises:
        BusyError: another process holds it; the message names it (pid and host).
    """
    from supernets.training import FileLock, LockBusyError

    path = search_paths(run_dir).lock.absolute()
    with _held_lock:
        entry = _held.get(path)
        if entry is None:
            try:
                lock = FileLock(path, f"the search of run {str(run_path(run_dir))!r}").acquire()
            except LockBusyError as exc:
                raise BusyError(str(exc)) from None
            entry = _held[path] = [lock, 0]
        entry[1] += 1
    try:
        yield
    finally:
        with _held_lock:
            entry[1] -= 1
            if entry[1] == 0:
                del _held[path]
                entry[0].release()


# --- parameters --------------------------------------------------------------------------------------


def _slots(space: SearchSpace, stage: int) -> int:
    spec = space.stages[stage]
    return 1 if spec.shared_blocks else spec.max_depth


def block_variants(spec: Any) -> dict[str, BlockArch]:
    """Every block a slot of the stage may hold, by a short token (``mbconv-k5-e4-se0.25-skip``)."""
    variants: dict[str, BlockArch] = {}
    for op in spec.op_types:
        for k, e, se, skip in itertools.product(spec.kernel_sizes, spec.allowed_expand_ratios(op), spec.se_ratios,
                                                spec.skips):
            token = f"{op}-k{k}-e{e:g}-se{se:g}-{'skip' if skip else 'noskip'}"
            variants[token] = BlockArch(kernel_size=k, expand_ratio=e, op_type=op, se_ratio=se, skip=skip)
    return variants


def _token(block: BlockArch) -> str:
    return (f"{block.op_type}-k{block.kernel_size}-e{block.expand_ratio:g}-se{block.se_ratio:g}-"
            f"{'skip' if block.skip else 'noskip'}")


def search_params(space: SearchSpace) -> dict[str, tuple]:
    """Every searched parameter name and its choices, in a fixed order (dimensions with one choice omitted).

    Per stage: its depth (and width multiplier); per block slot (``max_depth`` slots, one for spaces whose
    blocks are shared): one categorical over the slot's block variants (op type x kernel x expand x SE x
    skip), so a block's choices travel together through crossover and there are half as many parameters.
    """
    params: dict[str, tuple] = {}
    if len(space.resolutions) > 1:
        params["resolution"] = tuple(space.resolutions)
    for s, spec in enumerate(space.stages):
        if len(spec.depths) > 1:
            params[f"s{s}.depth"] = spec.depths
        if len(spec.width_mults) > 1:
            params[f"s{s}.width_mult"] = spec.width_mults
        variants = tuple(block_variants(spec))
        if len(variants) > 1:
            for b in range(_slots(space, s)):
                params[f"s{s}.b{b}"] = variants
    return params


def decode_params(space: SearchSpace, params: Mapping[str, Any]) -> Arch:
    """The arch of a full parameter set (slots beyond each stage's depth are dropped)."""
    def get(name: str, values: tuple):
        return params[name] if len(values) > 1 else values[0]

    stages = []
    for s, spec in enumerate(space.stages):
        depth = get(f"s{s}.depth", spec.depths)
        width = get(f"s{s}.width_mult", spec.width_mults)
        variants = block_variants(spec)
        only = next(iter(variants.values()))
        blocks = [variants[params[f"s{s}.b{b}"]] if len(variants) > 1 else only for b in range(_slots(space, s))]
        active = (blocks[0],) * depth if spec.shared_blocks else tuple(blocks[:depth])
        stages.append(StageArch(blocks=active, width_mult=width))
    resolution = get("resolution", space.resolutions)
    return validate(space, Arch(space=space.name, resolution=resolution, stages=tuple(stages)))


def suggest_arch(trial: optuna.trial.BaseTrial, space: SearchSpace) -> Arch:
    """Suggest every parameter of ``search_params(space)`` on ``trial`` and decode the arch."""
    params = {name: trial.suggest_categorical(name, list(values)) for name, values in search_params(space).items()}
    return decode_params(space, params)


def params_of(space: SearchSpace, arch: Arch) -> dict[str, Any]:
    """A full parameter set whose decoding is ``arch`` (unused slots copy the stage's last block)."""
    values = search_params(space)
    params: dict[str, Any] = {}
    if "resolution" in values:
        params["resolution"] = arch.resolution
    for s, stage in enumerate(arch.stages):
        if f"s{s}.depth" in values:
            params[f"s{s}.depth"] = stage.depth
        if f"s{s}.width_mult" in values:
            params[f"s{s}.width_mult"] = stage.width_mult
        for b in range(_slots(space, s)):
            if f"s{s}.b{b}" in values:
                params[f"s{s}.b{b}"] = _token(stage.blocks[min(b, stage.depth - 1)])
    return params


# --- objectives --------------------------------------------------------------------------------------


def as_batch_fn(objective: Any, method: str = "predict") -> ArchBatchFn:
    """A batched objective from a callable or an object with ``method`` (``predict``/``evaluate``)."""
    fn = getattr(objective, method, None) or getattr(objective, "evaluate", None) or objective
    if not callable(fn):
        raise TypeError(f"{objective!r} is neither callable nor has .{method}()")

    def batch(archs: Sequence[Arch]) -> np.ndarray:
        values = np.asarray(fn(list(archs)), dtype=np.float64).ravel()
        if values.size != len(archs):
            raise ValueError(f"objective returned {values.size} values for {len(archs)} archs")
        return values

    return batch


# --- study -------------------------------------------------------------------------------------------


def sampler_seed(seed: int, finished: int) -> int:
    """The sampler's seed for a study with ``finished`` trials: ``seed`` for a new one, else one drawn from
    ``(seed, finished)``. A sampler's random state is not stored with the study, so a continued search
    seeded with ``seed`` again would propose its first subnets again; this keeps a continued search
    reproducible and new."""
    if finished == 0:
        return seed
    return int(np.random.SeedSequence([seed, finished]).generate_state(1)[0])


def create_sampler(config: SearchConfig, finished: int = 0) -> optuna.samplers.BaseSampler:
    """The configured sampler for a study with ``finished`` trials (see ``sampler_seed``)."""
    seed = sampler_seed(config.seed, finished)
    if config.sampler == "nsga2":
        return optuna.samplers.NSGAIISampler(population_size=config.population_size, seed=seed)
    if config.sampler == "tpe":
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            return optuna.samplers.TPESampler(seed=seed, multivariate=True)
    if config.sampler == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    raise UsageError(f"unknown sampler {config.sampler!r}")


STORAGE_ALLOWED = ("a SQLAlchemy database URL Optuna can open and write, e.g. sqlite:///PATH/study.db or "
                   "postgresql://USER@HOST/DB, or no search.storage for a journal file in the run folder")


def storage_for(config: SearchConfig, run_dir: Any) -> optuna.storages.BaseStorage:
    """The configured storage (opened), or a journal file in the run folder.

    Raises:
        UsageError: ``search.storage`` cannot be opened (an unknown scheme, a missing driver, a database
            file that cannot be created or written); the message names the value and what is allowed.
    """
    if config.storage:
        try:
            return optuna.storages.get_storage(config.storage)
        except Exception as exc:  # SQLAlchemy's errors, a missing driver (ImportError), a bad URL (ValueError)
            reason = " ".join(str(exc).split("(Background on this error")[0].split())
            raise UsageError(f"search.storage {config.storage!r} cannot be opened ({type(exc).__name__}: "
                             f"{reason}); allowed: {STORAGE_ALLOWED}") from None
    from optuna.storages.journal import JournalFileBackend, JournalStorage

    path = search_paths(run_dir).journal
    path.parent.mkdir(parents=True, exist_ok=True)
    return JournalStorage(JournalFileBackend(str(path)))


def metric_names(devices: Sequence[str]) -> list[str]:
    """The study's objective names: ``accuracy``, then ``latency_<device>`` (milliseconds) per device."""
    return ["accuracy"] + [f"latency_{d}" for d in devices]


def open_study(config: SearchConfig, run_dir: Any, space: SearchSpace,
               sampler: optuna.samplers.BaseSampler | None = None) -> optuna.Study:
    """Create the study or load it (same name) when it exists; refuse a study of another space/devices."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    if not config.devices:
        raise UsageError("search: no target devices; list at least one under 'devices'")
    study = optuna.create_study(
        study_name=config.study_name,
        storage=storage_for(config, run_dir),
        sampler=sampler or create_sampler(config),
        directions=["maximize"] + ["minimize"] * len(config.devices),
        load_if_exists=True,
    )
    expected = {"space": space.name, "devices": list(config.devices)}
    attrs = study.user_attrs
    if "space" not in attrs:
        for key, value in expected.items():
            study.set_user_attr(key, value)
        study.set_user_attr("objectives", ["accuracy"] + [f"latency_ms:{d}" for d in config.devices])
        with warnings.catch_warnings():  # experimental since Optuna 3.2, and what its dashboard reads
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            study.set_metric_names(metric_names(config.devices))
    elif attrs.get("space") != space.name or list(attrs.get("devices", [])) != list(config.devices):
        raise UsageError(f"study {config.study_name!r} in this run searched space {attrs.get('space')!r} on "
                         f"devices {attrs.get('devices')}; this config has {space.name!r} on "
                         f"{list(config.devices)}: use another run folder or study_name")
    return study


def load_study(run_dir: Any, config: SearchConfig | None = None) -> optuna.Study:
    """Load the run's study (journal file by default) without a sampler, for reading."""
    config = config or SearchConfig()
    if not config.storage and not search_paths(run_dir).journal.exists():
        raise UsageError(f"run {str(run_path(run_dir))!r} has no search study (search/{JOURNAL_NAME}); "
                         f"run `nas search` first")
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    return optuna.load_study(study_name=config.study_name, storage=storage_for(config, run_dir))


def _recover_stale(study: optuna.Study) -> int:
    """Mark trials a killed process left running (in storages written trial by trial) as failed."""
    stale = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,))
    for trial in stale:
        study.tell(trial.number, state=optuna.trial.TrialState.FAIL, skip_if_finished=True)
    return len(stale)


def _n_complete(study: optuna.Study) -> int:
    return len(study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,)))


def working_copy(study: optuna.Study, sampler: optuna.samplers.BaseSampler) -> optuna.Study:
    """An in-memory study holding the finished trials of ``study`` (its sampler state rebuilt from them)."""
    memory = optuna.create_study(directions=study.directions, sampler=sampler)
    trials = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    memory.add_trials(sorted(trials, key=lambda t: t.number))
    return memory


def check_objectives(archs: Sequence[Arch], accuracy: Sequence[float], latency_ms: Mapping[str, Sequence[float]]
                     ) -> None:
    """``UsageError`` naming the first subnet whose accuracy is not a fraction in [0, 1] or whose latency is
    not a positive number: such a value would reach the study and the fronts (a predictor's extrapolation,
    a table with a bad entry)."""
    for i, arch in enumerate(archs):
        value = float(accuracy[i])
        if not 0.0 <= value <= 1.0:
            raise UsageError(f"the accuracy objective gave {value:.6g} for subnet {arch.arch_id}; accuracies are "
                             f"fractions in [0, 1] (is the accuracy predictor one for this space?)")
        for device, values in latency_ms.items():
            ms = float(values[i])
            if not (math.isfinite(ms) and ms > 0):
                raise UsageError(f"the latency predictor of device {device!r} gave {ms:.6g} ms for subnet "
                                 f"{arch.arch_id}; latencies are positive numbers (rebuild or refit it)")


def optimize(study: optuna.Study, space: SearchSpace, config: SearchConfig, accuracy: ArchBatchFn,
             latency: Mapping[str, ArchBatchFn], progress: Callable[[int, int], None] | None = None,
             sampler: optuna.samplers.BaseSampler | None = None) -> int:
    """Run trials with ask/tell in batches until ``config.n_trials`` trials are finished in total.

    The sampler (``create_sampler``, unless one is given) is seeded from the finished trials' count, so a
    continued study gets new proposals. Callers hold ``search_lock`` (``run_search`` does).

    The sampler works on an in-memory copy of the study; each finished batch is then appended to the
    persistent ``study`` with one write per trial (``add_trials``), so a journal file is not written
    (and fsynced) once per suggested parameter. A kill loses at most the unfinished batch; every trial
    in the storage is finished and stored once. Returns the number of trials finished by this call.
    """
    _recover_stale(study)
    done_before = _n_complete(study)
    memory = working_copy(study, sampler or create_sampler(config, done_before))
    if not memory.get_trials(deepcopy=False):
        # The largest and smallest subnets anchor both ends of every device's front from the start.
        from search_spaces import largest, smallest

        for arch in (largest(space), smallest(space)):
            memory.enqueue_trial(params_of(space, arch))
    budgets = config.budgets
    done = done_before
    while done < config.n_trials:
        size = min(config.batch_size, config.n_trials - done)
        trials = [memory.ask() for _ in range(size)]
        told: list[int] = []
        try:
            archs = [suggest_arch(t, space) for t in trials]
            acc = accuracy(archs)
            lats = [latency[d](archs) for d in config.devices]
            check_objectives(archs, acc, dict(zip(config.devices, lats)))
            for i, trial in enumerate(trials):
                counts = arch_counts(space, archs[i])  # what the dashboard and trials_dataframe() show beside it
                trial.set_user_attr("arch", arch_to_string(space, archs[i]))
                trial.set_user_attr("params", counts.params)
                trial.set_user_attr("macs", counts.macs)
                for d, device in enumerate(config.devices):
                    if device in budgets:
                        trial.set_constraint(f"latency:{device}", float(lats[d][i] - budgets[device]))
                memory.tell(trial, [float(acc[i])] + [float(lat[i]) for lat in lats])
                told.append(trial.number)
        except BaseException:
            for trial in trials:
                if trial.number not in told:
                    memory.tell(trial, state=optuna.trial.TrialState.FAIL, skip_if_finished=True)
            raise
        finished = memory.get_trials(deepcopy=False)
        study.add_trials([finished[n] for n in told])
        done += size
        if progress is not None:
            progress(done, config.n_trials)
    return done - done_before


# --- fronts --------------------------------------------------------------------------------------------


class TrialTable(NamedTuple):
    """Finished trials of a study, in trial order."""

    numbers: list[int]
    archs: list[Arch]
    accuracy: np.ndarray  # (N,)
    latency_ms: np.ndarray  # (N, devices)


def study_trials(study: optuna.Study, space: SearchSpace) -> TrialTable:
    """The study's finished trials with their decoded archs and objective values."""
    trials = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    trials = sorted(trials, key=lambda t: t.number)
    archs = [decode_params(space, t.params) for t in trials]
    n_obj = len(study.directions)
    values = np.array([t.values for t in trials], dtype=np.float64).reshape(len(trials), n_obj)
    return TrialTable([t.number for t in trials], archs, values[:, 0], values[:, 1:])


def front_members(archs: Sequence[Arch], accuracy: np.ndarray, latency_ms: np.ndarray,
                  max_latency_ms: float | None = None) -> list[int]:
    """Indices of the distinct non-dominated archs within the budget, latency ascending."""
    first: dict[str, int] = {}
    for i, arch in enumerate(archs):
        if max_latency_ms is None or latency_ms[i] <= max_latency_ms:
            first.setdefault(arch.arch_id, i)
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
               log: Callable[[str], None] | None = None) -> dict[str, list[FrontMember]]:
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
            (relative to the run folder when it lies inside it, so a copied or moved run keeps working).
        progress: called with (finished, total) after each batch.
        meta: JSON values kept in the front store (``dataset``: the config's dataset section and
            ``bn_images``, so that ``nas query --export`` can recalibrate batch norms from the run alone).
        log: receives a line per refined budget (``nas.refine``: ``search.budgets_ms`` and each device's
            ``max_latency_ms``, refined after the trials when the accuracy objective is cheap).

    Raises:
        BusyError: another process is searching this run (``search_lock``).
        UsageError: a device's latency budget is met by no subnet found (the fronts stored before are kept).
    """
    space = config.restrict(get_space(space))
    missing = [d for d in config.devices if d not in latency_predictors]
    if missing:
        raise UsageError(f"no latency predictor for device(s) {', '.join(missing)}; have: "
                         f"{', '.join(latency_predictors) or 'none'}")
    acc_fn = as_batch_fn(accuracy, "evaluate")
    lat_fns = {d: as_batch_fn(latency_predictors[d]) for d in config.devices}
    with search_lock(run_dir):
        study = open_study(config, run_dir, space)
        optimize(study, space, config, acc_fn, lat_fns, progress)
        refine_budgets(study, space, config, acc_fn, lat_fns, seed=config.seed, progress=log)
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
    (the store's measurements, by arch id and device).
    """
    from search_spaces import largest, smallest

    if counts_fn is None:
        from search_spaces import arch_counts as counts_fn  # noqa: N813
    table = study_trials(study, space)
    archs, acc, lats = table.archs, table.accuracy, table.latency_ms
    budgets = config.budgets
    chosen = {d: front_members(archs, acc, lats[:, k], budgets.get(d)) for k, d in enumerate(config.devices)}
    for k, device in enumerate(config.devices):
        if not chosen[device]:
            raise UsageError(_empty_front_message(space, device, budgets.get(device), archs, lats[:, k]))
    member_idx = sorted({i for idx in chosen.values() for i in idx})
    val = {i: float(acc[i]) for i in member_idx}
    test: dict[int, float | None] = dict.fromkeys(member_idx)
    if final_evaluator is not None and member_idx:
        direct_val = as_batch_fn(lambda a: final_evaluator.evaluate(a, split="val"))([archs[i] for i in member_idx])
        direct_test = as_batch_fn(lambda a: final_evaluator.evaluate(a, split="test"))([archs[i] for i in member_idx])
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
            )
            for i in chosen[device]
        ]
        ref_lat = latency[device](list(ref_archs.values()))
        references[device] = [
            ReferencePoint(device=device, name=name, arch=arch, accuracy=float(ref_acc[j]),
                           latency_ms=float(ref_lat[j]))
            for j, (name, arch) in enumerate(ref_archs.items())
        ]
    store = get_front_store(search_paths(run_dir).fronts)
    with store.transaction():
        for device in config.devices:
            measured = _measured_ms(store, device)
            store.write_front(device, [replace(m, measured_latency_ms=measured.get(m.arch_id))
                                       for m in fronts[device]])
            store.write_references(device, references[device])
        store.set_meta("space", space.name)
        store.set_meta("budgets_ms", budgets)
        store.set_meta("devices", list(config.devices))
        for key, value in (meta or {}).items():
            store.set_meta(key, value)
    return {d: store.front(d) for d in config.devices}


def _measured_ms(store: Any, device: str) -> dict[str, float]:
    """Arch id to the latency measured on ``device`` (hardware in the loop), from the store."""
    measured = {m.arch_id: m.measured_latency_ms for m in store.front(device) if m.measured_latency_ms is not None}
    measured.update({m.arch_id: m.measured_latency_ms for m in store.measurements(device)})
    return {arch_id: float(ms) for arch_id, ms in measured.items()}


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
    """Predicted against measured latency of one device's front members."""

    device: str
    arch_ids: list[str]
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
        measure: device id to a batched measurement (``(archs) -> ms`` callable or ``.predict``/``.measure``);
            devices without one are left as they are.
        store: a front store to use instead of the run's file.

    The predicted and measured latencies are kept in the store's ``measurements`` table and the report is
    also written to ``fronts/hil.json`` in the run folder. Holds the run's ``search_lock``, so a search
    never rewrites the fronts in between.
    """
    with search_lock(run_dir):
        return _hardware_in_the_loop(run_dir, measure, store)


def _hardware_in_the_loop(run_dir: Any, measure: Mapping[str, Any], store: Any) -> dict[str, HilReport]:
    from scipy.stats import spearmanr

    from .fronts import Measurement, with_measured
    from .io import atomic_write_json

    store = get_front_store(store if store is not None else search_paths(run_dir).fronts)
    reports: dict[str, HilReport] = {}
    for device in store.devices():
        if device not in measure:
            continue
        fn = measure[device]
        fn = as_batch_fn(getattr(fn, "measure", fn))
        members = store.front(device)
        measured = fn([m.arch for m in members])
        predicted = np.array([m.predicted_latency_ms for m in members])
        updated = [with_measured(m, t) for m, t in zip(members, measured)]
        with store.transaction():
            store.write_measurements([Measurement(device, m.arch_id, m.predicted_latency_ms, float(t))
                                      for m, t in zip(members, measured)])
            store.write_front(device, updated)
        after = len(store.front(device))
        rho = float(spearmanr(predicted, measured).statistic) if len(members) > 2 else float("nan")
        reports[device] = HilReport(
            device=device, arch_ids=[m.arch_id for m in members], predicted_ms=predicted.tolist(),
            measured_ms=[float(t) for t in measured],
            mape=float(np.mean(np.abs(predicted - measured) / measured)) if len(members) else float("nan"),
            spearman=rho, members_before=len(members), members_after=after,
        )
    if reports:
        atomic_write_json(search_paths(run_dir).hil, {d: r.to_dict() for d, r in reports.items()})
    return reports
