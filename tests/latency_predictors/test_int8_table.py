"""int8 entries of lookup tables (issue 15, item 3): keys, measurement, mixed-precision sums, predictors, CLI."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest

from latency_predictors import LatencyError, LookupTable, MeasureConfig, MissingEntryError, build_table, get_backend
from latency_predictors.layers import enumerate_layers, layer_keys, network_layers, precision_key, precision_layers
from latency_predictors.learned import ResidualPredictor, RidgePredictor, TableLinearPredictor
from latency_predictors.lut import quantized_layer_measurer
from latency_predictors.measure import Measurement, export_onnx
from nas.cli import main
from search_spaces import PolicyError, PrecisionPolicy, get_space, plan, policy_from_string, sample

from .conftest import CountingMeasure, fake_latency

SPACE = get_space("ofa_mbv3_cifar")
FAST = MeasureConfig(warmup=1, repeats=5, retries=0, noise_threshold=10.0)


class Int8Measure(CountingMeasure):
    """A stand-in int8 timing: 0.6 of the fp32 stand-in plus 0.005 ms (distinct from any fp32 value)."""

    def __call__(self, layer):
        m = super().__call__(layer)
        ms = 0.6 * m.latency_ms + 0.005
        return Measurement(latency_ms=ms, median_ms=ms, spread=0.0, kept=1, rejected=0)


def _tables(tmp_path, device):
    path = tmp_path / "t.json"
    build_table(SPACE, device, path, CountingMeasure(), resolutions=[24], progress=False)
    before = json.loads(path.read_text())
    int8 = Int8Measure()
    table = build_table(SPACE, device, path, int8, resolutions=[24], progress=False, precision="int8")
    return path, before, table, int8


def _archs(n=6):
    return [replace(a, resolution=24) for a in sample(SPACE, n, seed=3)]


def test_int8_entries_are_added_beside_unchanged_fp32_entries(tmp_path, device):
    path, before, table, int8 = _tables(tmp_path, device)
    keys = set(enumerate_layers(SPACE, [24]))
    assert set(int8.calls) == keys                       # every layer measured once in int8
    assert table.precisions == ("fp32", "int8")
    assert table.complete and table.complete_for(SPACE, "int8")
    data = json.loads(path.read_text())
    assert data["version"] == 1                          # no format change: old readers load it
    for key in keys:                                     # old keys and their entries are untouched
        assert data["entries"][key] == before["entries"][key]
        entry = data["entries"][precision_key(key, "int8")]
        assert entry["precision"] == "int8" and entry["ms"] == pytest.approx(0.6 * before["entries"][key]["ms"] + 0.005)
    again = Int8Measure()                                # resuming measures nothing twice
    build_table(SPACE, device, path, again, resolutions=[24], progress=False, precision="int8")
    assert again.calls == {}


def test_int8_entries_of_another_quantiser_are_measured_again(tmp_path, device):
    path, _, _, _ = _tables(tmp_path, device)        # entries of a measure with no quantiser id (older tables)
    first = Int8Measure()
    first.quantizer = "q-1"
    build_table(SPACE, device, path, first, resolutions=[24], progress=False, precision="int8")
    keys = set(enumerate_layers(SPACE, [24]))
    assert set(first.calls) == keys                      # no id recorded: every int8 entry timed again
    assert {json.loads(path.read_text())["entries"][precision_key(k, "int8")]["quantizer"] for k in keys} == {"q-1"}
    same = Int8Measure()
    same.quantizer = "q-1"
    build_table(SPACE, device, path, same, resolutions=[24], progress=False, precision="int8")
    assert same.calls == {}
    changed = Int8Measure()
    changed.quantizer = "q-2"
    build_table(SPACE, device, path, changed, resolutions=[24], progress=False, precision="int8")
    assert set(changed.calls) == keys
    fp32 = CountingMeasure()                             # fp32 entries do not depend on the quantiser
    build_table(SPACE, device, path, fp32, resolutions=[24], progress=False)
    assert fp32.calls == {}


def test_table_without_precisions_loads_and_predicts_as_before(tmp_path, device):
    path = tmp_path / "old.json"
    build_table(SPACE, device, path, CountingMeasure(), resolutions=[24], progress=False)
    data = json.loads(path.read_text())
    assert not any("@" in k or "precision" in e for k, e in data["entries"].items())   # as tables were written
    old = LookupTable.load(path)
    archs = _archs()
    expected = [sum(fake_latency(layer) for layer in network_layers(plan(SPACE, a))) for a in archs]
    assert old.precisions == ("fp32",)
    assert old.predict(SPACE, archs) == pytest.approx(expected)
    assert old.predict(SPACE, archs, [None] * len(archs)) == pytest.approx(expected)
    fp32 = [PrecisionPolicy.uniform(SPACE, "fp32")] * len(archs)
    assert old.predict(SPACE, archs, fp32) == pytest.approx(expected)
    assert np.allclose(old.compile(SPACE).predict(archs), expected)
    with pytest.raises(MissingEntryError, match="no int8 entries; run 'nas latency build --precisions int8'"):
        old.predict_arch(SPACE, archs[0], PrecisionPolicy.uniform(SPACE, "int8"))
    # With int8 entries added, fp32 predictions (plain and compiled) are what they were.
    build_table(SPACE, device, path, Int8Measure(), resolutions=[24], progress=False, precision="int8")
    both = LookupTable.load(path)
    assert both.predict(SPACE, archs) == pytest.approx(expected)
    assert np.allclose(both.compile(SPACE).predict(archs), expected)


def test_mixed_policy_prediction_is_the_sum_of_each_groups_entries(tmp_path, device):
    _, _, table, _ = _tables(tmp_path, device)
    arch = next(a for a in _archs(20) if a.stages[2].depth >= 2)
    blocks = "i" + "f" * (arch.stages[2].depth - 1)      # per block in stage 3: first int8, the rest fp32
    policy = policy_from_string(SPACE, f"p:i,f,i,{blocks},f,i,f", arch)
    p = plan(SPACE, arch)
    expected = table.entries[p.stem_key() + "@int8"]["ms"] + table.entries[p.head_key()]["ms"]
    for b in p.blocks:
        if b.stage_index < 0:                            # the fixed first block is in the stem's group
            precision = "int8"
        elif b.stage_index == 2:
            precision = "int8" if b.block_index == 0 else "fp32"
        else:
            precision = ("fp32", "int8", None, "fp32", "int8")[b.stage_index]
        expected += table.entries[b.key() + ("@int8" if precision == "int8" else "")]["ms"]
    assert table.predict_arch(SPACE, arch, policy) == pytest.approx(expected)
    groups = [group for _, group, _ in precision_layers(SPACE, arch, policy)]
    assert groups[0] == "stem" and groups[-1] == "head"
    assert set(groups) <= {"stem", "head", *(s.name for s in SPACE.stages)}
    int8 = PrecisionPolicy.uniform(SPACE, "int8")
    assert table.predict_arch(SPACE, arch, int8) == pytest.approx(
        sum(table.entries[k + "@int8"]["ms"] for k in layer_keys(SPACE, arch)))
    assert table.predict(SPACE, [arch, arch], [None, policy]) == pytest.approx(
        [table.predict_arch(SPACE, arch), expected])
    wrong = PrecisionPolicy("fp32", (("fp32",), ("fp32",), ("int8",) * (arch.stages[2].depth + 1), ("fp32",),
                                     ("fp32",)), "fp32")
    with pytest.raises(PolicyError, match="active blocks"):
        table.predict_arch(SPACE, arch, wrong)


def test_table_linear_and_residual_fit_mixed_subnets(tmp_path, device):
    _, _, table, _ = _tables(tmp_path, device)
    archs = _archs(12)
    rng = np.random.default_rng(0)
    policies = [PrecisionPolicy("int8" if rng.random() < 0.5 else "fp32",
                                tuple(("int8" if rng.random() < 0.5 else "fp32",) for _ in SPACE.stages),
                                "fp32") for _ in archs]
    sums = np.array(table.predict(SPACE, archs, policies))
    y = 1.7 * sums + 0.02
    linear = TableLinearPredictor(SPACE, table).fit(archs, y, policies)
    assert linear.scale == pytest.approx(1.7) and linear.offset == pytest.approx(0.02, abs=1e-9)
    assert linear.predict_mixed(archs, policies) == pytest.approx(y)
    assert linear.predict(archs) == pytest.approx(1.7 * np.array(table.predict(SPACE, archs)) + 0.02)
    residual = ResidualPredictor(SPACE, table).fit(archs, 1.3 * sums, policies)
    assert residual.prior(archs) == pytest.approx(table.predict(SPACE, archs))   # outside a call: fp32
    assert residual.predict_mixed(archs, policies) == pytest.approx(1.3 * sums, rel=1e-6)
    with pytest.raises(LatencyError, match="does not see precision"):
        RidgePredictor(SPACE).fit(archs, y, policies)
    with pytest.raises(LatencyError, match="2 precision policies for 12"):
        linear.predict_mixed(archs, policies[:2])


def test_real_int8_layers_quantised_and_timed_by_onnx_runtime():
    import onnx

    from nas.latency_builders import StaticBuilder
    from nas.quantize import quantize_layer

    layers = list(enumerate_layers(SPACE, [24]).values())
    picked = [layers[0], next(la for la in layers if la.kind == "block" and "-se0-" not in la.key), layers[-1]]
    measure = quantized_layer_measurer(StaticBuilder(), get_backend("onnxruntime"), FAST, quantize_layer, 1, SPACE)
    for layer in picked:
        m = measure(layer)
        assert np.isfinite(m.latency_ms) and m.latency_ms > 0
    shape = (1, *picked[0].input_shape)
    model = onnx.load_from_string(quantize_layer(export_onnx(picked[0].build(StaticBuilder()), shape), shape))
    ops = {n.op_type for n in model.graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops
    weights = {t.name: t for t in model.graph.initializer}
    int8_weights = [t for t in weights.values() if t.data_type == onnx.TensorProto.INT8 and len(t.dims) == 4]
    assert int8_weights                                   # conv weights stored as int8 ...
    scales = [n for n in model.graph.node if n.op_type == "DequantizeLinear" and n.input[0] in
              {t.name for t in int8_weights}]
    assert scales and all(len(weights[n.input[1]].dims) == 1 and weights[n.input[1]].dims[0] > 1
                          for n in scales)  # ... with one scale per output channel
    with pytest.raises(LatencyError, match="only by the onnxruntime backend"):
        quantized_layer_measurer(StaticBuilder(), get_backend("torch"), FAST, quantize_layer, 1, SPACE)


def test_evaluate_quantized_measures_once_and_reports(tmp_path, monkeypatch):
    from latency_predictors import Device, DeviceStore
    from latency_predictors.workflow import evaluate_quantized, format_quantized_report
    from nas.latency_builders import StaticBuilder
    from nas.quantize import quantize_layer

    store = DeviceStore(tmp_path)
    device = store.save(Device(id="local-cpu-1t-ort", backend="onnxruntime", threads=1))
    path = store.table_path(device.id, SPACE.name)
    build_table(SPACE, device, path, CountingMeasure(), resolutions=[24], progress=False)
    build_table(SPACE, device, path, Int8Measure(), resolutions=[24], progress=False, precision="int8")
    stem = next(iter(enumerate_layers(SPACE, [24]).values()))
    tiny = quantize_layer(export_onnx(stem.build(StaticBuilder()), (1, 3, 24, 24)), (1, 3, 24, 24))
    built = []

    def model_fn(space, arch, policy):   # the same tiny int8 model for every subnet: the plumbing, fast
        built.append((arch.arch_id, str(policy)))
        return tiny

    report = evaluate_quantized(store, device, SPACE, model_fn, 3, FAST, precision="mixed", resolutions=[24],
                                fit_n=3, progress=False)
    assert len(built) == 6 and all(p != "p:f,f,f,f,f,f,f" and p != "p:i,i,i,i,i,i,i" for _, p in built)
    assert set(report.predictors) == {"table", "table_linear", "residual"} and report.n == 3
    assert "mixed subnets measured end to end" in format_quantized_report(report)
    saved = json.loads(open(report.files["json"]).read())
    assert saved["precision"] == "mixed" and saved["predictors"]["table"]["n"] == 3
    built.clear()
    evaluate_quantized(store, device, SPACE, model_fn, 3, FAST, precision="mixed", resolutions=[24], fit_n=3,
                       progress=False)
    assert built == []                                   # measured subnets are reused
    evaluate_quantized(store, device, SPACE, model_fn, 3, FAST, precision="mixed", resolutions=[24], fit_n=3,
                       progress=False, quantizer="q-2")
    assert len(built) == 6                               # ... but not the timings of another quantiser's models


def test_cli_refuses_int8_on_torch_in_one_line(capsys, tmp_path):
    for argv in (["latency", "build", "--space", "ofa_mbv3_cifar", "--device", "local-cpu-1t-torch",
                  "--precisions", "fp32", "int8", "--resolutions", "24"],
                 ["latency", "build", "--space", "ofa_mbv3_cifar", "--device", "lab", "--backend", "torch",
                  "--precisions", "int8"]):
        code = main([*argv, "--home", str(tmp_path)])
        _, err = capsys.readouterr()
        assert code == 2 and err.count("\n") == 1 and err.startswith("nas: error:")
        assert "quantised layers are timed only by ONNX Runtime" in err
    assert not (tmp_path / "devices").exists()          # refused before anything is recorded
    code = main(["latency", "build", "--space", "ofa_mbv3_cifar", "--device", "local-cpu-1t-ort",
                 "--precisions", "int4", "--home", str(tmp_path)])
    _, err = capsys.readouterr()
    assert code == 2 and err.count("\n") == 1 and "allowed: fp32, int8" in err


def test_preprocessing_gives_each_node_its_own_initializers():
    """A bias shared by an fp32 and an int8 node became a DequantizeLinear output for both, which cost the fp32
    convolution ONNX Runtime's NCHWc kernels (mixed subnets measured 2-2.6x their table sum)."""
    import onnx
    from onnx import TensorProto, helper

    from nas.quantize import unshare_initializers

    zeros = helper.make_tensor("b", TensorProto.FLOAT, [4], [0.0] * 4)
    w = helper.make_tensor("w", TensorProto.FLOAT, [4, 4, 1, 1], [0.1] * 16)
    nodes = [helper.make_node("Conv", ["x", "w", "b"], ["y"], name="c1"),
             helper.make_node("Conv", ["y", "w", "b"], ["z"], name="c2")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, 2, 2])],
                              [helper.make_tensor_value_info("z", TensorProto.FLOAT, [1, 4, 2, 2])], [zeros, w])
    model = unshare_initializers(helper.make_model(graph))
    onnx.checker.check_model(model)
    first, second = model.graph.node
    assert list(first.input) == ["x", "w", "b"] and not set(second.input[1:]) & {"w", "b"}
    values = {t.name: onnx.numpy_helper.to_array(t) for t in model.graph.initializer}
    assert np.array_equal(values[second.input[1]], values["w"]) and np.array_equal(values[second.input[2]], values["b"])
