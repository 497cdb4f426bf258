"""What the search must never do: erase a front, search twice at once, repeat itself, or show a traceback
for a bad setting (issue 11, items 1, 2, 5 and 10). Real Optuna, real SQLite, real processes."""

from __future__ import annotations

import math
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import optuna
import pytest
import yaml

from nas.cli import main
from nas.errors import BusyError, UsageError
from nas.fronts import get_front_store
from nas.search import hardware_in_the_loop, run_search
from nas.search_config import SearchConfig
from nas.study import load_study

from .conftest import stub_counts

ROOT = Path(__file__).resolve().parents[2]
SPACE = "ofa_mbv3_cifar"


def complete(study):
    return sorted(study.get_trials(states=(optuna.trial.TrialState.COMPLETE,)), key=lambda t: t.number)


def search(run, toy, settings, devices=("dev",)):
    config = SearchConfig.parse({"batch_size": 8, "population_size": 10, **settings}, list(devices))
    return run_search(config, run, toy.accuracy, {d: toy.latency() for d in config.devices}, space=SPACE,
                      counts_fn=stub_counts)


def write_config(tmp_path: Path, devices, search_section, supernet: bool = True) -> Path:
    """A config whose run folder has a (placeholder) supernet file, so the search stage gets past it."""
    run = tmp_path / "run"
    if supernet:
        (run / "checkpoints").mkdir(parents=True, exist_ok=True)
        (run / "checkpoints" / "supernet.pt").write_bytes(b"")
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump({"name": "guards", "space": SPACE, "run_dir": str(run), "devices": devices,
                                    "search": search_section}))
    return path


def one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert err.startswith("nas: error: ") and "\n" not in err and "Traceback" not in err, err
    return err


# --- 1. invalid numbers are refused before any work; an infeasible budget keeps the stored front ------------


@pytest.mark.parametrize(("search_section", "devices", "n_trials", "key"), [
    ({}, [{"id": "dev", "max_latency_ms": math.nan}], None, "devices[dev].max_latency_ms"),
    ({}, [{"id": "dev", "max_latency_ms": math.inf}], None, "devices[dev].max_latency_ms"),
    ({}, [{"id": "dev", "max_latency_ms": 0}], None, "devices[dev].max_latency_ms"),
    ({}, {"dev": {"max_latency_ms": -1.0}}, None, "devices[dev].max_latency_ms"),
    ({"latency_budgets_ms": {"dev": math.nan}}, ["dev"], None, "search.latency_budgets_ms.dev"),
    ({}, ["dev"], 0, "--n-trials"),
    ({}, ["dev"], -5, "--n-trials"),
    ({"n_trials": 0}, ["dev"], None, "search.n_trials"),
    ({"batch_size": True}, ["dev"], None, "search.batch_size"),
    ({"population_size": 1}, ["dev"], None, "search.population_size"),
    ({"seed": -1}, ["dev"], None, "search.seed"),
    ({"predictor_holdout": math.nan}, ["dev"], None, "search.predictor_holdout"),
])
def test_every_number_is_checked_finite_and_in_range(search_section, devices, n_trials, key):
    with pytest.raises(UsageError) as info:
        SearchConfig.parse(search_section, devices, n_trials=n_trials)
    message = str(info.value)
    assert message.startswith(key) and "must be" in message and "\n" not in message


def test_cli_refuses_a_nan_budget_and_bad_n_trials_before_any_work(tmp_path, capsys):
    nan_budget = write_config(tmp_path, [{"id": "dev", "max_latency_ms": math.nan}], {"n_trials": 4})
    assert main(["search", str(nan_budget)]) == 2
    assert "devices[dev].max_latency_ms must be a finite number" in one_line_error(capsys)
    fine = write_config(tmp_path, [{"id": "dev", "max_latency_ms": 5.0}], {"n_trials": 4})
    for flag in ("0", "-5"):
        assert main(["search", str(fine), "--n-trials", flag]) == 2
        assert f"--n-trials must be an integer >= 1; got {flag}" in one_line_error(capsys)
    assert not (tmp_path / "run" / "search").exists() and not (tmp_path / "run" / "fronts").exists()


def test_infeasible_budget_keeps_the_stored_front_and_names_the_fastest_subnet(tmp_path, toy):
    search(tmp_path, toy, {"n_trials": 16})
    path = tmp_path / "fronts" / "fronts.sqlite"
    before = [m.to_dict() for m in get_front_store(path).front("dev")]
    assert before
    config = SearchConfig.parse({"n_trials": 24, "batch_size": 8, "population_size": 10},
                                [{"id": "dev", "max_latency_ms": 0.01}])
    with pytest.raises(UsageError) as info:
        run_search(config, tmp_path, toy.accuracy, {"dev": toy.latency()}, space=SPACE, counts_fn=stub_counts)
    message = str(info.value)
    fastest = min(toy.latency()([m.arch for m in get_front_store(path).front("dev")]))
    assert "no subnet meets the latency budget of 0.01 ms on device 'dev'" in message
    assert f"takes {fastest:.4g} ms" in message and "\n" not in message
    # The searched trials are kept, the stored front is untouched (a fresh connection reads the file).
    assert len(complete(load_study(tmp_path))) == 24
    assert [m.to_dict() for m in get_front_store(path).front("dev")] == before


