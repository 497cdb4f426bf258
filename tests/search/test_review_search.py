"""A user's review of the search (real Optuna, real SQLite and PostgreSQL): settings changed between ``nas run``s,
two processes setting up one new database study at once, and a process whose trials another one failed while it
was paused."""

from __future__ import annotations

import sqlite3
import threading
import time
import types
from pathlib import Path

import optuna
import pytest
import sqlalchemy
import yaml
from optuna.storages.journal import JournalFileBackend, JournalStorage
from optuna.trial import TrialState

import nas.study
from nas.cli import main
from nas.errors import UsageError
from nas.search import run_search
from nas.search_config import SearchConfig
from nas.search_stage import search_is_complete
from nas.study import load_study, open_study
from nas.study_shared import _claim_waiting, _Heartbeat, optimize_shared
from search_spaces import DamagedFileError, get_space

from .conftest import stub_counts
from .test_cooperative import postgres_url  # noqa: F401  # the throwaway PostgreSQL cluster fixture

SPACE = "ofa_mbv3_cifar"


def config_of(devices=("dev",), **settings) -> SearchConfig:
    return SearchConfig.parse({"n_trials": 16, "batch_size": 8, "population_size": 10, **settings}, list(devices))


def search(run: Path, toy, config: SearchConfig):
    return run_search(config, run, toy.accuracy, {"dev": toy.latency()}, space=SPACE, counts_fn=stub_counts)


# --- nas run: a search stage whose fronts were written under other settings is not done -----------------------


def test_a_changed_budget_makes_the_search_stage_run_again(tmp_path, toy):
    run = tmp_path / "run"
    fronts = search(run, toy, config_of())
    latencies = [m.latency_ms for m in fronts["dev"]]
    budget = (latencies[0] + latencies[-1]) / 2
    assert search_is_complete(types.SimpleNamespace(search=config_of()), run)

    # A device budget set since (its front may hold nothing slower), a budget to refine, int8 listed: the stored
    # fronts are not this config's, so `nas run` must search again.
    for changed in (config_of([{"id": "dev", "max_latency_ms": budget}]), config_of(budgets_ms=[budget]),
                    config_of(precisions=["fp32", "int8"])):
        assert not search_is_complete(types.SimpleNamespace(search=changed), run), changed
    # The calibration of quantised subnets does not matter to fp32-only fronts.
    assert search_is_complete(types.SimpleNamespace(search=config_of(quantization_method="entropy")), run)

    capped = config_of([{"id": "dev", "max_latency_ms": budget}])
    fronts = search(run, toy, capped)
    assert fronts["dev"] and max(m.latency_ms for m in fronts["dev"]) <= budget
    assert search_is_complete(types.SimpleNamespace(search=capped), run)
    # And back: the budget dropped again, the front is the uncapped one once searched again.
    assert not search_is_complete(types.SimpleNamespace(search=config_of()), run)
    assert max(m.latency_ms for m in search(run, toy, config_of())["dev"]) == latencies[-1]


# --- two processes opening one new database study at once ---------------------------------------------------


SLOW_DEVICES = """
CREATE OR REPLACE FUNCTION nas_test_slow_devices() RETURNS trigger AS $$
BEGIN
    IF NEW.key = 'devices' THEN PERFORM pg_sleep(1.0); END IF;
    RETURN NEW;
END $$ LANGUAGE plpgsql;
CREATE TRIGGER nas_test_slow_devices BEFORE INSERT ON study_user_attributes
    FOR EACH ROW EXECUTE FUNCTION nas_test_slow_devices();
"""


