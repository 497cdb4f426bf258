"""The precision search (issue 15, item 5): quantised subnets screened by the table's int8 latency, measured, and
added to the study as trials, so fronts hold arch + policy.

The objectives here are the cheap deterministic toys of the other search tests, with a precision: int8 makes a
subnet 30% faster per group share and costs it a fixed accuracy drop per int8 group. The real quantisation and
its measurement are tested in tests/search/test_quantized_accuracy.py and end to end in tests/pipeline."""

from __future__ import annotations

import numpy as np
import pytest

from nas.errors import UsageError
from nas.precision_search import POLICY_ATTR
from nas.search import run_search
from nas.search_config import SearchConfig
from nas.search_params import decode_policy, policy_params
from nas.study import load_study, study_trials
from search_spaces import PrecisionPolicy, policy_from_string, precision_groups

from .conftest import stub_counts

DROP_PER_GROUP = 0.002


class ToyMixedLatency:
    """fp32: the toy latency; each int8 group takes its share of the subnet's latency down by 30%."""

    kind = "toy"

    def __init__(self, toy, scale: float = 1.0) -> None:
        self.toy, self.fp32 = toy, toy.latency(scale)

    def predict(self, archs):
        return self.fp32(archs)

    def predict_mixed(self, archs, policies):
        base = np.asarray(self.fp32(archs), dtype=float)
        factor = np.array([1.0 if p is None else 1.0 - 0.3 * _int8_share(p) for p in policies])
        return base * factor


def _int8_share(policy) -> float:
    letters = [policy.stem, *(s[0] for s in policy.stages), policy.head]
    return sum(v == "int8" for v in letters) / len(letters)


class ToyEvaluator:
    """Direct accuracy: the toy's; under a policy, minus DROP_PER_GROUP per int8 group. Records its calls."""

    def __init__(self, toy) -> None:
        self.toy = toy
        self.calls: list[tuple[int, str, bool]] = []
        self.sensitivity_calls = 0

    def evaluate(self, archs, split="val", policies=None):
        self.calls.append((len(archs), split, policies is not None))
        acc = np.asarray(self.toy.accuracy(archs), dtype=float)
        if policies is None:
            return acc
        groups = np.array([0 if p is None else round(_int8_share(p) * (len(p.stages) + 2)) for p in policies])
        return acc - DROP_PER_GROUP * groups

    def group_sensitivities(self, archs):
        self.sensitivity_calls += 1
        groups = precision_groups(self.toy.space)
        return [[(g, 0.01 * (k + 1)) for k, g in enumerate(groups)] for _ in archs]


def _config(**search):
    return SearchConfig.parse({"n_trials": 48, "batch_size": 16, "population_size": 16, **search},
                              [{"id": "cpu", "max_latency_ms": 30.0}])


def test_policy_parameters_round_trip(toy):
    space = toy.space
    policy = policy_from_string(space, "p:f,i,i,f,i,i,f")
    params = policy_params(space, policy)
    assert list(params) == [f"precision.{g}" for g in precision_groups(space)]
    assert decode_policy(space, params) == policy
    assert decode_policy(space, policy_params(space, PrecisionPolicy.uniform(space, "fp32"))) is None
    assert decode_policy(space, {}) is None


def test_config_checks_precisions():
    assert SearchConfig.parse({}, ["d"]).precisions == ("fp32",)
    config = SearchConfig.parse({"precisions": ["int8", "fp32"], "mixed_precision": True}, ["d"])
    assert config.precisions == ("fp32", "int8") and config.quantized
    for bad in ({"precisions": ["fp16"]}, {"precisions": []}, {"precisions": ["int8", "int8"]},
                {"precisions": "int8"}, {"mixed_precision": True}, {"mixed_precision": "yes"},
                {"quantization_method": "kl"}, {"precision_candidates": 0}):
        with pytest.raises(UsageError, match="search."):
            SearchConfig.parse(bad, ["d"])
    # The parsed config parses back to itself.
    assert SearchConfig.parse(config.to_dict()["search"], ["d"]) == config


