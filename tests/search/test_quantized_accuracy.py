"""The search's quantised accuracy (issue 15): a subnet under a precision policy, measured in ONNX Runtime by
``DirectEvaluator``, for real (no mocks): a seeded supernet whose smallest subnet classifies digits (its
classifier fitted by ridge regression, as tests/test_quantized_exports.py does), a run folder and its config."""

from __future__ import annotations

import functools
import json

import pytest
import torch
import yaml

from nas.accuracy import AccuracyCache, DirectEvaluator, SensitivityCache, SupernetAccuracy
from nas.config import load_config
from nas.data import load_dataset
from nas.errors import UsageError
from nas.fronts import FrontMember, MemoryFrontStore
from nas.quantize import (
    QUANTIZER_ID,
    _flow,
    group_units,
    prefix_policies,
    prepare_member,
    prepare_subnet,
    sensitivities,
    top1,
    unit_name,
)
from nas.query import run_calibration
from nas.rundir import RunDir
from search_spaces import (
    PrecisionPolicy,
    arch_to_string,
    get_space,
    policy_from_string,
    policy_to_string,
    precision_groups,
    smallest,
)
from supernets import build_supernet, extract
from supernets.training.bn import recalibrate_bn
from supernets.training.checkpoint import save_supernet
from supernets.training.evaluate import resize

from ..classifier_fit import ridge_classifier, set_classifier
from .conftest import SPACE_NAME

DATASET = {"kind": "digits", "image_size": 32}
BN_IMAGES = 64
MAX_IMAGES = 120  # of the validation split (about 150 digits)
INT8 = "p:i,i,i,i,i,i,i"
MIXED = "p:f,i,i,f,i,i,f"


def _fit_classifier(supernet, space, arch, data) -> None:
    """Fit the supernet's classifier (shared by every subnet: 1280 features) to the features of ``arch``'s
    subnet as the evaluator builds it (batch norms recalibrated on the run's BN images), by ridge regression."""
    net = extract(supernet, arch)
    with torch.no_grad():
        recalibrate_bn(net, (resize(x, arch.resolution) for x in data.calibration_batches(BN_IMAGES, 200, 0)))
    x, y = data.normalize(data.splits["train"][0]), data.splits["train"][1]
    set_classifier(supernet, *ridge_classifier(net, resize(x, arch.resolution), y, alpha=30.0))


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """``(config, run, factory)``: a run folder with a supernet whose smallest subnet classifies digits, its
    config (digits at 32 x 32, 64 BN images, CPU), and the evaluator's factory as the search makes it."""
    root = tmp_path_factory.mktemp("quantized-accuracy")
    path = root / "config.yaml"
    path.write_text(yaml.safe_dump({"name": "qa", "space": SPACE_NAME, "seed": 0, "dataset": DATASET,
                                    "train": {"bn_recal_images": BN_IMAGES, "device": "cpu"},
                                    "run_dir": str(root / "run")}))
    config = load_config(path)
    run_dir = RunDir.for_config(config)
    space = config.get_space()
    torch.manual_seed(0)
    supernet = build_supernet(space).eval()
    data = load_dataset(config.dataset, max(space.resolutions), config.seed)
    _fit_classifier(supernet, space, smallest(space), data)
    run_dir.supernet_checkpoint.parent.mkdir(parents=True, exist_ok=True)
    save_supernet(run_dir.supernet_checkpoint, supernet, space, config.config_hash)  # the config's own
    factory = SupernetAccuracy(str(run_dir.supernet_checkpoint),
                               functools.partial(load_dataset, config.dataset, max(space.resolutions), config.seed),
                               bn_images=BN_IMAGES, max_images=MAX_IMAGES, seed=config.seed, device="cpu")
    return config, run_dir, factory


@pytest.fixture(scope="module")
def space():
    return get_space(SPACE_NAME)


