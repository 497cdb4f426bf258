"""``nas query --export`` of a front member with a precision policy: the quantised QDQ ONNX model, end to end on
the digits data (a real seeded supernet, a front store built by hand with one arch both in fp32 and in int8)."""

from __future__ import annotations

import contextlib
import io
import json
from dataclasses import replace

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from nas.cli import main
from nas.errors import UsageError
from nas.fronts import FrontMember, SQLiteFrontStore
from nas.quantize import QDQ_FORMAT
from nas.query import export_member, open_fronts, query_front, run_calibration, subnet_of
from nas.search_paths import search_paths
from search_spaces import arch_to_string, get_space, smallest
from supernets import build_supernet
from supernets.training.checkpoint import save_supernet

from .classifier_fit import ridge_classifier, set_classifier
from .cli_helpers import fails_in_one_line
from .search.conftest import SPACE_NAME

# As tests/test_exports.py: digits at 32 x 32, few images, so an export is quick.
DATASET = {"kind": "digits", "image_size": 32, "max_train_images": 256}
INT8 = "p:i,i,i,i,i,i,i"
MIXED = "p:f,i,i,f,i,i,f"  # stem, stage 3 and head fp32


def _member(device: str, arch, policy, accuracy: float, latency_ms: float) -> FrontMember:
    space = get_space(SPACE_NAME)
    return FrontMember(device=device, arch=arch, arch_string=arch_to_string(space, arch), arch_id=arch.arch_id,
                       val_accuracy=accuracy, test_accuracy=None, predicted_latency_ms=latency_ms,
                       measured_latency_ms=None, macs=1000, params=100, checkpoint="checkpoints/supernet.pt",
                       trial_number=0, policy=policy)