def test_quantised_subnets_join_the_front_as_trials(tmp_path, toy):
    evaluator = ToyEvaluator(toy)
    config = _config(precisions=["fp32", "int8"], precision_candidates=6)
    lines: list[str] = []
    fronts = run_search(config, tmp_path / "run", toy.accuracy, {"cpu": ToyMixedLatency(toy)}, space="ofa_mbv3_cifar",
                        final_evaluator=evaluator, counts_fn=stub_counts, log=lines.append)
    study = load_study(tmp_path / "run")
    quantised = [t for t in study.get_trials() if POLICY_ATTR in t.user_attrs]
    assert 0 < len(quantised) <= 2 * 6  # two rounds of at most 6 candidates on one device
    assert any("precision search, round 1" in line for line in lines)
    for trial in quantised:
        assert trial.user_attrs["precision"] == "int8"
        assert trial.user_attrs["accuracy_drop"] == pytest.approx(DROP_PER_GROUP * (len(toy.space.stages) + 2))
        assert trial.values[1] <= 30.0  # screened within the budget
    table = study_trials(study, toy.space)
    assert sum(p is not None for p in table.policies) == len(quantised)
    # fp32 and int8 members share one front; each member's policy is what its trial was measured under.
    members = fronts["cpu"]
    precisions = {m.precision for m in members}
    assert precisions == {"fp32", "int8"}
    for m in members:
        if m.policy is not None:
            assert m.policy == str(PrecisionPolicy.uniform(toy.space, "int8"))
            # The member's validation accuracy is the direct one under its policy (final evaluation).
            assert m.val_accuracy == pytest.approx(float(evaluator.evaluate([m.arch], "val", [
                policy_from_string(toy.space, m.policy)])[0]))
    # Continuing measures nothing new (every candidate is already a trial).
    run_search(config, tmp_path / "run", toy.accuracy, {"cpu": ToyMixedLatency(toy)}, space="ofa_mbv3_cifar",
               final_evaluator=evaluator, counts_fn=stub_counts)
    assert len([t for t in load_study(tmp_path / "run").get_trials() if POLICY_ATTR in t.user_attrs]) == len(quantised)


def test_mixed_precision_adds_per_stage_mixes_in_sensitivity_order(tmp_path, toy):
    evaluator = ToyEvaluator(toy)
    config = _config(precisions=["fp32", "int8"], mixed_precision=True, precision_candidates=3)
    run_search(config, tmp_path / "run", toy.accuracy, {"cpu": ToyMixedLatency(toy)}, space="ofa_mbv3_cifar",
               final_evaluator=evaluator, counts_fn=stub_counts)
    study = load_study(tmp_path / "run")
    mixed = [t for t in study.get_trials() if t.user_attrs.get("precision") == "mixed"]
    assert mixed and evaluator.sensitivity_calls >= 1
    groups = precision_groups(toy.space)
    for trial in mixed:
        policy = decode_policy(toy.space, trial.params)
        letters = [policy.stem, *(s[0] for s in policy.stages), policy.head]
        # The toy's sensitivities rise along the groups: the int8 ones are a prefix, the fp32 ones the 1-3 last.
        n_int8 = sum(v == "int8" for v in letters)
        assert letters == ["int8"] * n_int8 + ["fp32"] * (len(groups) - n_int8)
        assert len(groups) - n_int8 in (1, 2, 3)


def test_int8_only_fronts_and_the_checks_before_any_work(tmp_path, toy):
    evaluator = ToyEvaluator(toy)
    config = _config(precisions=["int8"], precision_candidates=4)
    fronts = run_search(config, tmp_path / "run", toy.accuracy, {"cpu": ToyMixedLatency(toy)}, space="ofa_mbv3_cifar",
                        final_evaluator=evaluator, counts_fn=stub_counts)
    assert fronts["cpu"] and all(m.precision == "int8" for m in fronts["cpu"])
    # No evaluator (a run without a dataset), or a latency predictor blind to precision: one line, nothing run.
    with pytest.raises(UsageError, match="needs a dataset"):
        run_search(config, tmp_path / "other", toy.accuracy, {"cpu": ToyMixedLatency(toy)}, space="ofa_mbv3_cifar",
                   counts_fn=stub_counts)
    with pytest.raises(UsageError, match="cannot predict quantised subnets"):
        run_search(config, tmp_path / "other", toy.accuracy, {"cpu": toy.latency()}, space="ofa_mbv3_cifar",
                   final_evaluator=evaluator, counts_fn=stub_counts)
    assert not (tmp_path / "other" / "search").exists()


