"""Several processes searching one study in a database, as Optuna's distributed optimisation does.

Start ``nas search`` (or ``run_search``) in as many processes as wanted, on one machine or many, with the same
``search.storage`` (a SQLAlchemy URL: ``postgresql://...``, ``sqlite:///...``), study name and supernet
(``nas.study.open_study`` refuses another's study). Each process runs this loop on the shared study:

1. Trials whose heartbeat stopped (``GRACE_S``: their process died), or that had none for ``GRACE_S`` (their
   process was killed between reserving one and its first heartbeat), are marked failed; every trial is read,
   and the finished ones not yet known join this process's in-memory copy of the study, which its sampler
   proposes from (one read of the database per batch, not one per suggested parameter).
2. Finished plus running trials are counted (those the sampler proposed: ``nas.study.proposed_by_sampler``):
   once they reach ``n_trials`` no more are asked; the process waits while other processes' trials within that
   total still run (they finish, or go stale and are asked again), not for those of a process asking for more.
3. A batch is reserved: each proposal is written as one ``RUNNING`` trial (its parameters and user attributes
   in one transaction, ``worker`` naming the process) with a heartbeat, recorded every ``HEARTBEAT_S`` by a
   thread while the batch is evaluated. Trials enqueued in the database (the largest and smallest subnets of
   a new study, or a user's ``study.enqueue_trial``) are claimed first, each by one process (a conditional
   ``WAITING`` -> ``RUNNING`` update: ``_claim``).
4. The total is exact: a reserved trial is surplus when ``n_trials`` finished or running proposed trials precede
   it (the database numbers trials in creation order under a lock on the study's row, so every process decides
   the same), and is marked failed unevaluated, with user attribute ``surplus``. Only processes asking at the
   same moment near the end make one.
5. The batch is evaluated (the objectives are batched, as in the journal mode) and each trial is told
   ``COMPLETE`` with its values and latency constraints.

Each process's sampler is seeded from ``(seed, trials so far, host and process id)``, so processes do not propose
the same subnets; a cooperative search is not reproducible run to run (nor is Optuna's).
"""

from __future__ import annotations

import bisect
import os
import socket
import threading
import time
import warnings
from collections.abc import Callable, Iterable, Mapping
from datetime import UTC, datetime
from typing import Any, NamedTuple

import optuna
from optuna.trial import FrozenTrial, TrialState

from search_spaces import Arch, SearchSpace

from .search_config import SearchConfig
from .search_params import suggest_arch

__all__ = ["POLL_S", "SURPLUS_ATTR", "WORKER_ATTR", "optimize_shared"]

POLL_S = 0.2  # seconds between looks at the study while other processes finish the last trials
SURPLUS_ATTR = "surplus"  # user attribute of a trial failed unevaluated because the total was already reached
WORKER_ATTR = "worker"  # user attribute: "<host>:<pid>" of the process that evaluated the trial


class _Reserved(NamedTuple):
    trial: optuna.trial.Trial  # in this process's in-memory copy
    trial_id: int  # in the database
    arch: Arch


class _Heartbeat:
    """Records a heartbeat for each reserved trial now, then every ``interval`` seconds until it is done."""

    def __init__(self, storage: Any, interval: float) -> None:
        self.storage, self.interval = storage, interval
        self.ids: set[int] = set()
        self.lock = threading.Lock()
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self._run, name="nas-search-heartbeat", daemon=True)
        self.thread.start()

    def add(self, trial_id: int) -> None:
        self.storage.record_heartbeat(trial_id)
        with self.lock:
            self.ids.add(trial_id)

    def done(self, trial_ids: Iterable[int]) -> None:
        with self.lock:
            self.ids.difference_update(trial_ids)

    def _run(self) -> None:
        while not self.stopped.wait(self.interval):
            with self.lock:
                ids = sorted(self.ids)
            for trial_id in ids:
                try:
                    self.storage.record_heartbeat(trial_id)
                except Exception:  # noqa: BLE001  # a database hiccup: the next beat tries again
                    pass

    def close(self) -> None:
        self.stopped.set()
        self.thread.join()


