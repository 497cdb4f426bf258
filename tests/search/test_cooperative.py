"""Optuna as its users expect (issue 13, item 4): a study named after its run that never adopts another run's
trials, several processes sharing one database study (SQLite, and a PostgreSQL server the test starts itself),
and ``search.resolutions`` honoured by ``run_search``. Real Optuna, real databases, real processes."""

from __future__ import annotations

import json
import os
import pwd
import shutil
import socket
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from pathlib import Path

import numpy as np
import optuna
import pytest
from optuna.trial import TrialState

import nas.study
from nas.errors import UsageError
from nas.search import front_members, run_search
from nas.search_config import SearchConfig
from nas.search_params import decode_params
from nas.study import load_study, open_study, study_trials, supernet_identity
from nas.study_shared import SURPLUS_ATTR, WORKER_ATTR, _drop_surplus, _Heartbeat, _reserve, optimize_shared
from search_spaces import get_space, largest, smallest

from .conftest import stub_counts

ROOT = Path(__file__).resolve().parents[2]
SPACE = "ofa_mbv3_cifar"


def config_of(storage: str | None = None, **settings) -> SearchConfig:
    search = {"batch_size": 8, "population_size": 10, **settings}
    if storage:
        search["storage"] = storage
    return SearchConfig.parse(search, ["dev"])


def make_run(path: Path, weights: bytes) -> Path:
    """A run folder with a (stand-in) supernet checkpoint; returns the checkpoint."""
    checkpoint = path / "checkpoints" / "supernet.pt"
    checkpoint.parent.mkdir(parents=True, exist_ok=True)
    checkpoint.write_bytes(weights)
    return checkpoint


def search(run: Path, toy, config: SearchConfig, checkpoint: Path | None = None):
    return run_search(config, run, toy.accuracy, {"dev": toy.latency()}, space=SPACE, counts_fn=stub_counts,
                      checkpoint=str(checkpoint) if checkpoint else None)


def states(study: optuna.Study) -> dict[str, int]:
    counts: dict[str, int] = {}
    for trial in study.get_trials(deepcopy=False):
        counts[trial.state.name] = counts.get(trial.state.name, 0) + 1
    return counts


# --- the study's name and identity ------------------------------------------------------------------------------


def test_runs_sharing_a_storage_get_studies_named_after_them(tmp_path, toy):
    storage = f"sqlite:///{tmp_path / 'shared.db'}"
    for name, weights in (("alpha", b"weights of alpha"), ("beta", b"weights of beta")):
        checkpoint = make_run(tmp_path / name, weights)
        search(tmp_path / name, toy, config_of(storage, n_trials=8), checkpoint)
    assert sorted(optuna.get_all_study_names(storage)) == ["alpha", "beta"]
    for name in ("alpha", "beta"):
        study = load_study(tmp_path / name, config_of(storage))
        assert study.study_name == name and states(study) == {"COMPLETE": 8}
        assert study.user_attrs["supernet"] == supernet_identity(tmp_path / name / "checkpoints" / "supernet.pt")
        assert study.user_attrs["supernet"].startswith("sha256:") and study.metric_names == ["accuracy", "latency_dev"]


def test_same_study_name_with_another_supernet_is_refused_in_one_line(tmp_path, toy):
    storage = f"sqlite:///{tmp_path / 'shared.db'}"
    config = config_of(storage, n_trials=8, study_name="shared")
    search(tmp_path / "alpha", toy, config, make_run(tmp_path / "alpha", b"weights of alpha"))
    calls = toy.calls
    other = make_run(tmp_path / "beta", b"weights of beta")
    with pytest.raises(UsageError) as info:
        search(tmp_path / "beta", toy, config_of(storage, n_trials=16, study_name="shared"), other)
    message = str(info.value)
    assert "\n" not in message and toy.calls == calls
    assert supernet_identity(tmp_path / "alpha" / "checkpoints" / "supernet.pt") in message
    assert supernet_identity(other) in message and "search.study_name" in message
    # The same supernet (a copy of the run elsewhere) continues the study.
    same = make_run(tmp_path / "gamma", b"weights of alpha")
    search(tmp_path / "gamma", toy, config_of(storage, n_trials=16, study_name="shared"), same)
    assert states(load_study(tmp_path / "gamma", config_of(storage, study_name="shared"))) == {"COMPLETE": 16}