def _unusable(tmp_path) -> SupernetAccuracy:
    """A factory that fails as soon as it is asked for any work: what a fully cached evaluator may be given."""
    return SupernetAccuracy(str(tmp_path / "no-such-supernet.pt"), dict)


@pytest.fixture
def counted(monkeypatch):
    """How often a subnet is exported and calibrated (``nas.quantize.subnet_quantizer`` called)."""
    calls: list[str] = []
    real = _flow.subnet_quantizer

    def counting(space, supernet, arch, *args, **kwargs):
        calls.append(arch.arch_id)
        return real(space, supernet, arch, *args, **kwargs)

    monkeypatch.setattr(_flow, "subnet_quantizer", counting)
    return calls


def test_quantised_accuracy_is_measured_once_cached_and_is_the_nas_quantize_model(run, space, tmp_path, counted):
    config, run_dir, factory = run
    arch = smallest(space)
    int8, mixed = (policy_from_string(space, p, arch) for p in (INT8, MIXED))
    cache = tmp_path / "accuracy.jsonl"
    evaluator = DirectEvaluator(factory, AccuracyCache(cache), workers=0)
    fp32_acc, int8_acc, mixed_acc = evaluator.evaluate([arch, arch, arch], "val", [None, int8, mixed])
    assert counted == [arch.arch_id]  # one export and one calibration for both policies
    assert evaluator.evaluations == 3
    # The subnet classifies (random features, a fitted classifier); int8 costs it a few points at most.
    assert fp32_acc > 0.5  # ten classes: chance is 0.1
    for value in (int8_acc, mixed_acc):
        assert 0.0 <= value <= 1.0 and abs(value - fp32_acc) <= 0.05
        assert value * MAX_IMAGES == pytest.approx(round(value * MAX_IMAGES))  # a share of the 120 images

    # The very model `nas quantize` writes for the arch (same BN images, calibration images, normalisation).
    prepared = prepare_subnet(config, run_dir, arch, max_images=MAX_IMAGES)
    assert len(prepared.val) == MAX_IMAGES
    assert top1(prepared.quantizer.quantize(int8), prepared.val) == int8_acc
    assert top1(prepared.quantizer.quantize(mixed), prepared.val) == mixed_acc
    # Its fp32 graph in ONNX Runtime agrees with the fp32 accuracy measured in PyTorch.
    assert abs(top1(prepared.quantizer.fp32, prepared.val) - fp32_acc) <= 1.0 / MAX_IMAGES + 1e-9
    # And the model `nas query --export` writes for a front member of this arch and policy (from what the
    # search records in the front store: dataset, data seed, BN images).
    meta = MemoryFrontStore()
    for key, value in (("dataset", DATASET), ("data_seed", config.seed), ("bn_images", BN_IMAGES)):
        meta.set_meta(key, value)
    member = FrontMember(device="dev", arch=arch, arch_string=arch_to_string(space, arch), arch_id=arch.arch_id,
                         val_accuracy=int8_acc, test_accuracy=None, predicted_latency_ms=1.0,
                         measured_latency_ms=None, macs=1, params=1, checkpoint=str(run_dir.supernet_checkpoint),
                         policy=INT8)
    exported = prepare_member(member, run_calibration(meta, arch.resolution), max_images=MAX_IMAGES)
    assert top1(exported.quantizer.quantize(int8), exported.val) == int8_acc
    builds = len(counted)

    # Cached: asked again, nothing is built; fp32 throughout is the fp32 subnet (its cache entry).
    fp32_policy = PrecisionPolicy.uniform(space, "fp32")
    again = evaluator.evaluate([arch, arch, arch, arch], "val", [mixed, int8, None, fp32_policy])
    assert list(again) == [mixed_acc, int8_acc, fp32_acc, fp32_acc]
    assert len(counted) == builds and evaluator.evaluations == 3
    rows = [json.loads(line) for line in cache.read_text().splitlines()]
    assert len(rows) == 3
    assert [r.get("policy") for r in rows] == [None, INT8, MIXED]
    assert "quantization_method" not in rows[0] and {r["quantization_method"] for r in rows[1:]} == {"minmax"}

    # A new evaluator on the same file answers without any work (its factory could do none).
    fresh = DirectEvaluator(_unusable(tmp_path), AccuracyCache(cache), workers=0)
    assert list(fresh.evaluate([arch, arch], "val", [int8, mixed])) == [int8_acc, mixed_acc]
    assert list(fresh.evaluate([arch])) == [fp32_acc]
    # Another calibration method is another model: not answered from the minmax entries.
    entropy = DirectEvaluator(_unusable(tmp_path), AccuracyCache(cache), workers=0, quantization_method="entropy")
    with pytest.raises(UsageError, match="no-such-supernet"):
        entropy.evaluate([arch], "val", [int8])
    # So is another quantiser's model (nas.quantize.QUANTIZER_ID): its lines are not read; fp32 ones are.
    assert {r["quantizer"] for r in rows[1:]} == {QUANTIZER_ID} and "quantizer" not in rows[0]
    cache.write_text("".join(json.dumps({**r, "quantizer": "older"}) + "\n" if "policy" in r else
                             json.dumps(r) + "\n" for r in rows))
    older = AccuracyCache(cache)
    assert older.get(arch.arch_id, "val", int8) is None and older.get(arch.arch_id, "val") == fp32_acc