def _fit_classifier(supernet, member: FrontMember, checkpoint, space) -> None:
    """Make the untrained supernet's smallest subnet classify digits, as tests/test_quantize.py does: the
    classifier (shared with the supernet: 1280 features, not elastic) fitted by ridge regression to the
    features of the subnet as exports extract it (batch norms recalibrated on the run's data)."""
    from nas.fronts import MemoryFrontStore

    meta = MemoryFrontStore()
    for key, value in (("dataset", DATASET), ("data_seed", 0), ("bn_images", 32)):
        meta.set_meta(key, value)
    calibration = run_calibration(meta, member.arch.resolution)
    net = subnet_of(member, calibration)
    data = calibration.data
    x, y = data.normalize(data.splits["train"][0]), data.splits["train"][1]
    x = torch.nn.functional.interpolate(x, size=(member.arch.resolution,) * 2, mode="bilinear", align_corners=False)
    set_classifier(supernet, *ridge_classifier(net, x, y))
    save_supernet(checkpoint, supernet.eval(), space, "quantized-exports-test")


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A run with a real supernet (seeded; its classifier fitted to the smallest subnet's features, so that
    subnet classifies digits) and fronts written by hand: on ``dev`` and ``dev2``, the smallest subnet in fp32
    and in int8 (faster, a little less accurate)."""
    path = tmp_path_factory.mktemp("quantized-exports") / "run"
    checkpoint = path / "checkpoints" / "supernet.pt"
    checkpoint.parent.mkdir(parents=True)
    space = get_space(SPACE_NAME)
    torch.manual_seed(0)
    supernet = build_supernet(space).eval()
    save_supernet(checkpoint, supernet, space, "quantized-exports-test")
    arch = smallest(space)
    _fit_classifier(supernet, replace(_member("dev", arch, None, 0.5, 2.0), checkpoint=str(checkpoint)), checkpoint,
                    space)
    store = SQLiteFrontStore(search_paths(path).fronts)
    with store.transaction():
        store.write_front("dev", [_member("dev", arch, None, 0.50, 2.0), _member("dev", arch, MIXED, 0.495, 1.5),
                                  _member("dev", arch, INT8, 0.49, 1.0)])
        store.write_front("dev2", [_member("dev2", arch, None, 0.50, 6.0), _member("dev2", arch, INT8, 0.49, 3.0)])
        for key, value in (("space", SPACE_NAME), ("devices", ["dev", "dev2"]), ("dataset", DATASET),
                           ("data_seed", 0), ("bn_images", 32)):
            store.set_meta(key, value)
    store.close()
    return path


def _query(run, budget_ms, *extra):
    return ["query", str(run), "--device", "dev", "--max-latency-ms", str(budget_ms), *map(str, extra)]


@pytest.fixture(scope="module")
def int8_export(run, tmp_path_factory):
    """``nas query --max-latency-ms 1 --json --export FILE.onnx``: the int8 member, its file and the result."""
    out = tmp_path_factory.mktemp("int8") / "net.onnx"
    stdout = io.StringIO()
    with contextlib.redirect_stdout(stdout):
        assert main(_query(run, 1.0, "--json", "--export", out)) == 0
    return out, json.loads(stdout.getvalue())


def test_the_query_names_the_policy_and_precision(run, capsys):
    fast, accurate = query_front(run, "dev", 1.0), query_front(run, "dev", 2.0)
    assert (fast.policy, fast.precision, accurate.policy, accurate.precision) == (INT8, "int8", None, "fp32")
    assert fast.arch_id == accurate.arch_id and fast.member_id == f"{fast.arch_id}+{INT8}"
    assert main(_query(run, 1.0)) == 0
    assert f"precision    int8 (policy {INT8})" in capsys.readouterr().out
    assert main(_query(run, 2.0, "--json")) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["policy"] is None and result["precision"] == "fp32" and result["member_id"] == fast.arch_id


def test_an_int8_member_exports_the_quantised_model(run, int8_export):
    path, result = int8_export
    assert result["policy"] == INT8 and result["precision"] == "int8"
    export = result["export"]
    assert export["quantized"] and export["format"] == "onnx" and export["path"] == str(path)
    assert export["policy"] == INT8 and export["calibration_method"] == "minmax"
    assert export["fake_quant_check"]["within"] and export["batch_norm"] == "recalibrated"
    model = onnx.load(str(path))
    ops = {n.op_type for n in model.graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops
    props = {p.key: p.value for p in model.metadata_props}
    assert props["hwnas_format"] == QDQ_FORMAT and props["precision_policy"] == INT8
    assert props["policy"] == INT8 and props["precision"] == "int8" and props["calibration_method"] == "minmax"
    member = query_front(run, "dev", 1.0)
    assert props["member_id"] == member.member_id and props["arch_id"] == member.arch_id
    # Its latency on every device is that of the int8 member there, not the fp32 one of the same arch.
    assert json.loads(props["latency_ms"]) == {"dev": 1.0, "dev2": 3.0}
    assert json.loads(props["val_accuracy"]) == pytest.approx(export["val_accuracy"]["quantized"])
    assert "recalibrated on 32 training images" in props["batch_norm"]
    # The summary `nas query --export` prints without --json.
    from nas.commands.query import _print_member

    text = io.StringIO()
    _print_member(member, result, text)
    assert f"ONNX QDQ, int8 {INT8}, calibration minmax" in text.getvalue() and "quantised    " in text.getvalue()


def test_the_int8_model_classifies_as_the_fp32_subnet_does(run, int8_export):
    """On the run's test images, the file (run here in ONNX Runtime) has the top-1 the export reports, within a
    few points of the fp32 subnet as the fp32 export extracts it (PyTorch), both well above chance."""
    from nas.query import _resized

    path, result = int8_export
    store = open_fronts(run)
    member = query_front(run, "dev", 1.0, store=store)
    calibration = run_calibration(store, member.arch.resolution)
    data = calibration.data
    x, labels = data.splits["test"]
    pixels = _resized(x, member.arch.resolution)
    mean = torch.tensor(calibration.normalization.mean).view(1, 3, 1, 1)
    std = torch.tensor(calibration.normalization.std).view(1, 3, 1, 1)
    with torch.no_grad():
        fp32 = subnet_of(member, calibration)((pixels - mean) / std).numpy()
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    int8 = session.run(None, {"image": pixels.numpy()})[0]
    fp32_top1, int8_top1 = (float(np.mean(v.argmax(1) == labels.numpy())) for v in (fp32, int8))
    reported = result["export"]["test_accuracy"]
    assert int8_top1 == pytest.approx(reported["quantized"]) and fp32_top1 == pytest.approx(reported["fp32"], abs=0.01)
    assert abs(int8_top1 - fp32_top1) <= 0.05 and min(int8_top1, fp32_top1) > 0.25


def test_an_int8_member_to_pt_or_pt2_is_one_line(run, tmp_path, capsys):
    for suffix in (".pt", ".pt2"):
        out = tmp_path / f"net{suffix}"
        fails_in_one_line(capsys, _query(run, 1.0, "--export", out), "only .onnx carries int8", "FILE.onnx",
                          INT8)
        assert not out.exists()


def test_the_run_s_quantization_method_and_missing_data(run, tmp_path):
    store = open_fronts(run)
    member = query_front(run, "dev", 1.0, store=store)
    calibration = run_calibration(store, member.arch.resolution)
    with pytest.raises(UsageError, match="quantization method 'kl'.*allowed: minmax"):
        export_member(member, tmp_path / "x.onnx", calibration=calibration, store=_WithMeta(store, "kl"))
    with pytest.raises(UsageError, match="records no dataset"):
        export_member(member, tmp_path / "x.onnx", store=store)
    assert not (tmp_path / "x.onnx").exists()


def test_the_fp32_member_of_the_same_arch_exports_as_before(run, tmp_path):
    out = tmp_path / "net.onnx"
    assert main(_query(run, 2.0, "--export", out)) == 0
    props = {p.key: p.value for p in onnx.load(str(out)).metadata_props}
    assert props["hwnas_format"] == "hwnas-subnet-onnx-1" and "precision_policy" not in props
    assert json.loads(props["latency_ms"]) == {"dev": 2.0, "dev2": 6.0}
    assert "QuantizeLinear" not in {n.op_type for n in onnx.load(str(out)).graph.node}


class _WithMeta:
    """The run's store with its ``quantization_method`` meta replaced."""

    def __init__(self, store, method: str) -> None:
        self._store, self._method = store, method

    def get_meta(self, key, default=None):
        return self._method if key == "quantization_method" else self._store.get_meta(key, default)

    def __getattr__(self, name):
        return getattr(self._store, name)


def test_a_mixed_member_is_queried_and_exported(run, tmp_path, int8_export):
    member = query_front(run, "dev", 1.6)
    assert (member.policy, member.precision) == (MIXED, "mixed")
    out = tmp_path / "mixed.onnx"
    stdout = io.StringIO()
    with contextlib.redirect_stdout(stdout):
        assert main(_query(run, 1.6, "--json", "--export", out)) == 0
    result = json.loads(stdout.getvalue())
    assert result["precision"] == "mixed" and result["export"]["quantized"]
    assert result["export"]["fake_quant_check"]["within"]
    props = {p.key: p.value for p in onnx.load(str(out)).metadata_props}
    assert props["precision_policy"] == MIXED and props["precision"] == "mixed"
    # The fp32 groups stay float: fewer quantise nodes than in the int8 model of the same arch, but some.
    def quantize_nodes(path):
        return sum(n.op_type == "QuantizeLinear" for n in onnx.load(str(path)).graph.node)

    assert 0 < quantize_nodes(out) < quantize_nodes(int8_export[0])