def optimize_shared(study: optuna.Study, space: SearchSpace, config: SearchConfig,
                    accuracy: Callable[[list[Arch]], Any], latency: Mapping[str, Callable[[list[Arch]], Any]],
                    progress: Callable[[int, int], None] | None = None,
                    sampler: optuna.samplers.BaseSampler | None = None) -> int:
    """Run trials of a database study, with any other process doing the same, until ``config.n_trials`` are
    finished in total (see the module docstring); returns the number this process finished."""
    from . import study as st

    storage, study_id = study._storage, study._study_id
    worker = f"{socket.gethostname()}:{os.getpid()}"
    unbeaten: dict[int, float] = {}  # RUNNING trials without a heartbeat: database id -> when first seen here
    _fail_stale(study, unbeaten)
    trials = storage.get_all_trials(study_id, deepcopy=False)
    finished = sum(t.state == TrialState.COMPLETE for t in trials)
    memory = optuna.create_study(directions=study.directions,
                                 sampler=sampler or st.create_sampler(config, finished, worker=worker_number(worker)))
    known: set[int] = set()  # database ids of the finished trials in ``memory``
    heartbeat = _Heartbeat(storage, st.HEARTBEAT_S)
    done_here = 0
    try:
        while True:
            _fail_stale(study, unbeaten)
            trials = storage.get_all_trials(study_id, deepcopy=False)
            new = sorted((t for t in trials if t.state == TrialState.COMPLETE and t._trial_id not in known),
                         key=lambda t: t.number)
            memory.add_trials(new)
            known.update(t._trial_id for t in new)
            complete = sum(t.state == TrialState.COMPLETE and st.proposed_by_sampler(t) for t in trials)
            running = sum(t.state == TrialState.RUNNING for t in trials)
            left = config.n_trials - complete - running
            if left <= 0:
                if not _total_running(trials, config.n_trials):
                    break
                time.sleep(POLL_S)  # other processes' last trials: they finish, or go stale and are asked again
                continue
            batch = _reserve(memory, storage, study_id, space, min(config.batch_size, left), worker, heartbeat)
            batch = _drop_surplus(batch, memory, storage, study_id, config.n_trials, heartbeat)
            if batch:
                done_here += _evaluate(batch, memory, storage, config, accuracy, latency, heartbeat)
                known.update(r.trial_id for r in batch)
            if progress is not None:
                progress(min(complete + len(batch), config.n_trials), config.n_trials)
    finally:
        heartbeat.close()
        for trial_id in heartbeat.ids:  # reserved, never evaluated (an error, Ctrl-C): free for the others now
            try:
                storage.set_trial_state_values(trial_id, state=TrialState.FAIL)
            except Exception:  # noqa: BLE001  # finished meanwhile, or the database is gone: the grace fails it
                pass
    return done_here


def worker_number(worker: str) -> int:
    """The number a process's sampler seed mixes in (``nas.study.sampler_seed``): of its ``"<host>:<pid>"``, not of its
    pid alone, which processes in containers on several machines share (often 1), and would propose alike."""
    import zlib

    return zlib.crc32(worker.encode())


def _total_running(trials: Iterable[FrozenTrial], n_trials: int) -> bool:
    """Whether a trial within the total still runs: one of the first ``n_trials`` proposed trials, finished or
    running, in creation order. Trials beyond them (another process asked for a larger total) are not waited for."""
    from .study import proposed_by_sampler

    live = sorted((t for t in trials
                   if t.state in (TrialState.COMPLETE, TrialState.RUNNING) and proposed_by_sampler(t)),
                  key=lambda t: t.number)
    return any(t.state == TrialState.RUNNING for t in live[:n_trials])


def _fail_stale(study: optuna.Study, unbeaten: dict[int, float]) -> None:
    """Mark failed the RUNNING trials whose process stopped beating (Optuna's own; experimental since 2.9), and
    those that never had a heartbeat for ``GRACE_S`` seconds as this process saw them (``unbeaten``: their process
    was killed between reserving and its first heartbeat; Optuna never counts them stale, so the others would wait
    for them forever)."""
    from .study import GRACE_S

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        optuna.storages.fail_stale_trials(study)
    now, storage = time.monotonic(), study._storage
    ids = _unbeaten_ids(storage, study._study_id)
    for trial_id in set(unbeaten) - ids:
        del unbeaten[trial_id]
    for trial_id in ids:
        if now - unbeaten.setdefault(trial_id, now) > GRACE_S:
            del unbeaten[trial_id]
            try:
                storage.set_trial_state_values(trial_id, state=TrialState.FAIL)
            except optuna.exceptions.UpdateFinishedTrialError:  # finished meanwhile
                pass