def test_a_shared_study_counts_only_proposed_trials_towards_n_trials(tmp_path, toy):
    from nas.refine import REFINED_ATTR

    storage = f"sqlite:///{tmp_path / 'shared.db'}"
    checkpoint = make_run(tmp_path / "run", b"weights")
    search(tmp_path / "run", toy, config_of(storage, n_trials=8), checkpoint)
    study = load_study(tmp_path / "run", config_of(storage))
    first = study.get_trials(states=(optuna.trial.TrialState.COMPLETE,))[0]
    for budget in (5, 6, 7):  # what budget refinements add after the search
        refined = {REFINED_ATTR: f"dev <= {budget} ms"}
        study.add_trial(optuna.trial.create_trial(params=first.params, distributions=first.distributions,
                                                  values=first.values, user_attrs=refined))
    search(tmp_path / "run", toy, config_of(storage, n_trials=16), checkpoint)
    study = load_study(tmp_path / "run", config_of(storage))
    assert states(study) == {"COMPLETE": 19}  # 16 proposed (no surplus marked) and the 3 refinements


def test_imported_run_is_identified_by_its_zoo_file(tmp_path):
    checkpoint = make_run(tmp_path / "run", b"converted weights")
    assert supernet_identity(checkpoint) == "sha256:" + __import__("hashlib").sha256(b"converted weights").hexdigest()
    (tmp_path / "run" / "import.json").write_text(json.dumps({"kind": "supernet", "sha256": "ab" * 32}))
    assert supernet_identity(checkpoint) == "once-for-all:" + "ab" * 32
    assert supernet_identity(None) is None and supernet_identity(tmp_path / "missing.pt") is None


def test_a_run_searched_before_studies_were_named_after_runs_continues(tmp_path, toy):
    search(tmp_path / "run", toy, config_of(n_trials=8, study_name="search"))  # what older versions wrote
    search(tmp_path / "run", toy, config_of(n_trials=16))
    study = load_study(tmp_path / "run")
    assert study.study_name == "search" and states(study) == {"COMPLETE": 16}


def test_a_run_folder_moved_or_copied_keeps_its_study(tmp_path, toy):
    """The run's own journal belongs to the run: under a new folder name its one study is still the run's."""
    import shutil

    search(tmp_path / "first", toy, config_of(n_trials=8))
    shutil.copytree(tmp_path / "first", tmp_path / "copy")
    search(tmp_path / "copy", toy, config_of(n_trials=16))
    study = load_study(tmp_path / "copy")
    assert study.study_name == "first" and states(study) == {"COMPLETE": 16}
    assert states(load_study(tmp_path / "first")) == {"COMPLETE": 8}


# --- search.resolutions ---------------------------------------------------------------------------------------


def test_run_search_honours_resolutions(tmp_path, toy):
    def table_latency(archs):  # a lookup table that covers two of the space's three resolutions
        missing = [a.resolution for a in archs if a.resolution not in (28, 32)]
        if missing:
            raise KeyError(f"no table entry at resolution {missing[0]}")
        return toy.latency()(archs)

    config = SearchConfig.parse({"n_trials": 24, "batch_size": 8, "population_size": 10, "resolutions": [28, 32]},
                                ["dev"])
    fronts = run_search(config, tmp_path, toy.accuracy, {"dev": table_latency}, space=SPACE, counts_fn=stub_counts)
    table = study_trials(load_study(tmp_path), get_space(SPACE))
    assert len(table.archs) == 24 and {a.resolution for a in table.archs} == {28, 32}
    assert all(m.arch.resolution in (28, 32) for m in fronts["dev"])


# --- several processes on one database ------------------------------------------------------------------------

