from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import optuna
import pytest

from nas.errors import UsageError
from nas.fronts import get_front_store
from nas.pareto import non_dominated_mask
from nas.search import run_search
from nas.search_config import SearchConfig
from nas.search_params import decode_params, params_of, search_params, suggest_arch
from nas.study import load_study, study_trials
from search_spaces import arch_counts, arch_to_string, get_space, largest, list_spaces, sample, smallest

from .conftest import stub_counts

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("name", list_spaces())
def test_fixed_length_params_decode_every_arch(name):
    space = get_space(name)
    names = list(search_params(space))
    for arch in sample(space, 10, 0) + [largest(space), smallest(space)]:
        params = params_of(space, arch)
        assert list(params) == names  # fixed length, whatever the depth
        assert decode_params(space, params) == arch
        assert suggest_arch(optuna.trial.FixedTrial(params), space) == arch


def complete(study):
    return study.get_trials(states=(optuna.trial.TrialState.COMPLETE,))


def test_two_devices_one_study_fronts_and_budgets(tmp_path, toy):
    config = SearchConfig.parse({"n_trials": 120, "batch_size": 40, "population_size": 20, "seed": 1,
                                 "latency_budgets_ms": {"slow": 14.0}}, ["fast", "slow"])
    fronts = run_search(config, tmp_path, toy.accuracy, {"fast": toy.latency(0.5), "slow": toy.latency(1.0)},
                        space="ofa_mbv3_cifar", counts_fn=stub_counts, checkpoint="ckpt.pt")
    study = load_study(tmp_path)
    assert len(complete(study)) == 120
    assert toy.calls == 3 + 1  # one accuracy call per batch, shared by both devices; one for the references
    table = study_trials(study, get_space("ofa_mbv3_cifar"))
    for k, device in enumerate(["fast", "slow"]):
        front = fronts[device]
        assert front and all(m.checkpoint == "ckpt.pt" for m in front)
        lat = table.latency_ms[:, k]
        ok = lat <= (14.0 if device == "slow" else np.inf)
        mask = non_dominated_mask(table.accuracy[ok], lat[ok])
        expected = {table.archs[i].arch_id for i in np.flatnonzero(ok)[mask]}
        assert {m.arch_id for m in front} == expected
    assert max(m.latency_ms for m in fronts["slow"]) <= 14.0
    # As Optuna's users read a study: named objectives, each trial's subnet and size beside its values.
    assert study.metric_names == ["accuracy", "latency_fast", "latency_slow"]
    frame = study.trials_dataframe()
    assert {"values_accuracy", "values_latency_fast", "user_attrs_arch", "user_attrs_macs"} <= set(frame.columns)
    first = complete(study)[0]
    space = get_space("ofa_mbv3_cifar")
    assert first.user_attrs["arch"] == arch_to_string(space, table.archs[0])
    assert first.user_attrs["macs"] == arch_counts(space, table.archs[0]).macs
    store = get_front_store(tmp_path / "fronts" / "fronts.sqlite")
    assert store.devices() == ["fast", "slow"]
    assert {r.name for r in store.references("fast")} == {"largest", "smallest"}
    # Re-running with the same n_trials adds nothing.
    run_search(config, tmp_path, toy.accuracy, {"fast": toy.latency(0.5), "slow": toy.latency(1.0)},
               space="ofa_mbv3_cifar", counts_fn=stub_counts)
    assert len(complete(load_study(tmp_path))) == 120


def test_interrupted_search_resumes_without_loss_or_repeat(tmp_path, toy):
    config = SearchConfig.parse({"n_trials": 50, "batch_size": 10, "population_size": 10}, ["dev"])

    def failing(archs):
        if toy.calls == 2:
            raise KeyboardInterrupt
        return toy.accuracy(archs)

    with pytest.raises(KeyboardInterrupt):
        run_search(config, tmp_path, failing, {"dev": toy.latency()}, space="ofa_mbv3_cifar", counts_fn=stub_counts)
    before = {t.number: (t.params, t.values) for t in complete(load_study(tmp_path))}
    assert len(before) == 20
    run_search(config, tmp_path, toy.accuracy, {"dev": toy.latency()}, space="ofa_mbv3_cifar", counts_fn=stub_counts)
    after = complete(load_study(tmp_path))
    assert len(after) == 50
    assert {t.number: (t.params, t.values) for t in after if t.number in before} == before