def test_a_study_being_set_up_by_another_process_is_not_refused(tmp_path, postgres_url):  # noqa: F811
    """The creator writes the study's attributes one by one; a second process must not judge the study by half of
    them (it refused the study as one "on devices None" when it read "space" before "devices" was written). The
    creator's write of "devices" is held for a second by a trigger, as a busy database or machine may hold it."""
    optuna.storages.RDBStorage(postgres_url)  # Optuna's tables, for the trigger
    engine = sqlalchemy.create_engine(postgres_url)
    with engine.begin() as connection:
        connection.execute(sqlalchemy.text(SLOW_DEVICES))
    try:
        config = config_of(storage=postgres_url, study_name="set-up-at-once")
        space = get_space(SPACE)
        errors: list[BaseException] = []

        def create() -> None:
            try:
                open_study(config, tmp_path / "a", space)
            except BaseException as exc:  # noqa: BLE001  # reported by the assertion below
                errors.append(exc)

        creator = threading.Thread(target=create)
        creator.start()
        deadline = time.monotonic() + 60
        while "set-up-at-once" not in optuna.get_all_study_names(storage=postgres_url):
            assert time.monotonic() < deadline, "the creator never created the study"
            time.sleep(0.01)
        study = open_study(config, tmp_path / "b", space)  # while the creator is still setting the study up
        creator.join()
        assert not errors, errors
        assert study.user_attrs["devices"] == ["dev"] and study.user_attrs["space"] == SPACE
        # The largest and the smallest subnets were enqueued once, by the creator.
        assert len(study.get_trials(deepcopy=False, states=(TrialState.WAITING,))) == 2
    finally:
        with engine.begin() as connection:
            connection.execute(sqlalchemy.text("DROP TRIGGER nas_test_slow_devices ON study_user_attributes"))
        engine.dispose()


# --- a process whose running trials another process failed (no heartbeat for the grace period) -----------------


@pytest.mark.filterwarnings("ignore:Heartbeat of storage")
def test_trials_failed_by_another_process_meanwhile_are_asked_again(tmp_path, toy):
    """A process paused (or cut off from the database) past the grace period finds, when it tells its batch, that
    another process failed one of its trials as stale. It used to stop with Optuna's UpdateFinishedTrialError
    (a traceback); now it drops that result with a warning and the total stays exact."""
    url = f"sqlite:///{tmp_path / 'shared.db'}"
    config = config_of(storage=url, n_trials=12)
    space = get_space(SPACE)
    study = open_study(config, tmp_path / "run", space)
    other = optuna.storages.get_storage(url)  # the other process's connection
    failed: list[int] = []

    def accuracy(archs):
        if not failed:  # while the first batch is evaluated: the other process's fail_stale_trials
            running = other.get_all_trials(study._study_id, deepcopy=False, states=(TrialState.RUNNING,))
            failed.append(running[0]._trial_id)
            other.set_trial_state_values(failed[0], state=TrialState.FAIL)
        return toy.accuracy(archs)

    with pytest.warns(UserWarning, match="failed by another process"):
        done = optimize_shared(study, space, config, accuracy, {"dev": toy.latency()})
    assert done == 12
    study = load_study(tmp_path / "run", config)
    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    assert len(complete) == 12
    assert [t._trial_id for t in study.get_trials(deepcopy=False, states=(TrialState.FAIL,))] == failed


# --- a journal of JSON records that are not Optuna's operations ----------------------------------------------


@pytest.mark.parametrize("records", [
    b'{"op_code": 99}\n',  # an operation Optuna does not know
    b'{"op_code": 0, "worker_id": "w"}\n',  # create_study without its fields
])
def test_a_journal_optuna_cannot_replay_is_one_line_naming_it(tmp_path, toy, capsys, records):
    run = tmp_path / "run"
    search(run, toy, config_of())
    journal = run / "search" / "study.journal"
    journal.write_bytes(records)
    with pytest.raises(DamagedFileError, match="search journal .*records Optuna cannot replay"):
        load_study(run)
    # The command line: one line naming the journal, refused before the (placeholder) supernet is read.
    (run / "checkpoints").mkdir()
    (run / "checkpoints" / "supernet.pt").write_bytes(b"")
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump({"name": "review", "space": SPACE, "run_dir": str(run), "devices": ["dev"],
                                      "search": {"n_trials": 16}}))
    for argv in (["search", str(config)], ["plot", str(run), "--out", str(tmp_path / "plot.png")]):
        assert main(argv) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("nas: error: search journal ") and "\n" not in err and str(journal) in err, err
    assert journal.read_bytes() == records


# --- a process killed between reserving a trial and its first heartbeat -----------------------------------------