def _unbeaten_ids(storage: Any, study_id: int) -> set[int]:
    """Database ids of the study's RUNNING trials without a heartbeat (a database storage's; else none)."""
    backend = getattr(storage, "_backend", storage)
    if not isinstance(backend, optuna.storages.RDBStorage):
        return set()
    import sqlalchemy
    from optuna.storages._rdb import models

    trials, beats = models.TrialModel.__table__, models.TrialHeartbeatModel.__table__
    query = sqlalchemy.select(trials.c.trial_id).where(
        trials.c.study_id == study_id, trials.c.state == TrialState.RUNNING,
        ~sqlalchemy.exists().where(beats.c.trial_id == trials.c.trial_id))
    with backend.engine.connect() as connection:
        return {row[0] for row in connection.execute(query)}


def _claim_waiting(storage: Any, study_id: int) -> FrozenTrial | None:
    """An enqueued trial of the database, now RUNNING and this process's (each is claimed by one process)."""
    for trial in sorted(storage.get_all_trials(study_id, deepcopy=False, states=(TrialState.WAITING,)),
                        key=lambda t: t.number):
        if _claim(storage, trial._trial_id):
            return trial
    return None


def _claim(storage: Any, trial_id: int) -> bool:
    """Whether this process turned the WAITING trial ``trial_id`` RUNNING (False: another process did first).

    Optuna's ``set_trial_state_values`` reads the state, then writes it: on SQLite (whose driver reads outside
    a transaction, so ``SELECT ... FOR UPDATE`` locks nothing) two processes both read WAITING and both claim
    the trial (optuna/optuna#4621), and the second to finish it fails. On a database storage the claim is
    therefore one conditional ``UPDATE``, atomic on every database; other storages keep Optuna's call.
    """
    backend = getattr(storage, "_backend", storage)  # under Optuna's cache of finished trials
    if isinstance(backend, optuna.storages.RDBStorage):
        import sqlalchemy
        from optuna.storages._rdb import models  # the trials table's schema (Optuna's own, versioned)

        table = models.TrialModel.__table__
        claim = (sqlalchemy.update(table)
                 .where(table.c.trial_id == trial_id, table.c.state == TrialState.WAITING)
                 .values(state=TrialState.RUNNING,
                         datetime_start=datetime.now(UTC).replace(tzinfo=None)))  # naive UTC, as Optuna
        with backend.engine.begin() as connection:
            return connection.execute(claim).rowcount == 1
    try:
        return storage.set_trial_state_values(trial_id, state=TrialState.RUNNING)
    except optuna.exceptions.UpdateFinishedTrialError:  # another process claimed and finished it meanwhile
        return False


def _reserve(memory: optuna.Study, storage: Any, study_id: int, space: SearchSpace, size: int, worker: str,
             heartbeat: _Heartbeat) -> list[_Reserved]:
    """``size`` proposals of the sampler, each written to the database as a RUNNING trial with a heartbeat."""
    from .study import arch_attrs

    reserved: list[_Reserved] = []
    for _ in range(size):
        claimed = _claim_waiting(storage, study_id)
        if claimed is not None:
            heartbeat.add(claimed._trial_id)  # at once: a trial without one is failed only after GRACE_S unbeaten
            memory.enqueue_trial(claimed.system_attrs.get("fixed_params", {}))
        trial = memory.ask()
        try:
            arch = suggest_arch(trial, space)
        except BaseException:
            memory.tell(trial, state=TrialState.FAIL)
            if claimed is not None:
                storage.set_trial_state_values(claimed._trial_id, state=TrialState.FAIL)
                heartbeat.done([claimed._trial_id])
            raise
        attrs = {**arch_attrs(space, arch), WORKER_ATTR: worker}
        if claimed is not None:
            trial_id = claimed._trial_id
            for name, value in trial.params.items():
                dist = trial.distributions[name]
                storage.set_trial_param(trial_id, name, dist.to_internal_repr(value), dist)
            for key, value in attrs.items():
                storage.set_trial_user_attr(trial_id, key, value)
        else:
            system = {k: v for k, v in memory._storage.get_trial_system_attrs(trial._trial_id).items()
                      if k != "fixed_params"}  # the sampler's own (NSGA-II's generation), for every process's
            trial_id = storage.create_new_trial(study_id, template_trial=FrozenTrial(
                number=0, state=TrialState.RUNNING, value=None, values=None, datetime_start=datetime.now(),
                datetime_complete=None, params=dict(trial.params), distributions=dict(trial.distributions),
                user_attrs=attrs, system_attrs=system, intermediate_values={}, trial_id=0))
            heartbeat.add(trial_id)
        reserved.append(_Reserved(trial, trial_id, arch))
    return reserved