def test_turning_mixed_precision_on_later_adds_the_mixes_only(tmp_path, toy):
    evaluator = ToyEvaluator(toy)
    lat = {"cpu": ToyMixedLatency(toy)}
    run_search(_config(precisions=["fp32", "int8"], precision_candidates=3), tmp_path / "run", toy.accuracy, lat,
               space="ofa_mbv3_cifar", final_evaluator=evaluator, counts_fn=stub_counts)
    before = [t for t in load_study(tmp_path / "run").get_trials() if POLICY_ATTR in t.user_attrs]
    assert before and all(t.user_attrs["precision"] == "int8" for t in before)
    run_search(_config(precisions=["fp32", "int8"], precision_candidates=3, mixed_precision=True), tmp_path / "run",
               toy.accuracy, lat, space="ofa_mbv3_cifar", final_evaluator=evaluator, counts_fn=stub_counts)
    after = [t for t in load_study(tmp_path / "run").get_trials() if POLICY_ATTR in t.user_attrs]
    keys = [(t.user_attrs["arch"], t.user_attrs[POLICY_ATTR]) for t in after]
    assert len(keys) == len(set(keys))  # no subnet measured twice under one policy
    assert any(t.user_attrs["precision"] == "mixed" for t in after)
    int8_archs = {t.user_attrs["arch"] for t in before}
    mixed_archs = {t.user_attrs["arch"] for t in after if t.user_attrs["precision"] == "mixed"}
    assert int8_archs & mixed_archs  # the subnets quantised before got their mixes


def _int8_table(space, seed=0):
    from latency_predictors import Device, LookupTable, enumerate_layers

    rng = np.random.default_rng(seed)
    entries = {}
    for key, layer in enumerate_layers(space).items():
        ms = float(rng.uniform(0.01, 0.3))
        entries[key] = {"ms": ms, "kind": layer.kind}
        entries[f"{key}@int8"] = {"ms": 0.6 * ms, "kind": layer.kind, "precision": "int8"}
    return LookupTable(space=space.name, device=Device(id="cpu", backend=None), resolutions=space.resolutions,
                       entries=entries, complete=True)


def test_budgets_are_refined_at_int8_with_cheap_objectives(tmp_path, toy):
    from latency_predictors.learned import TableLinearPredictor
    from nas.accuracy import AccuracyPredictor
    from nas.refine import REFINED_ATTR
    from nas.scoring import precision_latency_scorer
    from search_spaces import sample
    from search_spaces._genome import genomes_of

    space = toy.space
    latency = TableLinearPredictor(space, _int8_table(space))
    archs = sample(space, 200, seed=5)
    accuracy = AccuracyPredictor(space, hidden=(32,), seed=0).fit(archs, toy.accuracy(archs))
    # The int8 scorer on genomes equals the predictor's own prediction of uniform int8 subnets.
    int8 = PrecisionPolicy.uniform(space, "int8")
    scorer = precision_latency_scorer(space, latency, "int8")
    assert np.allclose(scorer(genomes_of(space, archs[:20])), latency.predict_mixed(archs[:20], [int8] * 20))
    budget = float(np.median(latency.predict_mixed(archs, [int8] * len(archs))))
    config = SearchConfig.parse({"n_trials": 32, "batch_size": 16, "population_size": 16, "budgets_ms": [budget],
                                 "refine_evaluations": 3000, "precisions": ["fp32", "int8"],
                                 "precision_candidates": 2}, ["cpu"])
    run_search(config, tmp_path / "run", accuracy, {"cpu": latency}, space="ofa_mbv3_cifar",
               final_evaluator=ToyEvaluator(toy), counts_fn=stub_counts)
    trials = load_study(tmp_path / "run").get_trials()
    refined = [t for t in trials if str(t.user_attrs.get(REFINED_ATTR, "")).endswith("(int8)")]
    assert len(refined) == 1 and refined[0].user_attrs["precision"] == "int8"
    assert refined[0].values[1] <= budget + 1e-9
    # A continued search does not refine it again (nor measure anything).
    run_search(config, tmp_path / "run", accuracy, {"cpu": latency}, space="ofa_mbv3_cifar",
               final_evaluator=ToyEvaluator(toy), counts_fn=stub_counts)
    assert len(load_study(tmp_path / "run").get_trials()) == len(trials)


def test_narrowing_precisions_to_fp32_fronts_only_fp32(tmp_path, toy):
    evaluator = ToyEvaluator(toy)
    lat = {"cpu": ToyMixedLatency(toy)}
    both = run_search(_config(precisions=["fp32", "int8"], precision_candidates=4), tmp_path / "run", toy.accuracy,
                      lat, space="ofa_mbv3_cifar", final_evaluator=evaluator, counts_fn=stub_counts)
    assert {m.precision for m in both["cpu"]} == {"fp32", "int8"}
    # The study keeps its int8 trials, but a config that lists fp32 alone gets a front of fp32 subnets.
    fp32 = run_search(_config(precisions=["fp32"]), tmp_path / "run", toy.accuracy, lat, space="ofa_mbv3_cifar",
                      final_evaluator=evaluator, counts_fn=stub_counts)
    assert fp32["cpu"] and all(m.precision == "fp32" and m.policy is None for m in fp32["cpu"])
    assert any(POLICY_ATTR in t.user_attrs for t in load_study(tmp_path / "run").get_trials())