@pytest.mark.filterwarnings("ignore:Heartbeat of storage")
def test_a_trial_reserved_by_a_process_killed_before_its_first_heartbeat_is_failed(tmp_path, toy, monkeypatch):
    """Optuna counts a RUNNING trial stale only by its heartbeat: one whose process was killed right after claiming
    it (the largest subnet, enqueued in a new study) had none, and every later search of the study waited for it
    forever. Now it is failed once it has been seen without a heartbeat for the grace period."""
    monkeypatch.setattr(nas.study, "GRACE_S", 1)
    url = f"sqlite:///{tmp_path / 'shared.db'}"
    config = config_of(storage=url, n_trials=10)
    space = get_space(SPACE)
    study = open_study(config, tmp_path / "run", space)
    orphan = _claim_waiting(study._storage, study._study_id)  # then the process was killed
    assert orphan is not None
    result: list[object] = []
    thread = threading.Thread(target=lambda: result.append(
        optimize_shared(study, space, config, toy.accuracy, {"dev": toy.latency()})), daemon=True)
    thread.start()
    thread.join(timeout=120)
    assert not thread.is_alive(), "the search waited for the killed process's trial"
    study = load_study(tmp_path / "run", config)
    assert result == [10] and len(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))) == 10
    assert [t.number for t in study.get_trials(deepcopy=False, states=(TrialState.FAIL,))] == [orphan.number]


class InterruptedSampler(optuna.samplers.RandomSampler):
    """A sampler whose process gets Ctrl-C the first time it is asked for a parameter (after the enqueued
    largest and smallest subnets were reserved, whose parameters are fixed)."""

    def sample_independent(self, study, trial, param_name, param_distribution):
        raise KeyboardInterrupt


def test_a_search_stopped_while_reserving_frees_its_trials(tmp_path, toy):
    """Ctrl-C while a batch is being reserved: the trials already reserved are failed at once, so a search started
    again does not wait the grace period (a minute) for them."""
    url = f"sqlite:///{tmp_path / 'shared.db'}"
    config = config_of(storage=url, n_trials=10)
    space = get_space(SPACE)
    study = open_study(config, tmp_path / "run", space)
    with pytest.raises(KeyboardInterrupt):
        optimize_shared(study, space, config, toy.accuracy, {"dev": toy.latency()}, sampler=InterruptedSampler())
    assert not study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
    assert len(study.get_trials(deepcopy=False, states=(TrialState.FAIL,))) == 2  # the two reserved
    started = time.monotonic()
    assert optimize_shared(study, space, config, toy.accuracy, {"dev": toy.latency()}) == 10
    assert time.monotonic() - started < nas.study.GRACE_S


# --- a file where the search expects a folder, a folder where it expects a file ---------------------------------


def test_a_file_where_the_fronts_folder_goes_is_refused_before_any_trial(tmp_path, toy):
    run = tmp_path / "run"
    run.mkdir()
    (run / "fronts").write_text("not a folder")
    with pytest.raises(UsageError, match=r"fronts is a file, not a folder; move it away"):
        search(run, toy, config_of())
    assert toy.calls == 0 and (run / "fronts").read_text() == "not a folder"