def _drop_surplus(batch: list[_Reserved], memory: optuna.Study, storage: Any, study_id: int, n_trials: int,
                  heartbeat: _Heartbeat) -> list[_Reserved]:
    """The trials of ``batch`` within the total; the others (``n_trials`` finished or running trials before
    them) are marked failed unevaluated. Trials are numbered in creation order, and a trial's number is
    committed only after every smaller one, so every process ranks them the same."""
    from .study import proposed_by_sampler

    live = storage.get_all_trials(study_id, deepcopy=False, states=(TrialState.COMPLETE, TrialState.RUNNING))
    numbers = sorted(t.number for t in live if proposed_by_sampler(t))
    number_of = {t._trial_id: t.number for t in live}
    kept = []
    for reserved in batch:
        if bisect.bisect_left(numbers, number_of[reserved.trial_id]) < n_trials:
            kept.append(reserved)
            continue
        storage.set_trial_user_attr(reserved.trial_id, SURPLUS_ATTR, True)
        storage.set_trial_state_values(reserved.trial_id, state=TrialState.FAIL)
        memory.tell(reserved.trial, state=TrialState.FAIL)
        heartbeat.done([reserved.trial_id])
    return kept


def _evaluate(batch: list[_Reserved], memory: optuna.Study, storage: Any, config: SearchConfig,
              accuracy: Callable[[list[Arch]], Any], latency: Mapping[str, Callable[[list[Arch]], Any]],
              heartbeat: _Heartbeat) -> int:
    """Evaluate the reserved trials in one batch and tell each COMPLETE; all FAILED if evaluation fails. Returns
    the number stored: a trial another process failed meanwhile (this one recorded no heartbeat for ``GRACE_S``:
    paused, suspended, or cut off from the database) is asked again by the others, so its result is dropped
    (with a warning) and the total stays exact."""
    from .study import GRACE_S, check_objectives, constraints

    told: set[int] = set()
    lost = 0
    try:
        archs = [r.arch for r in batch]
        acc = accuracy(archs)
        lats = [latency[d](archs) for d in config.devices]
        check_objectives(archs, acc, dict(zip(config.devices, lats)))
        for i, reserved in enumerate(batch):
            values = [float(acc[i])] + [float(lat[i]) for lat in lats]
            limits = constraints(config, [lat[i] for lat in lats])
            try:
                for key, value in limits.items():
                    storage.set_trial_system_attr(reserved.trial_id, f"constraints:{key}", value)
                storage.set_trial_state_values(reserved.trial_id, state=TrialState.COMPLETE, values=values)
            except optuna.exceptions.UpdateFinishedTrialError:
                memory.tell(reserved.trial, state=TrialState.FAIL)
                told.add(reserved.trial_id)
                lost += 1
                continue
            for key, value in limits.items():
                reserved.trial.set_constraint(key, value)
            memory.tell(reserved.trial, values)
            told.add(reserved.trial_id)
    except BaseException:
        for reserved in batch:
            if reserved.trial_id not in told:
                memory.tell(reserved.trial, state=TrialState.FAIL, skip_if_finished=True)
                try:
                    storage.set_trial_state_values(reserved.trial_id, state=TrialState.FAIL)
                except Exception:  # noqa: BLE001  # the database is gone: the heartbeat's grace fails it
                    pass
        raise
    finally:
        heartbeat.done(r.trial_id for r in batch)
    if lost:
        warnings.warn(f"{lost} of this process's {len(batch)} trials were failed by another process sharing the "
                      f"study meanwhile (no heartbeat from this one for {GRACE_S} s: was it paused, or cut off from "
                      f"the database?); their results are dropped and the trials asked again", stacklevel=3)
    return len(batch) - lost