KILLED_SCRIPT = textwrap.dedent("""
    import os, signal, sys
    sys.path.insert(0, {root!r})
    from tests.search.conftest import ToyObjectives, stub_counts
    from nas.search import run_search
    from nas.search_config import SearchConfig
    toy = ToyObjectives()
    def accuracy(archs):
        if toy.calls == 3:
            os.kill(os.getpid(), signal.SIGKILL)
        return toy.accuracy(archs)
    config = SearchConfig.parse({{"n_trials": 60, "batch_size": 10, "population_size": 10}}, ["dev"])
    run_search(config, {run!r}, accuracy, {{"dev": toy.latency()}}, space="ofa_mbv3_cifar", counts_fn=stub_counts)
""")


def test_killed_search_resumes_with_every_finished_trial_once(tmp_path, toy):
    script = KILLED_SCRIPT.format(root=str(ROOT), run=str(tmp_path))
    proc = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, timeout=120)
    assert proc.returncode == -9, proc.stderr.decode()[-2000:]
    study = load_study(tmp_path)
    before = {t.number: t.params for t in complete(study)}
    assert len(before) == 30
    assert not study.get_trials(states=(optuna.trial.TrialState.RUNNING,))  # the killed batch is not stored
    config = SearchConfig.parse({"n_trials": 60, "batch_size": 10, "population_size": 10}, ["dev"])
    run_search(config, tmp_path, toy.accuracy, {"dev": toy.latency()}, space="ofa_mbv3_cifar", counts_fn=stub_counts)
    study = load_study(tmp_path)
    after = complete(study)
    assert len(after) == 60
    assert len({t.number for t in after}) == 60
    assert {t.number: t.params for t in after if t.number in before} == before
    assert not study.get_trials(states=(optuna.trial.TrialState.RUNNING,))


def test_study_of_other_devices_is_refused(tmp_path, toy):
    config = SearchConfig.parse({"n_trials": 10, "batch_size": 10}, ["dev"])
    run_search(config, tmp_path, toy.accuracy, {"dev": toy.latency()}, space="ofa_mbv3_cifar", counts_fn=stub_counts)
    other = SearchConfig.parse({"n_trials": 10}, ["dev", "dev2"])
    with pytest.raises(UsageError, match="devices"):
        run_search(other, tmp_path, toy.accuracy, {"dev": toy.latency(), "dev2": toy.latency()},
                   space="ofa_mbv3_cifar", counts_fn=stub_counts)
    with pytest.raises(UsageError, match="no latency predictor"):
        run_search(other, tmp_path, toy.accuracy, {"dev": toy.latency()}, space="ofa_mbv3_cifar")


@pytest.mark.parametrize("sampler", ["tpe", "random"])
def test_other_samplers_are_seeded(tmp_path, toy, sampler):
    runs = []
    for i in range(2):
        config = SearchConfig.parse({"n_trials": 15, "batch_size": 5, "sampler": sampler, "seed": 3}, ["dev"])
        run_search(config, tmp_path / str(i), toy.accuracy, {"dev": toy.latency()}, space="ofa_mbv3_cifar",
                   counts_fn=stub_counts)
        runs.append([t.params for t in complete(load_study(tmp_path / str(i)))])
    assert runs[0] == runs[1]


def test_search_config_errors():
    assert SearchConfig.parse({}, ["a"]).sampler == "nsga2"
    with pytest.raises(UsageError, match="allowed: nsga2, tpe, random"):
        SearchConfig.parse({"sampler": "cma"}, ["a"])
    with pytest.raises(UsageError, match="unknown key"):
        SearchConfig.parse({"trials": 3}, ["a"])
    with pytest.raises(UsageError, match="unknown device"):
        SearchConfig.parse({"latency_budgets_ms": {"b": 3}}, ["a"])
    cfg = SearchConfig.parse({}, ["a", {"id": "b", "max_latency_ms": 5}])
    assert cfg.devices == ("a", "b") and cfg.budgets == {"b": 5.0}