def test_a_folder_where_the_search_lock_goes_is_one_line(tmp_path, toy, capsys):
    run = tmp_path / "run"
    (run / "search" / "search.lock").mkdir(parents=True)
    with pytest.raises(UsageError, match=r"search lock .*search\.lock of run .* cannot be taken \(Is a directory"):
        search(run, toy, config_of())
    assert toy.calls == 0
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump({"name": "review", "space": SPACE, "run_dir": str(run), "devices": ["dev"]}))
    (run / "checkpoints").mkdir()
    (run / "checkpoints" / "supernet.pt").write_bytes(b"")
    assert main(["search", str(config)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("nas: error: the search lock ") and "\n" not in err, err


# --- a study another program made, under the run's name ------------------------------------------------------------


@pytest.mark.parametrize("shared", [False, True])
def test_another_programs_study_is_refused_and_left_as_it_was(tmp_path, toy, shared):
    """The run's journal (or a shared database) holds a study of another program under the name the search takes:
    it used to be adopted (the search's attributes written into it) and then failed with Optuna's ValueError."""
    run = tmp_path / "run"
    if shared:
        url = f"sqlite:///{tmp_path / 'shared.db'}"
        storage, config = url, config_of(storage=url)
    else:
        (run / "search").mkdir(parents=True)
        storage = JournalStorage(JournalFileBackend(str(run / "search" / "study.journal")))
        config = config_of()
    other = optuna.create_study(storage=storage, study_name="run")
    other.optimize(lambda trial: trial.suggest_float("x", 0, 1), n_trials=3)
    with pytest.raises(UsageError, match=r"study 'run' .* was not made by `nas search` .* holds 3 trials"):
        search(run, toy, config)
    assert toy.calls == 0
    other = optuna.load_study(study_name="run", storage=storage)
    assert other.user_attrs == {} and len(other.trials) == 3


# --- a SQLite study locked for a while by another connection -----------------------------------------------------


def test_a_sqlite_study_locked_for_seconds_by_another_connection_is_waited_for(tmp_path, toy):
    """Another process sharing the file (stalled on a loaded machine, or a long read) holds its lock for 6.5 s while
    the search writes: Python's default wait of 5 s stopped the search with Optuna's StorageInternalError."""
    db = tmp_path / "shared.db"
    held = threading.Event()

    def hold() -> None:
        connection = sqlite3.connect(db, isolation_level=None)
        connection.execute("BEGIN EXCLUSIVE")
        held.set()
        time.sleep(6.5)
        connection.execute("COMMIT")
        connection.close()

    def accuracy(archs):
        if not held.is_set():  # while the first batch is evaluated: the others' writes wait for the lock
            threading.Thread(target=hold, daemon=True).start()
            held.wait()
        return toy.accuracy(archs)

    config = config_of(storage=f"sqlite:///{db}")
    fronts = run_search(config, tmp_path / "run", accuracy, {"dev": toy.latency()}, space=SPACE,
                        counts_fn=stub_counts)
    assert fronts["dev"]
    study = load_study(tmp_path / "run", config)
    assert len(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))) == 16


# --- a calibration method changed between searches of one study ------------------------------------------------


def test_int8_subnets_of_another_calibration_are_refused_before_any_trial(tmp_path, toy):
    """The study's int8 subnets were measured under minmax calibration; a config that asks for entropy then grew
    the search and wrote fronts recorded as entropy's from minmax's accuracies (exports calibrated otherwise)."""
    from .test_precision_search import ToyEvaluator, ToyMixedLatency, _config

    run = tmp_path / "run"

    def search_int8(**settings):
        return run_search(_config(precisions=["fp32", "int8"], precision_candidates=6, **settings), run,
                          toy.accuracy, {"cpu": ToyMixedLatency(toy)}, space=SPACE, final_evaluator=ToyEvaluator(toy),
                          counts_fn=stub_counts)

    assert {m.precision for m in search_int8()["cpu"]} == {"fp32", "int8"}
    store = run / "fronts" / "fronts.sqlite"
    before, calls = store.read_bytes(), toy.calls
    with pytest.raises(UsageError, match=r"calibrated with 'minmax', and search.quantization_method is 'entropy'"):
        search_int8(quantization_method="entropy", n_trials=64)
    assert toy.calls == calls and store.read_bytes() == before
    assert len(load_study(run).get_trials(deepcopy=False, states=(TrialState.COMPLETE,))) > 48
    # fp32 only: the int8 subnets stay out of the fronts, so any calibration is fine; and the same method goes on.
    run_search(_config(quantization_method="entropy"), run, toy.accuracy, {"cpu": ToyMixedLatency(toy)},
               space=SPACE, counts_fn=stub_counts)
    search_int8(n_trials=64)


# --- a database password in a message ------------------------------------------------------------------------


@pytest.mark.parametrize("url", ["postgresql+psycopg2://nas:s3cret@127.0.0.1:1/db",
                                 "postgresql://nas:s3cret@host:notaport/db"])
def test_a_storage_that_cannot_be_opened_is_named_without_its_password(tmp_path, toy, url):
    """The message of a storage that cannot be opened ends up in logs and CI output: its password is shown as ***,
    as the study's other messages show it."""
    with pytest.raises(UsageError, match=r"search.storage 'postgresql.*://nas:\*\*\*@") as info:
        search(tmp_path / "run", toy, config_of(storage=url))
    assert "s3cret" not in str(info.value)


