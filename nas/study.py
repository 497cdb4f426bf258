"""The Optuna study of a search: its storage, sampler and objectives, and the ask/tell loop.

One study covers every target device: its objectives are ``[accuracy, latency on device 1, latency on
device 2, ...]`` (named ``accuracy``, ``latency_<device>``). Each trial is one subnet, so its accuracy (the
expensive objective) is computed once and reused by every device's front; the latencies come from cheap
predictors. The first two trials of a new study are the largest and the smallest subnets.

The study lives in an Optuna storage (a journal file in the run folder by default); the sampler works on an
in-memory copy and each finished batch of trials is appended to the storage (one write per trial). Running
the search again continues it: ``n_trials`` counts finished trials in total, and the storage only ever holds
finished trials, each once, so a kill loses at most the batch being evaluated. The sampler's random state
is not stored, so a continued search seeds its sampler from ``(seed, finished trials)``: it proposes new
subnets instead of replaying its first ones.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple

import numpy as np
import optuna

from search_spaces import Arch, SearchSpace, arch_counts, arch_to_string

from .errors import UsageError
from .search_config import SearchConfig
from .search_params import decode_params, params_of, suggest_arch
from .search_paths import JOURNAL_NAME, run_path, search_paths

__all__ = ["ArchBatchFn", "TrialTable", "as_batch_fn", "check_objectives", "create_sampler", "load_study",
           "metric_names", "open_study", "optimize", "sampler_seed", "storage_for", "study_trials"]


ArchBatchFn = Callable[[Sequence[Arch]], np.ndarray]
"""A batched objective: a list of archs to one float per arch (accuracy in [0, 1], or latency in ms)."""


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