WORKER = textwrap.dedent("""
    import json, os, sys, time
    sys.path.insert(0, {root!r})
    from tests.search.conftest import ToyObjectives, stub_counts
    from nas.search import run_search
    from nas.search_config import SearchConfig
    toy = ToyObjectives()
    evaluated = []
    def accuracy(archs):
        if not evaluated:  # the first batch waits for the other process's first batch: both take part, however
            open(os.path.join({started!r}, str(os.getpid())), "w").close()  # late one starts on a loaded machine
            deadline = time.monotonic() + 120
            while len(os.listdir({started!r})) < 2 and time.monotonic() < deadline:
                time.sleep(0.01)
        evaluated.extend(a.arch_id for a in archs)
        time.sleep(0.01)  # an objective that takes a moment, so the two processes interleave
        return toy.accuracy(archs)
    config = SearchConfig.parse({{"n_trials": {n}, "batch_size": 5, "population_size": 10,
                                 "storage": {storage!r}}}, ["dev"])
    while not os.path.exists({go!r}):
        time.sleep(0.005)
    start = time.monotonic()
    fronts = run_search(config, {run!r}, accuracy, {{"dev": toy.latency()}}, space="ofa_mbv3_cifar",
                        counts_fn=stub_counts, checkpoint={checkpoint!r})
    with open({out!r}, "w") as f:
        json.dump({{"pid": os.getpid(), "evaluated": evaluated, "seconds": time.monotonic() - start,
                   "front": sorted(m.trial_number for m in fronts["dev"])}}, f)
""")


def run_two_processes(tmp_path: Path, storage: str, n_trials: int) -> None:
    """Two processes, each with its own copy of one run ("run": the same default study name, the same
    supernet), search one study at once; checks what they did against the storage."""
    go, started = tmp_path / "go", tmp_path / "started"
    started.mkdir()
    procs, outs = [], []
    for name in ("a", "b"):
        run = tmp_path / name / "run"
        checkpoint = make_run(run, b"the same supernet")
        out = tmp_path / f"{name}.json"
        script = WORKER.format(root=str(ROOT), n=n_trials, storage=storage, go=str(go), run=str(run),
                               checkpoint=str(checkpoint), out=str(out), started=str(started))
        procs.append(subprocess.Popen([sys.executable, "-c", script], cwd=ROOT, stderr=subprocess.PIPE))
        outs.append(out)
    time.sleep(0.5)
    go.write_text("go")  # both start together (their imports done or nearly)
    for proc in procs:
        _, err = proc.communicate(timeout=180)
        assert proc.returncode == 0, err.decode()[-3000:]
    results = [json.loads(out.read_text()) for out in outs]
    print("search seconds per process:", [round(r["seconds"], 2) for r in results])

    study = load_study(tmp_path / "a" / "run", SearchConfig.parse({"storage": storage}, ["dev"]))
    trials = study.get_trials(deepcopy=False)
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    # The requested total, exactly; nothing left running or waiting; a failed trial only ever a surplus one
    # (asked at the same moment as the other process's last ones, and never evaluated).
    assert len(complete) == n_trials
    assert all(t.state in (TrialState.COMPLETE, TrialState.FAIL) for t in trials)
    assert all(t.user_attrs.get(SURPLUS_ATTR) for t in trials if t.state == TrialState.FAIL)
    # No duplicate trial rows: every trial number once, numbered 0..N-1.
    assert sorted(t.number for t in trials) == list(range(len(trials)))
    # No trial done twice: each finished trial was evaluated by exactly one process (its ``worker``), each
    # process evaluated exactly the trials marked as its own, and both took part.
    by_worker = {r["pid"]: [t for t in complete if t.user_attrs[WORKER_ATTR].endswith(f":{r['pid']}")]
                 for r in results}
    assert sum(len(ts) for ts in by_worker.values()) == n_trials
    space = get_space(SPACE)
    for r in results:
        # The last two evaluations are the fronts' reference points (the largest and smallest subnets).
        assert r["evaluated"][-2:] == [largest(space).arch_id, smallest(space).arch_id]
        assert len(r["evaluated"]) - 2 == len(by_worker[r["pid"]]) > 0
        assert sorted(r["evaluated"][:-2]) == sorted(arch_ids(by_worker[r["pid"]]))
    # The largest and smallest subnets were enqueued once and evaluated once.
    table = study_trials(study, space)
    ids = [a.arch_id for a in table.archs]
    assert ids.count(largest(space).arch_id) == 1 and ids.count(smallest(space).arch_id) == 1
    # Both processes' fronts are the storage's.
    expected = sorted(table.numbers[i] for i in front_members(table.archs, table.accuracy, table.latency_ms[:, 0]))
    assert results[0]["front"] == results[1]["front"] == expected


def arch_ids(trials) -> list[str]:
    space = get_space(SPACE)
    return [decode_params(space, t.params).arch_id for t in trials]