# --- two processes on one study asking for different totals ------------------------------------------------------


@pytest.mark.filterwarnings("ignore:Heartbeat of storage")  # the test plays the other process with study.ask
def test_a_process_whose_total_is_reached_does_not_wait_for_a_larger_search(tmp_path, toy):
    """One process asks for 8 trials, another (started later with a larger --n-trials) is still running trials
    beyond them: the first used to wait for every running trial, i.e. for the whole larger search."""
    url = f"sqlite:///{tmp_path / 'shared.db'}"
    config = config_of(storage=url, n_trials=8)
    space = get_space(SPACE)
    study = open_study(config, tmp_path / "run", space)
    assert optimize_shared(study, space, config, toy.accuracy, {"dev": toy.latency()}) == 8
    other = [study.ask() for _ in range(3)]  # the larger search's trials 8, 9, 10, beating
    beating = _Heartbeat(optuna.storages.get_storage(url), 0.2)
    for trial in other:
        beating.add(trial._trial_id)
    try:
        result: list[int] = []
        thread = threading.Thread(target=lambda: result.append(
            optimize_shared(study, space, config, toy.accuracy, {"dev": toy.latency()})), daemon=True)
        thread.start()
        thread.join(timeout=60)
        assert not thread.is_alive(), "it waited for the trials of the larger search"
        assert result == [0]
    finally:
        beating.close()
    # (Waiting for other processes' trials within its total: test_cooperative's
    # test_a_process_waits_for_the_others_last_trials.)
    assert [t.state for t in study.get_trials(deepcopy=False)[8:]] == [TrialState.RUNNING] * 3


# --- the accuracy objective changed between searches of one study ------------------------------------------------


def test_a_study_refuses_accuracies_from_another_objective(tmp_path, toy):
    """A study searched with the accuracy predictor, continued with direct evaluation, mixed the two kinds of
    accuracy in one front; its study now records what its accuracies come from."""
    from nas.search_stage import accuracy_identity

    run = tmp_path / "run"

    def search_with(identity, n_trials=16):
        return run_search(config_of(n_trials=n_trials), run, toy.accuracy, {"dev": toy.latency()}, space=SPACE,
                          counts_fn=stub_counts, accuracy_identity=identity)

    search_with(None)  # a study set up before it recorded its objective takes the next one's
    search_with(accuracy_identity(config_of(accuracy="predictor")), 24)
    store = run / "fronts" / "fronts.sqlite"
    before, calls = store.read_bytes(), toy.calls
    with pytest.raises(UsageError, match=r"holds accuracies from the accuracy predictor, and this search's come from "
                                         r"direct evaluation of the supernet"):
        search_with(accuracy_identity(config_of(accuracy="direct")), 32)
    assert toy.calls == calls and store.read_bytes() == before
    assert len(search_with("predictor", 32)["dev"]) > 0
    assert load_study(run).user_attrs["accuracy"] == "predictor"


# --- processes in containers: the same pid on several machines ----------------------------------------------------


def test_processes_with_one_pid_on_two_hosts_propose_different_subnets(tmp_path, toy, monkeypatch):
    """Each process's sampler seed mixed in its pid only: processes in containers (pid 1 on every machine) proposed
    the same subnets, so the shared study got each twice."""
    import nas.study_shared

    space = get_space(SPACE)
    proposals = []
    for host in ("node-a", "node-b"):
        monkeypatch.setattr(nas.study_shared, "os", types.SimpleNamespace(getpid=lambda: 1))
        monkeypatch.setattr(nas.study_shared, "socket", types.SimpleNamespace(gethostname=lambda host=host: host))
        config = config_of(storage=f"sqlite:///{tmp_path / (host + '.db')}", n_trials=6, batch_size=6,
                           sampler="random")
        study = open_study(config, tmp_path / host, space)
        optimize_shared(study, space, config, toy.accuracy, {"dev": toy.latency()})
        trials = sorted(study.get_trials(deepcopy=False), key=lambda t: t.number)[2:]  # after the enqueued two
        assert all(t.user_attrs["worker"] == f"{host}:1" for t in trials)
        proposals.append([t.user_attrs["arch"] for t in trials])
    assert proposals[0] != proposals[1]
