"""The Optuna study of a search: its storage, name and identity, sampler and objectives, and the ask/tell loop.

One study covers every target device: its objectives are ``[accuracy, latency on device 1, latency on
device 2, ...]`` (named ``accuracy``, ``latency_<device>``). Each trial is one subnet, so its accuracy (the
expensive objective) is computed once and reused by every device's front; the latencies come from cheap
predictors. The first two trials of a new study are the largest and the smallest subnets.

The study is named after the run (its folder's name) unless ``search.study_name`` says otherwise, and it
records what it searched: the space, its resolutions, the devices and the supernet (``supernet_identity``:
the sha256 of the checkpoint, or of the Once-for-All file an imported run came from). A study of another space,
other resolutions, other devices or another supernet is refused with one line, so a storage shared by several
runs never mixes their trials.

Two ways to run the trials, chosen by the storage:

* A journal file in the run folder (the default; one process at a time, ``search_lock``): the sampler works
  on an in-memory copy and each finished batch of trials is appended to the storage (one write per trial).
  The storage only ever holds finished trials, each once, so a kill loses at most the batch being evaluated.
* A database (``search.storage``, any SQLAlchemy URL): several processes, on one machine or many, share the
  study as in Optuna's distributed optimisation (``nas.study_shared``): every trial is in the database,
  ``RUNNING`` with a heartbeat while it is evaluated, so each process sees the others' trials and none is
  done twice; ``n_trials`` is the total over all of them.

Running the search again continues it: ``n_trials`` counts the finished trials its sampler proposed, in total
(``sampler_trials_done``; the budget refinements and the precision search add trials after it, which do not
count, so raising ``n_trials`` by k adds k proposals). The sampler's random state is not stored, so a continued
search seeds its sampler from ``(seed, finished trials)``: it proposes new subnets instead of replaying its first
ones.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import optuna

from search_spaces import Arch, PrecisionPolicy, SearchSpace, arch_counts, arch_to_string

from .errors import UsageError
from .fronts import member_id
from .refine import REFINED_ATTR
from .search_config import SearchConfig
from .search_params import POLICY_PREFIX, decode_params, decode_policy, params_of, suggest_arch
from .search_paths import JOURNAL_NAME, run_path, search_paths

__all__ = ["GRACE_S", "HEARTBEAT_S", "ArchBatchFn", "TrialTable", "as_batch_fn", "check_journal", "check_objectives",
           "check_storage", "create_sampler", "is_shared", "load_study", "metric_names", "open_study", "optimize",
           "sampler_seed", "searched_space", "storage_for", "study_name_for", "study_trials", "supernet_identity"]

# A database storage's heartbeat: each process records one per running trial every HEARTBEAT_S seconds; a
# RUNNING trial without one for GRACE_S seconds belongs to a process that died, and is marked failed.
HEARTBEAT_S = 10
GRACE_S = 60

LEGACY_STUDY_NAME = "search"  # the study name of runs searched before names defaulted to the run's


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

    batch.objective = objective  # type: ignore[attr-defined]  # nas.scoring scores genomes through it
    return batch


def sampler_seed(seed: int, finished: int, worker: int | None = None) -> int:
    """The sampler's seed for a study with ``finished`` trials: ``seed`` for a new one, else one drawn from
    ``(seed, finished)``. A sampler's random state is not stored with the study, so a continued search
    seeded with ``seed`` again would propose its first subnets again; this keeps a continued search
    reproducible and new. ``worker`` (the process's number, ``nas.study_shared.worker_number``) is mixed in when
    several processes share the study, so they do not propose the same subnets."""
    if worker is not None:
        return int(np.random.SeedSequence([seed, finished, worker]).generate_state(1)[0])
    if finished == 0:
        return seed
    return int(np.random.SeedSequence([seed, finished]).generate_state(1)[0])


def create_sampler(config: SearchConfig, finished: int = 0, worker: int | None = None
                   ) -> optuna.samplers.BaseSampler:
    """The configured sampler for a study with ``finished`` trials (see ``sampler_seed``)."""
    seed = sampler_seed(config.seed, finished, worker)
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


def storage_for(config: SearchConfig, run_dir: Any, repair: bool = False) -> optuna.storages.BaseStorage:
    """The configured storage (opened), or a journal file in the run folder (checked by ``check_journal``; with
    ``repair``, which only the holder of the run's ``search_lock`` may ask for, a last record cut off by a kill
    is mended first).

    Raises:
        UsageError: ``search.storage`` cannot be opened (an unknown scheme, a missing driver, a database
            file that cannot be created or written); the message names the value and what is allowed.
        DamagedFileError: the journal holds a line that is not a record (beyond a torn last one), or records
            Optuna cannot replay.
    """
    if config.storage:
        try:
            return _open_database(config.storage)
        except Exception as exc:  # SQLAlchemy's errors, a missing driver (ImportError), a bad URL (ValueError)
            reason = " ".join(str(exc).split("(Background on this error")[0].split())
            raise UsageError(f"search.storage {_shown_url(config.storage)!r} cannot be opened ({type(exc).__name__}: "
                             f"{reason}); allowed: {STORAGE_ALLOWED}") from None
    from optuna.storages.journal import JournalFileBackend, JournalStorage

    from search_spaces import DamagedFileError

    path = search_paths(run_dir).journal
    check_journal(path, repair=repair)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        return JournalStorage(JournalFileBackend(str(path)))  # replays every record
    except Exception as exc:  # JSON records that are not Optuna's operations (another program's, fields missing)
        reason = f"records Optuna cannot replay: {type(exc).__name__}: {' '.join(str(exc).split())}"
        raise DamagedFileError(path, "search journal", reason, JOURNAL_REMEDY) from None


def check_storage(config: SearchConfig, run_dir: Any) -> None:
    """Open the study's storage as the search will, writing nothing to the run: a database that cannot be opened,
    a journal with a damaged record or with records Optuna cannot replay is refused (``storage_for``'s errors)
    before any work. A journal's torn last record is left to the search, which mends it under the run's lock."""
    journal = search_paths(run_dir).journal
    if config.storage or journal.is_file():
        storage_for(config, run_dir)
    else:
        check_journal(journal)


JOURNAL_REMEDY = ("move it away to start the search over (the run's supernet and stored fronts are kept), or "
                  "restore it from a copy")


def check_journal(path: Path, repair: bool = False) -> None:
    """Refuse a study journal with a line that is not a record, which Optuna's ``JournalFileBackend`` would
    fail on (``JSONDecodeError``) on every read once another line follows it.

    Optuna appends each batch of records in one write ending with a newline, so a kill leaves at most a last
    line without one, which Optuna skips when reading but would glue the next record onto. With ``repair``
    (the caller holds the run's ``search_lock``: no other process appends) that line is mended: dropped when
    it is a torn record, given its newline when it is a whole one; the file is replaced atomically and the
    original kept beside it (``study.journal.torn``, then ``.torn.1``...). Readers leave it alone: it may be a
    record being written now.

    Raises:
        DamagedFileError: a complete line (ending with a newline) that is not a journal record; it names the
            line and the file (records after it would be lost, so nothing is dropped silently).
    """
    from search_spaces import DamagedFileError, keep_copy

    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return
    except OSError as exc:
        raise DamagedFileError(path, "search journal", exc.strerror or type(exc).__name__, JOURNAL_REMEDY) from None
    cut = data.rfind(b"\n") + 1  # the complete lines end here; what follows was cut by a kill
    for number, line in enumerate(data[:cut].split(b"\n")[:-1], start=1):
        if _journal_record(line) is None:
            raise DamagedFileError(path, "search journal", f"line {number} is not a journal record",
                                   JOURNAL_REMEDY)
    tail = data[cut:]
    if not tail or not repair:
        return
    import shutil

    from .io import atomic_write_bytes

    whole = _journal_record(tail) is not None
    try:
        backup = keep_copy(path, "torn")
    except OSError as exc:
        raise UsageError(f"search journal {path}: its last record was cut off (by a kill), and a copy cannot be "
                         f"kept beside it ({exc.strerror or type(exc).__name__}: {exc.filename2 or exc.filename}) "
                         f"before mending it; make the folder writable, or {JOURNAL_REMEDY}") from None
    atomic_write_bytes(path, data + b"\n" if whole else data[:cut])
    shutil.copymode(backup, path)  # the mode the original had (the atomic write gives the umask default)
    done = "gave its last record the newline a kill cut off" if whole else \
        f"dropped its last record, cut off by a kill ({len(tail)} bytes)"
    warnings.warn(f"search journal {path}: {done}; the original is kept as {backup}", stacklevel=2)


def _journal_record(line: bytes) -> dict[str, Any] | None:
    """The journal record a line holds (a JSON object with an ``op_code``), else None."""
    try:
        record = json.loads(line)
    except ValueError:  # JSONDecodeError, UnicodeDecodeError
        return None
    return record if isinstance(record, dict) and "op_code" in record else None


# How long a write to a SQLite study waits for another connection's lock (Python's default is 5 s) before failing
# with "database is locked": several processes share the file, and one stalled on a loaded machine, or a long read
# (a dashboard), may hold it for seconds. A URL's own ``?timeout=`` is kept.
SQLITE_BUSY_S = 120.0


def _open_database(url: str, attempts: int = 5) -> optuna.storages.BaseStorage:
    """Optuna's storage of a database URL, with heartbeats (``nas.study_shared``)."""
    engine_kwargs: dict[str, Any] = {}
    if url.startswith("sqlite") and "timeout=" not in url.partition("?")[2]:
        engine_kwargs["connect_args"] = {"timeout": SQLITE_BUSY_S}
    for attempt in range(attempts):
        try:
            with warnings.catch_warnings():  # heartbeats: experimental since Optuna 2.9, and what it relies on
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                return optuna.storages.get_storage(optuna.storages.RDBStorage(
                    url, heartbeat_interval=HEARTBEAT_S, grace_period=GRACE_S, engine_kwargs=engine_kwargs))
        except Exception as exc:
            # Processes started together on a new database all create its tables, and all but one fail: on
            # the unique row of its schema version, on a table another just created ("already exists"), or
            # on SQLite's lock. The tables are there on the next try.
            racing = type(exc).__name__ == "IntegrityError" or (
                type(exc).__name__ == "OperationalError"
                and any(text in str(exc) for text in ("already exists", "database is locked")))
            if attempt + 1 == attempts or not racing:
                raise
            time.sleep(0.2 * (attempt + 1))
    raise AssertionError("unreachable")


def metric_names(devices: Sequence[str]) -> list[str]:
    """The study's objective names: ``accuracy``, then ``latency_<device>`` (milliseconds) per device."""
    return ["accuracy"] + [f"latency_{d}" for d in devices]


def is_shared(study: optuna.Study) -> bool:
    """True when the study lives in a database that several processes may share (``RDBStorage``)."""
    storage = study._storage  # Optuna wraps an RDBStorage in a cache; the backend says what it is
    return isinstance(getattr(storage, "_backend", storage), optuna.storages.RDBStorage)


def study_name_for(config: SearchConfig, run_dir: Any, storage: optuna.storages.BaseStorage | None = None) -> str:
    """``search.study_name``, else the run's name (its folder's). The run's own journal belongs to the run:
    when it holds one study under another name, that one is the run's (a run folder moved or copied since,
    or written before names defaulted to the run's, as ``search``)."""
    if config.study_name:
        return config.study_name
    name = run_path(run_dir).resolve().name or LEGACY_STUDY_NAME
    if not config.storage and storage is not None:
        names = {s.study_name for s in storage.get_all_studies()}
        if name not in names and len(names) == 1:
            return names.pop()
    return name


def supernet_identity(checkpoint: Any) -> str | None:
    """What a study's trials were measured on: ``once-for-all:<sha256>`` of the zoo file an imported run came
    from (its ``import.json``), else ``sha256:<sha256>`` of the checkpoint file; None without a file."""
    if not checkpoint or not Path(checkpoint).is_file():
        return None
    path = Path(checkpoint)
    record = path.parent.parent / "import.json"  # nas.ofa_zoo.IMPORT_RECORD_NAME, beside RUN/checkpoints/
    if record.is_file():
        try:
            data = json.loads(record.read_text())
        except (OSError, ValueError):
            data = {}
        if isinstance(data, dict) and data.get("kind") == "supernet" and isinstance(data.get("sha256"), str):
            return f"once-for-all:{data['sha256']}"
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return f"sha256:{digest.hexdigest()}"


def _where(config: SearchConfig) -> str:
    return f"storage {_shown_url(config.storage)!r}" if config.storage else "this run's journal"


def _shown_url(url: str) -> str:
    """A database URL as messages show it: its password as ``***`` (they end up in logs and CI output)."""
    try:
        from sqlalchemy.engine import make_url

        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # not a URL SQLAlchemy can parse (a bad port): hide what stands where a password would
        import re

        return re.sub(r"(://[^:/@]*:)[^@]*@", r"\1***@", url)


def open_study(config: SearchConfig, run_dir: Any, space: SearchSpace,
               sampler: optuna.samplers.BaseSampler | None = None, supernet: str | None = None,
               accuracy: str | None = None) -> optuna.Study:
    """Create the study or load it (same name) when it exists; refuse a study of another space, other
    devices, another supernet (``supernet``: ``supernet_identity`` of the run's checkpoint) or another accuracy
    objective (``accuracy``: ``"direct"`` or ``"predictor"``: its trials' accuracies would not compare with this
    search's). A study that has no supernet or accuracy recorded takes this one; a call
    without one compares none.

    Raises:
        UsageError: the study holds another search's trials; the message says what differs and what to do.
    """
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    if not config.devices:
        raise UsageError("search: no target devices; list at least one under 'devices'")
    storage = storage_for(config, run_dir, repair=True)  # its callers hold the run's search_lock
    name = study_name_for(config, run_dir, storage)
    sampler = sampler or create_sampler(config)
    try:  # the one process whose create_study succeeds sets the study up (several may start at once)
        study = optuna.create_study(study_name=name, storage=storage, sampler=sampler,
                                    directions=["maximize"] + ["minimize"] * len(config.devices))
        created = True
    except optuna.exceptions.DuplicatedStudyError:
        study = optuna.load_study(study_name=name, storage=storage, sampler=sampler)
        created = False
    # The resolutions searched shape the study's parameters (one resolution: no `resolution` parameter), so a
    # study's trials decode only in the space they were asked in.
    expected: dict[str, Any] = {"space": space.name, "devices": list(config.devices),
                                "resolutions": [int(r) for r in space.resolutions]}
    if supernet:
        expected["supernet"] = supernet
    if accuracy:
        expected["accuracy"] = accuracy
    attrs = study.user_attrs
    if "space" not in attrs and not created and is_shared(study):
        attrs = _wait_for_setup(study)  # its creator is setting it up now, or it was made by `optuna create-study`
    if "space" not in attrs and not created:
        _check_adoptable(study, config, name)
    if "space" not in attrs:
        # "space" is written last: each attribute is its own write, and another process opening the study takes
        # one with "space" for set up (its devices, resolutions, supernet and first trials already there).
        for key, value in expected.items():
            if key != "space":
                study.set_user_attr(key, value)
        study.set_user_attr("objectives", ["accuracy"] + [f"latency_ms:{d}" for d in config.devices])
        with warnings.catch_warnings():  # experimental since Optuna 3.2, and what its dashboard reads
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            study.set_metric_names(metric_names(config.devices))
        if is_shared(study) and not study.get_trials(deepcopy=False):
            for params in anchor_params(space):  # claimed by whichever process asks first (nas.study_shared)
                study.enqueue_trial(params, skip_if_exists=True)
        study.set_user_attr("space", expected["space"])
        attrs = study.user_attrs  # read back: another process may have set up the same study just now
    else:  # set up before studies recorded their supernet / resolutions / accuracy objective
        missing = [key for key in ("supernet", "resolutions", "accuracy") if key in expected and key not in attrs]
        for key in missing:
            study.set_user_attr(key, expected[key])
        if missing:
            attrs = study.user_attrs
    _check_identity(config, name, attrs, expected)
    return study


def _check_adoptable(study: optuna.Study, config: SearchConfig, name: str) -> None:
    """``UsageError`` for a study that no search set up (no "space" attribute) holding trials or other objectives:
    another program's, which the search must neither write into nor read as subnets. An empty one with the
    search's objectives (made by `optuna create-study`, or whose creator died setting it up) is adopted."""
    wanted = [optuna.study.StudyDirection.MAXIMIZE] + [optuna.study.StudyDirection.MINIMIZE] * len(config.devices)
    trials = [t for t in study.get_trials(deepcopy=False) if t.state != optuna.trial.TrialState.WAITING]
    if list(study.directions) == wanted and not trials:
        return
    elsewhere = "set search.study_name to another name" + ("" if config.storage else
                                                            ", or move the run's search journal away")
    raise UsageError(f"study {name!r} in {_where(config)} was not made by `nas search` (it records no searched "
                     f"space) and holds {len(trials)} trials of {len(study.directions)} objective(s); a search of "
                     f"{len(config.devices)} device(s) has {len(wanted)} objectives: {elsewhere}")


def _wait_for_setup(study: optuna.Study, timeout_s: float = 15.0) -> dict[str, Any]:
    """The study's user attributes once its creator has written them (or after ``timeout_s``: a study made by
    `optuna create-study`, or whose creator died while setting it up; generous, as a loaded machine or a busy
    database may take seconds over the creator's few writes)."""
    deadline = time.monotonic() + timeout_s
    attrs = study.user_attrs
    while "space" not in attrs and time.monotonic() < deadline:
        time.sleep(0.05)
        attrs = study.user_attrs
    return attrs


def _check_identity(config: SearchConfig, name: str, attrs: Mapping[str, Any], expected: Mapping[str, Any]) -> None:
    where = _where(config)
    if attrs.get("space") != expected["space"] or list(attrs.get("devices", [])) != expected["devices"]:
        raise UsageError(f"study {name!r} in {where} searched space {attrs.get('space')!r} on devices "
                         f"{attrs.get('devices')}; this config has {expected['space']!r} on {expected['devices']}: "
                         f"set search.study_name to another name (or use another run folder)")
    searched = attrs.get("resolutions")
    if searched is not None and list(searched) != expected["resolutions"]:
        raise UsageError(f"study {name!r} in {where} searched resolutions {list(searched)}; this config searches "
                         f"{expected['resolutions']} (search.resolutions): set search.study_name to another name "
                         f"(or use another run folder), or search the same resolutions")
    stored = attrs.get("supernet")
    if "supernet" in expected and stored and stored != expected["supernet"]:
        raise UsageError(f"study {name!r} in {where} holds the trials of supernet {stored}, and this run's supernet "
                         f"is {expected['supernet']}: set search.study_name to another name for this supernet "
                         f"(studies are named after their run by default)")
    stored = attrs.get("accuracy")
    if "accuracy" in expected and stored and stored != expected["accuracy"]:
        raise UsageError(f"study {name!r} in {where} holds accuracies from {_accuracy_shown(stored)}, and this "
                         f"search's come from {_accuracy_shown(expected['accuracy'])}: they do not compare; set "
                         f"search.accuracy back, or search.study_name to another name to search again")


def _accuracy_shown(identity: str) -> str:
    return "direct evaluation of the supernet" if identity == "direct" else f"the accuracy {identity}"


def load_study(run_dir: Any, config: SearchConfig | None = None) -> optuna.Study:
    """Load the run's study (journal file by default) without a sampler, for reading.

    Raises:
        UsageError: the run has no journal, or its storage holds no study of the name ``study_name_for``
            gives (a journal emptied, a run searched under another ``search.study_name``); the message
            names the study looked for and those the storage holds.
    """
    config = config or SearchConfig()
    if not config.storage and not search_paths(run_dir).journal.exists():
        raise UsageError(f"run {str(run_path(run_dir))!r} has no search study (search/{JOURNAL_NAME}); "
                         f"run `nas search` first")
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    storage = storage_for(config, run_dir)
    name = study_name_for(config, run_dir, storage)
    names = sorted(s.study_name for s in storage.get_all_studies())
    if name not in names:
        held = (f"it holds {', '.join(map(repr, names))}; search.study_name names the one to read" if names
                else "it holds none: its trials are lost; run `nas search` again")
        raise UsageError(f"run {str(run_path(run_dir))!r}: {_where(config)} has no search study {name!r} ({held})")
    return optuna.load_study(study_name=name, storage=storage)


def anchor_params(space: SearchSpace) -> list[dict[str, Any]]:
    """The parameters of the first two trials of a new study: the largest and the smallest subnets, which
    anchor both ends of every device's front from the start."""
    from search_spaces import largest, smallest

    return [params_of(space, arch) for arch in (largest(space), smallest(space))]


def arch_attrs(space: SearchSpace, arch: Arch) -> dict[str, Any]:
    """A trial's user attributes: what the dashboard and ``trials_dataframe()`` show beside its parameters."""
    counts = arch_counts(space, arch)
    return {"arch": arch_to_string(space, arch), "params": counts.params, "macs": counts.macs}


def constraints(config: SearchConfig, latency_ms: Sequence[float]) -> dict[str, float]:
    """A trial's constraints (``Trial.set_constraint``): latency minus budget on each device with a budget."""
    budgets = config.budgets
    return {f"latency:{d}": float(latency_ms[k] - budgets[d]) for k, d in enumerate(config.devices) if d in budgets}


def _recover_stale(study: optuna.Study) -> int:
    """Mark trials a killed process left running (in storages written trial by trial) as failed."""
    stale = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,))
    for trial in stale:
        study.tell(trial.number, state=optuna.trial.TrialState.FAIL, skip_if_finished=True)
    return len(stale)


def proposed_by_sampler(trial: optuna.trial.FrozenTrial) -> bool:
    """Whether ``trial`` is one the search's sampler proposed, what ``n_trials`` counts: not a trial added to the
    study after the search (a budget's refinement, user attribute ``refined_for``; the precision search's,
    ``precision.<group>`` parameters)."""
    return REFINED_ATTR not in trial.user_attrs and not any(k.startswith(POLICY_PREFIX) for k in trial.params)


def sampler_trials_done(study: optuna.Study) -> int:
    """The finished trials the sampler proposed (``proposed_by_sampler``): the search's progress towards
    ``n_trials``."""
    return sum(proposed_by_sampler(t) for t in study.get_trials(deepcopy=False,
                                                                  states=(optuna.trial.TrialState.COMPLETE,)))


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
    """Run trials with ask/tell in batches until ``config.n_trials`` proposed trials are finished in total.

    A study in a database is shared with any other process searching it (``nas.study_shared.optimize_shared``);
    the rest of this docstring is about a journal file or an in-memory study. The sampler
    (``create_sampler``, unless one is given) is seeded from the finished trials' count, so a continued
    study gets new proposals. Callers hold ``search_lock`` (``run_search`` does).

    The sampler works on an in-memory copy of the study; each finished batch is then appended to the
    persistent ``study`` with one write per trial (``add_trials``), so a journal file is not written
    (and fsynced) once per suggested parameter. A kill loses at most the unfinished batch; every trial
    in the storage is finished and stored once. Returns the number of trials finished by this call.
    """
    if is_shared(study):
        from .study_shared import optimize_shared

        return optimize_shared(study, space, config, accuracy, latency, progress, sampler)
    _recover_stale(study)
    done_before = sampler_trials_done(study)
    memory = working_copy(study, sampler or create_sampler(config, done_before))
    if not memory.get_trials(deepcopy=False):
        for params in anchor_params(space):
            memory.enqueue_trial(params)
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
                for key, value in arch_attrs(space, archs[i]).items():
                    trial.set_user_attr(key, value)
                for key, value in constraints(config, [lat[i] for lat in lats]).items():
                    trial.set_constraint(key, value)
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
    # Each trial's precision policy (None: fp32 throughout; others come from nas.precision_search).
    policies: list[PrecisionPolicy | None] | None = None

    def policy(self, i: int) -> PrecisionPolicy | None:
        return None if self.policies is None else self.policies[i]

    def keys(self) -> list[str]:
        """Each trial's subnet as a front knows it (``nas.fronts.member_id``): the arch id, with ``+<policy>``
        when quantised."""
        policies = [self.policy(i) for i in range(len(self.archs))]
        return [member_id(a.arch_id, None if p is None else str(p)) for a, p in zip(self.archs, policies)]

    def subset(self, keep: Sequence[int] | np.ndarray) -> TrialTable:
        idx = [int(i) for i in keep]
        return TrialTable([self.numbers[i] for i in idx], [self.archs[i] for i in idx], self.accuracy[idx],
                          self.latency_ms[idx], [self.policy(i) for i in idx])

    def fp32(self) -> TrialTable:
        """The trials of fp32 subnets (what the sampler and the budget refinement work on)."""
        return self.subset([i for i in range(len(self.archs)) if self.policy(i) is None])


def searched_space(study: optuna.Study, space: SearchSpace) -> SearchSpace:
    """``space`` limited to the resolutions the study searched (its ``resolutions`` user attribute, written by
    ``open_study``): a study searched at one resolution has no ``resolution`` parameter, so its trials decode
    only in that space. A study that records no resolutions (set up before studies recorded them) is read in
    ``space`` as given.

    Raises:
        UsageError: the study's resolutions are not resolutions of ``space``.
    """
    recorded = study.user_attrs.get("resolutions")
    if recorded is None:
        return space
    try:
        resolutions = tuple(sorted({int(r) for r in recorded}))
    except (TypeError, ValueError):
        resolutions = ()
    if not resolutions or any(r not in space.resolutions for r in resolutions):
        raise UsageError(f"study {study.study_name!r} records resolutions {recorded!r}, which are not resolutions "
                         f"of space {space.name!r} ({', '.join(map(str, space.resolutions))}); is it the study of "
                         f"another space?")
    if resolutions == tuple(space.resolutions):
        return space
    import dataclasses

    return dataclasses.replace(space, resolutions=resolutions)


def study_trials(study: optuna.Study, space: SearchSpace) -> TrialTable:
    """The study's finished trials with their decoded archs, precision policies and objective values, decoded
    in the space the study searched (``searched_space``), whichever ``space`` (full or restricted) the caller
    has."""
    space = searched_space(study, space)
    trials = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    trials = sorted(trials, key=lambda t: t.number)
    archs = [decode_params(space, t.params) for t in trials]
    policies = [decode_policy(space, t.params) for t in trials]
    n_obj = len(study.directions)
    values = np.array([t.values for t in trials], dtype=np.float64).reshape(len(trials), n_obj)
    return TrialTable([t.number for t in trials], archs, values[:, 0], values[:, 1:], policies)