def test_fp32_path_is_unchanged(run, space, tmp_path, counted):
    _, _, factory = run
    arch = smallest(space)
    evaluator = DirectEvaluator(factory, AccuracyCache(tmp_path / "accuracy.jsonl"), workers=0)
    value = evaluator.evaluate([arch])[0]
    # The value subnet_accuracy gives, computed by the factory's function directly.
    assert value == factory()(arch, "val")
    assert counted == []  # no export
    row = json.loads((tmp_path / "accuracy.jsonl").read_text())
    assert set(row) == {"arch_id", "split", "accuracy", "arch"}  # the line as it always was
    # A policy fp32 throughout (any spelling) is the same subnet and the same entry.
    per_block = PrecisionPolicy("fp32", tuple(("fp32",) * s.depth for s in arch.stages), "fp32")
    assert list(evaluator.evaluate([arch, arch], "val", [PrecisionPolicy.uniform(space, "fp32"), per_block])) \
        == [value, value]
    assert evaluator.evaluations == 1 and counted == []


def test_group_sensitivities_are_sorted_cached_and_those_of_nas_quantize(run, space, tmp_path, counted):
    config, run_dir, factory = run
    arch = smallest(space)
    evaluator = DirectEvaluator(factory, AccuracyCache(tmp_path / "accuracy.jsonl"), workers=0)
    ranked, twice = evaluator.group_sensitivities([arch, arch])
    assert ranked == twice and counted == [arch.arch_id]
    assert sorted(g for g, _ in ranked) == sorted(precision_groups(space))
    kls = [kl for _, kl in ranked]
    assert kls == sorted(kls) and all(kl >= 0 for kl in kls) and kls[-1] > 0
    # Those of the model `nas quantize` builds, on the same validation images, in the same order.
    prepared = prepare_subnet(config, run_dir, arch, max_images=MAX_IMAGES)
    units = group_units(space, arch, "stage")
    expected = sensitivities(prepared.quantizer, space, arch, prepared.val, units)
    by_name = {s.group: s.kl for s in expected}
    assert dict(ranked) == pytest.approx(by_name, rel=1e-6, abs=1e-12)
    assert [unit_name(space, u) for u in units] == [s.group for s in expected]
    # Cached beside accuracy.jsonl: a new evaluator answers without work.
    path = tmp_path / "sensitivity.jsonl"
    assert len(path.read_text().splitlines()) == 1 and len(SensitivityCache(path)) == 1
    with open(path, "a") as handle:  # a torn last line is ignored
        handle.write('{"arch_id": "tor')
    fresh = DirectEvaluator(_unusable(tmp_path), AccuracyCache(tmp_path / "accuracy.jsonl"), workers=0)
    assert fresh.group_sensitivities([arch]) == [ranked]

    # The mixes the precision search measures: the k least sensitive groups int8.
    order = [g for g, _ in ranked]
    none, two, every = prefix_policies(space, arch, order, [0, 2, len(order)])
    assert none.is_uniform("fp32") and every.is_uniform("int8")
    int8_groups = {g for g, p in zip(precision_groups(space), [two.stem, *(s[0] for s in two.stages), two.head])
                   if p == "int8"}
    assert int8_groups == set(order[:2])