def test_accuracies_outside_0_1_and_bad_latencies_stop_the_search_before_anything_is_stored(tmp_path, toy):
    search(tmp_path, toy, {"n_trials": 16})
    path = tmp_path / "fronts" / "fronts.sqlite"
    before = [m.to_dict() for m in get_front_store(path).front("dev")]
    config = SearchConfig.parse({"n_trials": 24, "batch_size": 8, "population_size": 10}, ["dev"])
    wrong = [(lambda archs: toy.accuracy(archs) - 2.0, toy.latency(), "the accuracy objective gave", "[0, 1]"),
             (toy.accuracy, lambda archs: [math.nan] * len(archs), "device 'dev' gave nan ms", "positive")]
    for accuracy, latency, *needles in wrong:
        with pytest.raises(UsageError) as info:
            run_search(config, tmp_path, accuracy, {"dev": latency}, space=SPACE, counts_fn=stub_counts)
        assert all(n in str(info.value) for n in needles) and "\n" not in str(info.value), info.value
    assert len(complete(load_study(tmp_path))) == 16  # the failed batches were not stored
    assert [m.to_dict() for m in get_front_store(path).front("dev")] == before


# --- 2. one search per run at a time; a killed one never blocks the next --------------------------------------


HOLDER_SCRIPT = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    sys.path.insert(0, {root!r})
    from tests.search.conftest import ToyObjectives, stub_counts
    from nas.search import run_search
    from nas.search_config import SearchConfig
    toy = ToyObjectives()
    def accuracy(archs):
        if toy.calls == 1:  # the first batch is stored; then hold the lock until killed
            Path({started!r}).write_text("x")
            time.sleep(600)
        return toy.accuracy(archs)
    config = SearchConfig.parse({{"n_trials": 24, "batch_size": 8, "population_size": 10}}, ["dev"])
    run_search(config, {run!r}, accuracy, {{"dev": toy.latency()}}, space="ofa_mbv3_cifar", counts_fn=stub_counts)