def test_two_processes_share_one_sqlite_study(tmp_path):
    run_two_processes(tmp_path, f"sqlite:///{tmp_path / 'shared.db'}", n_trials=30)


@pytest.fixture(scope="module")
def postgres_url():
    """A throwaway PostgreSQL cluster in a temporary folder (unix socket there, no TCP), stopped at teardown."""
    pytest.importorskip("psycopg2", reason="no PostgreSQL driver (pip install psycopg2-binary)")
    binaries = {name: shutil.which(name) for name in ("initdb", "pg_ctl", "postgres")}
    if not all(binaries.values()):
        pytest.skip(f"PostgreSQL binaries not on PATH: {[n for n, p in binaries.items() if not p]}")
    prefix: list[str] = []
    folder = Path(tempfile.mkdtemp(prefix="nas-pg-"))
    if os.geteuid() == 0:  # the server refuses to run as root: run it as the postgres user when there is one
        try:
            user = pwd.getpwnam("postgres")
        except KeyError:
            shutil.rmtree(folder, ignore_errors=True)
            pytest.skip("running as root and no 'postgres' user to run the server as")
        if not shutil.which("runuser"):
            shutil.rmtree(folder, ignore_errors=True)
            pytest.skip("running as root without runuser")
        os.chown(folder, user.pw_uid, user.pw_gid)
        prefix = ["runuser", "-u", "postgres", "--"]
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    data = folder / "data"
    try:
        subprocess.run([*prefix, binaries["initdb"], "-D", str(data), "-U", "nas", "--auth=trust", "-E", "UTF8",
                        "--no-sync"], check=True, capture_output=True, timeout=120)
        subprocess.run([*prefix, binaries["pg_ctl"], "-D", str(data), "-l", str(folder / "server.log"), "-w",
                        "-t", "60", "-o", f"-k {folder} -p {port} -c listen_addresses='' -c fsync=off", "start"],
                       check=True, capture_output=True, timeout=120)
    except (subprocess.CalledProcessError, subprocess.TimeoutExpired) as exc:
        log = (folder / "server.log").read_text() if (folder / "server.log").exists() else ""
        shutil.rmtree(folder, ignore_errors=True)
        pytest.fail(f"could not start PostgreSQL: {exc}; {getattr(exc, 'stderr', b'')!r} {log[-2000:]}")
    try:
        yield f"postgresql+psycopg2://nas@/postgres?host={folder}&port={port}"
    finally:
        subprocess.run([*prefix, binaries["pg_ctl"], "-D", str(data), "-m", "immediate", "-w", "stop"],
                       capture_output=True, timeout=60)
        shutil.rmtree(folder, ignore_errors=True)


def test_two_processes_share_one_postgres_study(tmp_path, postgres_url):
    run_two_processes(tmp_path, postgres_url, n_trials=30)


CLAIMER = textwrap.dedent("""
    import json, sys, time
    from pathlib import Path
    sys.path.insert(0, {root!r})
    import optuna
    from nas.study_shared import _claim_waiting
    storage = optuna.storages.get_storage({storage!r})
    study_id = storage.get_study_id_from_name("queue")
    while not Path({go!r}).exists():
        time.sleep(0.01)
    claimed = []
    while (trial := _claim_waiting(storage, study_id)) is not None:
        claimed.append(trial.number)
    Path({out!r}).write_text(json.dumps(claimed))
""")


def claim_in_four_processes(tmp_path: Path, storage: str, n_waiting: int = 120) -> None:
    """Four processes claim a study's enqueued trials at once: each trial is claimed by exactly one, and is
    RUNNING with its start time. (On SQLite, Optuna's read-then-write claim gave some trials to two
    processes: 22 of 200 in one run here, optuna/optuna#4621; the second to finish one failed.)"""
    study = optuna.create_study(storage=storage, study_name="queue")
    for i in range(n_waiting):
        study.enqueue_trial({"x": float(i)})
    go, procs, outs = tmp_path / "go-claim", [], []
    for i in range(4):
        out = tmp_path / f"claimed-{i}.json"
        script = CLAIMER.format(root=str(ROOT), storage=storage, go=str(go), out=str(out))
        procs.append(subprocess.Popen([sys.executable, "-c", script], cwd=ROOT, stderr=subprocess.PIPE))
        outs.append(out)
    time.sleep(0.5)
    go.write_text("go")
    for proc in procs:
        _, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err.decode()[-3000:]
    claimed = [n for out in outs for n in json.loads(out.read_text())]
    assert sorted(claimed) == list(range(n_waiting))
    trials = study.get_trials(deepcopy=False)
    assert all(t.state == TrialState.RUNNING and t.datetime_start is not None for t in trials)