def test_prefix_policies_checks_its_input(space):
    arch = smallest(space)
    policies = prefix_policies(space, arch, ["head", "stage2", "stem"], [1, 3])
    assert [policy_to_string(p) for p in policies] == ["p:f,f,f,f,f,f,i", "p:i,f,i,f,f,f,i"]
    # Blocks by name, as the block granularity names them.
    assert policy_to_string(prefix_policies(space, arch, ["stage3.b1"], [1])[0]) == "p:f,f,f,fi,f,f,f"
    with pytest.raises(UsageError, match="'stage9' is not a group of this subnet; allowed: stem, stage1"):
        prefix_policies(space, arch, ["stage9"], [1])
    with pytest.raises(UsageError, match="int8 group count 4 is not allowed; allowed: 0 to 3"):
        prefix_policies(space, arch, ["head", "stage2", "stem"], [4])


def test_bad_policies_fail_in_one_line_before_any_work(space, tmp_path):
    arch = smallest(space)  # depth 2 everywhere
    evaluator = DirectEvaluator(_unusable(tmp_path), AccuracyCache(tmp_path / "accuracy.jsonl"), workers=0)
    short = PrecisionPolicy("int8", (("int8",),) * 3, "int8")
    per_block = PrecisionPolicy("fp32", (("int8",), ("int8", "fp32", "int8"), *(("int8",),) * 3), "fp32")
    cases = [([short], "precision policy has 3 stages; space 'ofa_mbv3_cifar' has 5"),
             ([per_block], "stage2: 3 per-block precisions for 2 active blocks"),
             ([None, None], "2 precision policies for 1 subnets"),
             (["p:i,i,i,i,i,i,i"], "give a PrecisionPolicy or None")]
    for policies, named in cases:
        with pytest.raises(UsageError) as err:
            evaluator.evaluate([arch], "val", policies)
        assert named in str(err.value) and "\n" not in str(err.value)
    assert evaluator.evaluations == 0 and not (tmp_path / "accuracy.jsonl").exists()
    # An unknown calibration method, and an accuracy function that cannot quantise.
    with pytest.raises(UsageError, match="calibration method 'kl' is not allowed; allowed: minmax, entropy"):
        DirectEvaluator(_unusable(tmp_path), quantization_method="kl")
    with pytest.raises(UsageError, match="calibration method 'kl' is not allowed"):
        SupernetAccuracy("x.pt", dict, quantization_method="kl")
    blind = DirectEvaluator(lambda: (lambda arch, split: 0.5), workers=0)
    with pytest.raises(UsageError, match="cannot evaluate quantised subnets"):
        blind.evaluate([arch], "val", [PrecisionPolicy.uniform(space, "int8")])
    with pytest.raises(UsageError, match="cannot evaluate quantised subnets"):
        blind.group_sensitivities([arch])


def test_ray_actors_measure_the_same_quantised_accuracy(run, space, tmp_path):
    _, _, factory = run
    arch = smallest(space)
    policies = [policy_from_string(space, p, arch) for p in (INT8, MIXED)]
    local = DirectEvaluator(factory, workers=0).evaluate([arch, arch], "val", policies)
    remote = DirectEvaluator(factory, AccuracyCache(tmp_path / "accuracy.jsonl"), workers=1)
    try:
        assert list(remote.evaluate([arch, arch], "val", policies)) == list(local)
    finally:
        remote.close()
