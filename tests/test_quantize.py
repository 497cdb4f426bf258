"""Post-training quantisation and mixed precision of subnets in ONNX Runtime, for real (no mocks): a tiny
subnet on the digits data, its QDQ models, precision policies and the sensitivity-guided search."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
import torch

from latency_predictors.measure import MeasureConfig
from nas.cli import main
from nas.data import DatasetConfig, load_dataset
from nas.quantize import (
    FAKE_QUANT_TOLERANCE,
    QDQ_FORMAT,
    PreparedSubnet,
    SubnetQuantizer,
    block_of_node,
    calibration_images,
    fake_quant_agreement,
    logits,
    policy_of,
    quantize_subnet,
    search_policy,
    split_images,
    top1,
)
from nas.quantize._groups import HEAD, STEM
from nas.query import Normalization
from search_spaces import (
    PolicyError,
    PrecisionPolicy,
    get_space,
    plan,
    policy_from_string,
    policy_to_string,
    random_arch,
    smallest,
)
from supernets import build
from supernets.training.bn import recalibrate_bn

from .classifier_fit import ridge_classifier, set_classifier

SPACE = "ofa_mbv3_cifar"
# Latency only has to rank candidates here (benchmarks measure properly): a short series.
QUICK = MeasureConfig(warmup=1, repeats=5, retries=0, clock="thread_cpu")


@pytest.fixture(scope="module")
def space():
    return get_space(SPACE)


@pytest.fixture(scope="module")
def tiny(space):
    """The smallest subnet on digits at 24 x 24, made to classify in a second: seeded random features, batch
    norms recalibrated on training images, the classifier fitted to them by ridge regression."""
    arch = smallest(space)
    r = arch.resolution
    data = load_dataset(DatasetConfig(kind="digits", image_size=r, max_train_images=320), r, seed=0)
    torch.manual_seed(0)
    net = build(space, arch)
    x, y = data.normalize(data.splits["train"][0]), data.splits["train"][1]
    recalibrate_bn(net, x[:128])
    set_classifier(net, *ridge_classifier(net, x, y))
    quantizer = SubnetQuantizer(net.eval(), plan(space, arch), r, Normalization.of(data),
                                calibration_images(data, r, 96), {"arch_string": "smallest"})
    return arch, quantizer, split_images(data, "val", r), split_images(data, "test", r, 200)


@pytest.fixture(scope="module")
def int8_model(space, tiny):
    return tiny[1].quantize(PrecisionPolicy.uniform(space, "int8"))


# --- policy strings -----------------------------------------------------------------------------------------


def test_policy_strings_round_trip(space):
    arch = smallest(space)  # depth 2 everywhere
    for text in ("p:f,f,f,f,f,f,f", "p:i,i,i,i,i,i,i", "p:f,i,i,fi,i,if,f", "p:i,f,f,f,f,f,i"):
        policy = policy_from_string(space, text, arch)
        assert policy_to_string(policy) == text
        assert policy_from_string(space, policy_to_string(policy), arch) == policy
    # A per-block stage whose blocks agree is written as one letter; the meaning is the same.
    policy = policy_from_string(space, "p:f,ii,i,ff,i,i,f", arch)
    assert policy_to_string(policy) == "p:f,i,i,f,i,i,f"
    assert [policy.block_precision(0, b) for b in range(2)] == ["int8", "int8"]  # stage1
    assert [policy.block_precision(2, b) for b in range(2)] == ["fp32", "fp32"]  # stage3
    assert policy.block_precision(-1, 0) == "fp32"  # the fixed first block follows the stem
    # Random policies of random archs (per-block and per-stage groups) round-trip.
    rng = np.random.default_rng(0)
    for seed in range(20):
        arch = random_arch(space, seed)
        units = {"stem", "head", *((s, None) for s in range(5))} | {(s, b) for s, st in enumerate(arch.stages)
                                                                     for b in range(st.depth)}
        chosen = {u for u in sorted(units, key=str) if rng.random() < 0.5}
        policy = policy_of(space, arch, chosen)
        assert policy_from_string(space, policy_to_string(policy), arch) == policy


@pytest.mark.parametrize("text, named", [
    ("f,i,i,i,i,i,f", "must start with 'p:'"),
    ("p:f,i,i,i,f", "needs 7: stem, stage1, stage2, stage3, stage4, stage5, head"),
    ("p:f,i,x,i,i,i,f", "stage2: 'x' is not allowed; allowed letters: f (fp32), i (int8)"),
    ("p:f,i,,i,i,i,f", "stage2: '' is not allowed"),
    ("p:ii,i,i,i,i,i,f", "the stem takes one letter"),
    ("p:f,i,i,iif,i,i,f", "stage3: 3 per-block precisions for 2 active blocks"),
])
def test_bad_policy_strings_give_one_line_errors(space, text, named):
    with pytest.raises(PolicyError) as err:
        policy_from_string(space, text, smallest(space))
    assert named in str(err.value)
    assert "\n" not in str(err.value)
    with pytest.raises(PolicyError, match="is not allowed; allowed: fp32, int8"):
        PrecisionPolicy("int4", ((("int8",),) * 5), "fp32")


def test_cli_bad_input_is_one_line_and_exit_2(tmp_path, capsys):
    config = tmp_path / "c.yaml"
    config.write_text(f"name: q\nspace: {SPACE}\ndataset: {{kind: digits}}\nrun_dir: {tmp_path / 'run'}\n")
    cases = [
        (["--arch", "smallest", "--policy", "p:f,i,q,i,i,i,f"], "stage2: 'q' is not allowed"),
        (["--arch", "smallest", "--policy", "p:f,i"], "needs 7"),
        (["--arch", "smallest", "--out-suffix"], "must end in .onnx"),
        (["--arch", "smallest"], "has no trained supernet"),
        (["--arch", "r24/k3"], "arch string has 1 stages"),
        # checked before the run is opened: these name the option, not the missing supernet
        (["--arch", "smallest", "--max-loss", "-1"], "--max-loss must be a finite number"),
        (["--arch", "smallest", "--max-loss", "nan"], "--max-loss must be a finite number"),
        (["--arch", "smallest", "--calibration-images", "0"], "--calibration-images"),
        (["--arch", "smallest", "--out-into-run"], "would write into the run's checkpoints/ folder"),
    ]
    for extra, named in cases:
        out = str(tmp_path / ("m.txt" if "--out-suffix" in extra else "m.onnx"))
        if "--out-into-run" in extra:
            out, extra = str(tmp_path / "run" / "checkpoints" / "q.onnx"), extra[:-1]
        code = main(["quantize", str(config), *[e for e in extra if e != "--out-suffix"], "--out", out])
        err = capsys.readouterr().err
        assert code == 2, (extra, err)
        assert err.startswith("nas: error: ") and err.count("\n") == 1 and named in err, err
    with pytest.raises(SystemExit) as exit_:  # argparse's own usage error, exit status 2
        main(["quantize", str(config), "--arch", "smallest", "--policy", "p:f,i,i,i,i,i,f", "--max-loss", "1",
              "--out", str(tmp_path / "m.onnx")])
    assert exit_.value.code == 2 and "not allowed with argument" in capsys.readouterr().err


# --- quantising -------------------------------------------------------------------------------------------------


def test_every_node_maps_to_a_layer_group(tiny):
    arch, quantizer = tiny[0], tiny[1]
    keys = {name: block_of_node(name, quantizer.plan) for name in quantizer.node_names}
    assert None not in keys.values(), [n for n, k in keys.items() if k is None]
    convs = [n.name for n in quantizer.fp32_model.graph.node if n.op_type == "Conv"]
    assert keys[convs[0]] == STEM and keys[convs[-1]] == HEAD
    assert {keys[n] for n in convs} == {STEM, HEAD, *((s, b) for s in range(5) for b in range(arch.stages[s].depth))}


def test_int8_subnet_runs_and_agrees_with_its_fake_quantised_graph(tiny, int8_model):
    """The QDQ model runs in ONNX Runtime with integer kernels and agrees with the fake-quantised reference: the
    same graph unoptimised, so QuantizeLinear / DequantizeLinear run as float ops around float32 layers.

    Tolerance (``FAKE_QUANT_TOLERANCE``): the mean absolute logit difference at most half the quantisation error
    the reference itself simulates (mean |reference - fp32|): integer kernels round each layer's accumulator
    where the reference rounds a float, one step at most per layer (or one output step, for a nearly lossless
    model); and top-1 agreement >= 90% on 200 test images. This net's random features make it sensitive (93.5%
    measured); the trained subnets of ``experiments/quantize_smoke.yaml`` agree on 99-100%.
    """
    _, quantizer, _, test = tiny
    ops = {n.op_type for n in onnx.load_from_string(int8_model).graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops
    check = fake_quant_agreement(int8_model, test, quantizer.fp32)
    assert check["within"] and check["mean_abs_diff"] <= max(FAKE_QUANT_TOLERANCE * check["quantization_error"],
                                                              check["output_scale"])
    assert check["top1_agreement"] >= 0.9
    # The int8 model is a quantised version of this subnet, not something else: its predictions follow fp32's
    # far above chance (10 classes) on the same images.
    fp32, int8 = logits(quantizer.fp32, test), logits(int8_model, test)
    assert np.mean(fp32.argmax(1) == int8.argmax(1)) >= 0.5
    assert top1(quantizer.fp32, test) >= 0.3


def test_a_policy_quantises_only_its_int8_groups(space, tiny):
    arch, quantizer = tiny[0], tiny[1]
    policy = policy_from_string(space, "p:f,f,i,fi,f,f,i", arch)
    model = onnx.load_from_string(quantizer.quantize(policy))
    producers = {o: n for n in model.graph.node for o in n.output}
    quantized, float_ = set(), set()
    for node in model.graph.node:
        if node.op_type not in ("Conv", "Gemm"):
            continue
        weight = producers.get(node.input[1])
        key = block_of_node(node.name, quantizer.plan)
        (quantized if weight is not None and weight.op_type == "DequantizeLinear" else float_).add(key)
    assert quantized == {HEAD, (1, 0), (1, 1), (2, 1)}
    assert STEM in float_ and (2, 0) in float_ and (0, 0) in float_ and not quantized & float_
    # fp32 everywhere is the fp32 graph itself.
    assert quantizer.quantize(PrecisionPolicy.uniform(space, "fp32")) == quantizer.fp32


def test_quantize_subnet_writes_a_checked_model_with_its_metadata(space, tiny, tmp_path):
    arch, quantizer, val, test = tiny
    prepared = PreparedSubnet(space, arch, quantizer, val, test, bn_images=256)
    out = tmp_path / "q.onnx"
    report = quantize_subnet(prepared, out, policy="p:f,i,i,i,i,i,f", method="minmax", measure=QUICK)
    assert report.policy == "p:f,i,i,i,i,i,f" and report.how == "given" and report.method.method == "minmax"
    meta = {p.key: p.value for p in onnx.load(str(out)).metadata_props}
    assert meta["hwnas_format"] == QDQ_FORMAT and meta["precision_policy"] == report.policy
    assert json.loads(meta["test_accuracy"]) == pytest.approx(report.test_accuracy["quantized"])
    assert top1(out.read_bytes(), test) == pytest.approx(report.test_accuracy["quantized"])
    assert report.fake_quant_check["within"] and report.latency_ms["quantized"] > 0
    json.dumps(report.to_dict())  # the CLI's --json


def test_int8_kernels_beyond_the_check_refuse_to_write_or_warn_and_write(space, tiny, tmp_path, monkeypatch):
    """The check of ONNX Runtime's int8 kernels against the fake-quantised graph, failing: ``require`` (the
    default: ``nas quantize``, ``nas query --export``) writes nothing and raises the one-line error;
    ``warn`` (``nas run``'s export of the knee) writes the file and says by how much they differ."""
    from nas.errors import ExportCheckError, UsageError
    from nas.quantize import _flow

    real = _flow.fake_quant_agreement

    def failing(*args, **kwargs):
        return {**real(*args, **kwargs), "within": 0.0}

    monkeypatch.setattr(_flow, "fake_quant_agreement", failing)
    arch, quantizer, val, test = tiny
    prepared = PreparedSubnet(space, arch, quantizer, val, test, bn_images=256)
    out = tmp_path / "q.onnx"
    with pytest.raises(ExportCheckError, match="differ from the fake-quantised graph.*nothing written"):
        quantize_subnet(prepared, out, method="minmax", measure=QUICK)
    assert issubclass(ExportCheckError, UsageError) and not out.exists()
    with pytest.warns(UserWarning, match="differ from the fake-quantised graph.*written anyway"):
        report = quantize_subnet(prepared, out, method="minmax", measure=QUICK, agreement="warn")
    meta = {p.key: p.value for p in onnx.load(str(out)).metadata_props}
    assert json.loads(meta["fake_quant_check"])["within"] == 0.0 and not report.fake_quant_check["within"]
    with pytest.raises(UsageError, match="agreement 'maybe' is not allowed; allowed: require, warn"):
        quantize_subnet(prepared, out, method="minmax", measure=QUICK, agreement="maybe")


def test_sensitivity_search_keeps_its_bound(space, tiny):
    arch, quantizer, val, _ = tiny
    result = search_policy(quantizer, space, arch, val, max_loss_points=1.0, measure=QUICK)
    assert [s.group for s in result.sensitivities] == ["stem", "stage1", "stage2", "stage3", "stage4", "stage5",
                                                       "head"]
    assert result.loss_points <= 1.0 + 1e-9
    # The bound holds for the written policy, re-measured from scratch, and for every candidate timed.
    again = top1(quantizer.quantize(result.policy), val)
    assert 100 * (result.fp32_accuracy - again) <= 1.0 + 1e-9
    assert all(c.loss_points <= 1.0 + 1e-9 for c in result.candidates)
    assert result.candidates[0].policy == "p:f,f,f,f,f,f,f"
    fastest = min(c.latency_ms for c in result.candidates)
    assert result.latency_ms <= fastest * 1.03 + 1e-12
    tied = [c for c in result.candidates if c.latency_ms <= fastest * 1.03 + 1e-12]
    assert result.accuracy == max(c.accuracy for c in tied)
    # Candidates are prefixes of the sensitivity order, least sensitive first.
    order = sorted(result.sensitivities, key=lambda s: s.kl)
    last = result.candidates[-1]
    assert policy_from_string(space, last.policy, arch) == policy_of(
        space, arch, {g.group if g.group in ("stem", "head") else (int(g.group[5:]) - 1, None)
                      for g in order[:last.int8_groups]})