""")


def test_second_search_on_a_run_refuses_at_once_naming_the_holder(tmp_path, toy, capsys):
    run = tmp_path / "run"
    started = tmp_path / "started"
    holder = subprocess.Popen([sys.executable, "-c", HOLDER_SCRIPT.format(root=str(ROOT), run=str(run),
                                                                          started=str(started))],
                              cwd=ROOT, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 120
        while not started.exists():
            assert holder.poll() is None, holder.stderr.read().decode()[-2000:]
            assert time.monotonic() < deadline
            time.sleep(0.1)
        # This process is the second search: refused before it asks, evaluates or writes anything.
        t0 = time.monotonic()
        with pytest.raises(BusyError) as info:
            search(run, toy, {"n_trials": 24})
        assert time.monotonic() - t0 < 10
        message = str(info.value)
        assert f"pid {holder.pid} on {socket.gethostname()}" in message and "\n" not in message
        assert toy.calls == 0 and len(complete(load_study(run))) == 8
        # The same through the command line: one line, exit 2 (its config points at the same run).
        config = write_config(tmp_path, ["dev"], {"n_trials": 24})
        assert main(["search", str(config)]) == 2
        assert f"pid {holder.pid}" in one_line_error(capsys)
    finally:
        holder.kill()
        holder.wait(timeout=60)
    assert holder.returncode == -signal.SIGKILL
    # The OS released the killed holder's lock: the next search continues the study to the requested total.
    search(run, toy, {"n_trials": 24})
    trials = complete(load_study(run))
    assert len(trials) == 24 and [t.number for t in trials] == list(range(24))


# --- 5. a continued search proposes new subnets and keeps measured latencies --------------------------------


def test_continued_search_proposes_new_subnets_and_keeps_measured_latencies(tmp_path, toy):
    search(tmp_path, toy, {"n_trials": 16})
    measured = {}

    def measure(archs):  # "measured" equal to predicted, so the front's members stay the same
        values = [float(v) for v in toy.latency()(archs)]
        measured.update({a.arch_id: v for a, v in zip(archs, values)})
        return values

    hardware_in_the_loop(tmp_path, {"dev": measure})
    fronts = search(tmp_path, toy, {"n_trials": 24})
    trials = complete(load_study(tmp_path))
    assert len(trials) == 24
    first = [t.params for t in trials[:16]]
    assert not [t.number for t in trials[16:] if t.params in first]  # no proposal of the first run repeated
    kept = [m for m in fronts["dev"] if m.arch_id in measured]
    assert kept  # at least the largest and the smallest subnets stay on the front
    assert all(m.measured_latency_ms == pytest.approx(measured[m.arch_id]) for m in kept)
    assert all(m.measured_latency_ms is None for m in fronts["dev"] if m.arch_id not in measured)
    stored = {m.arch_id: m.measured_latency_ms for m in get_front_store(tmp_path / "fronts" / "fronts.sqlite")
              .front("dev")}
    assert {a: stored[a] for a in stored if a in measured} == pytest.approx({m.arch_id: measured[m.arch_id]
                                                                             for m in kept})


def test_continued_search_is_reproducible(tmp_path, toy):
    runs = []
    for i in range(2):
        for n in (8, 16):
            search(tmp_path / str(i), toy, {"n_trials": n})
        runs.append([t.params for t in complete(load_study(tmp_path / str(i)))])
    assert runs[0] == runs[1]


def test_trials_added_after_the_search_do_not_count_towards_n_trials(tmp_path, toy):
    from nas.precision_search import POLICY_ATTR
    from nas.refine import REFINED_ATTR
    from nas.search_params import policy_distributions, policy_params
    from nas.study import proposed_by_sampler, sampler_trials_done
    from search_spaces import PrecisionPolicy, get_space

    search(tmp_path, toy, {"n_trials": 16})
    study, space = load_study(tmp_path), get_space(SPACE)
    first = study.get_trials(states=(optuna.trial.TrialState.COMPLETE,))[0]
    # What a budget refinement and the precision search add (nas.refine, nas.precision_search).
    study.add_trial(optuna.trial.create_trial(params=first.params, distributions=first.distributions,
                                              values=first.values, user_attrs={REFINED_ATTR: "dev <= 9 ms"}))
    int8 = PrecisionPolicy.uniform(space, "int8")
    study.add_trial(optuna.trial.create_trial(
        params={**first.params, **policy_params(space, int8)},
        distributions={**first.distributions, **policy_distributions(space)},
        values=first.values, user_attrs={POLICY_ATTR: str(int8)}))
    assert sampler_trials_done(load_study(tmp_path)) == 16
    search(tmp_path, toy, {"n_trials": 16})  # done: nothing is added
    assert len(load_study(tmp_path).get_trials(states=(optuna.trial.TrialState.COMPLETE,))) == 18
    search(tmp_path, toy, {"n_trials": 24})  # 8 more proposals (it added 6 when every trial counted)
    trials = load_study(tmp_path).get_trials(states=(optuna.trial.TrialState.COMPLETE,))
    assert len(trials) == 26 and sum(proposed_by_sampler(t) for t in trials) == 24


# --- 10. a storage that cannot be opened is one line naming it ------------------------------------------------


@pytest.mark.parametrize("storage", ["bogus://x", "not a url", "sqlite:///{tmp}/a_file/study.db"])
def test_storage_that_cannot_be_opened_is_a_usage_error(tmp_path, toy, capsys, storage):
    (tmp_path / "a_file").write_text("not a folder")
    storage = storage.format(tmp=tmp_path)
    with pytest.raises(UsageError) as info:
        search(tmp_path / "run", toy, {"n_trials": 8, "storage": storage})
    message = str(info.value)
    assert f"search.storage {storage!r} cannot be opened" in message and "sqlite:///" in message
    assert "\n" not in message and toy.calls == 0
    with pytest.raises(UsageError, match="cannot be opened"):
        load_study(tmp_path / "run", SearchConfig.parse({"storage": storage}, ["dev"]))
    config = write_config(tmp_path, ["dev"], {"n_trials": 8, "storage": storage})
    assert main(["search", str(config)]) == 2
    assert f"search.storage {storage!r} cannot be opened" in one_line_error(capsys)


def test_sqlite_storage_works(tmp_path, toy):
    storage = f"sqlite:///{tmp_path / 'study.db'}"
    search(tmp_path / "run", toy, {"n_trials": 8, "storage": storage})
    assert os.path.getsize(tmp_path / "study.db") > 0
    assert len(complete(load_study(tmp_path / "run", SearchConfig.parse({"storage": storage}, ["dev"])))) == 8


def test_a_study_of_other_resolutions_is_refused_and_its_fronts_kept(tmp_path, toy):
    run = tmp_path / "run"
    search(run, toy, {"n_trials": 16})
    fronts = run / "fronts" / "fronts.sqlite"
    before = fronts.read_bytes()
    # With one resolution the study's trials have no `resolution` parameter: old trials would decode as r32.
    with pytest.raises(UsageError, match=r"searched resolutions \[24, 28, 32\].*searches \[32\]"):
        search(run, toy, {"n_trials": 24, "resolutions": [32]})
    assert fronts.read_bytes() == before
    assert len(complete(load_study(run))) == 16
    search(run, toy, {"n_trials": 20})  # the same resolutions continue the study
    assert len(complete(load_study(run))) == 20