def test_an_enqueued_trial_goes_to_one_process_on_sqlite(tmp_path):
    claim_in_four_processes(tmp_path, f"sqlite:///{tmp_path / 'queue.db'}")


def test_an_enqueued_trial_goes_to_one_process_on_postgres(tmp_path, postgres_url):
    claim_in_four_processes(tmp_path, postgres_url)


def test_postgres_storage_refuses_another_supernet(tmp_path, toy, postgres_url):
    config = config_of(postgres_url, n_trials=8, study_name="pg-identity")
    search(tmp_path / "alpha", toy, config, make_run(tmp_path / "alpha", b"weights of alpha"))
    with pytest.raises(UsageError, match="search.study_name to another name"):
        search(tmp_path / "beta", toy, config, make_run(tmp_path / "beta", b"weights of beta"))


# --- trials a dead process left running, and the exact total ---------------------------------------------------


@pytest.mark.filterwarnings("ignore:Heartbeat of storage")  # the test plays the other process with study.ask
def test_trials_of_a_dead_process_are_failed_and_redone(tmp_path, toy, monkeypatch):
    monkeypatch.setattr(nas.study, "GRACE_S", 1)
    monkeypatch.setattr(nas.study, "HEARTBEAT_S", 1)
    config = config_of(f"sqlite:///{tmp_path / 'shared.db'}", n_trials=12)
    study = open_study(config, tmp_path / "run", get_space(SPACE))
    dead = [study.ask() for _ in range(3)]  # a process that asked, beat once, then died
    for trial in dead:
        study._storage.record_heartbeat(trial._trial_id)
    time.sleep(2.2)  # past the grace period (the database's clock has one-second steps)
    search(tmp_path / "run", toy, config)
    study = load_study(tmp_path / "run", config)
    assert states(study) == {"COMPLETE": 12, "FAIL": 3}
    assert {t.number for t in study.get_trials(states=(TrialState.FAIL,))} == {t.number for t in dead}


@pytest.mark.filterwarnings("ignore:Heartbeat of storage")
def test_a_process_waits_for_the_others_last_trials(tmp_path, toy):
    config = config_of(f"sqlite:///{tmp_path / 'shared.db'}", n_trials=6)
    space = get_space(SPACE)
    study = open_study(config, tmp_path / "run", space)
    other = [study.ask() for _ in range(4)]  # another live process's trials (fresh heartbeats)
    for trial in other:
        study._storage.record_heartbeat(trial._trial_id)

    def finish_them_later() -> None:
        time.sleep(0.6)
        for trial in other:
            study.tell(trial, [0.5, 1.0])

    thread = threading.Thread(target=finish_them_later)
    thread.start()
    start = time.monotonic()
    done = optimize_shared(study, space, config, toy.accuracy, {"dev": toy.latency()})
    thread.join()
    assert done == 2 and time.monotonic() - start >= 0.5  # it returned once every trial was finished
    assert states(study) == {"COMPLETE": 6}


def test_trials_beyond_the_total_are_surplus(tmp_path, toy):
    config = config_of(f"sqlite:///{tmp_path / 'shared.db'}", n_trials=3)
    space = get_space(SPACE)
    study = open_study(config, tmp_path / "run", space)
    memory = optuna.create_study(directions=study.directions)
    heartbeat = _Heartbeat(study._storage, 60)
    try:
        batch = _reserve(memory, study._storage, study._study_id, space, 5, "here:1", heartbeat)
        kept = _drop_surplus(batch, memory, study._storage, study._study_id, 3, heartbeat)
    finally:
        heartbeat.close()
    assert [study._storage.get_trial_number_from_id(r.trial_id) for r in kept] == [0, 1, 2]
    failed = study.get_trials(states=(TrialState.FAIL,))
    assert [t.number for t in failed] == [3, 4] and all(t.user_attrs[SURPLUS_ATTR] for t in failed)
    assert np.array_equal(sorted(t.number for t in study.get_trials(states=(TrialState.RUNNING,))), [0, 1, 2])
