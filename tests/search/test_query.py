from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from nas.cli import main
from nas.errors import UsageError
from nas.query import export_member, query_front
from nas.search import hardware_in_the_loop, run_search
from nas.search_config import SearchConfig
from search_spaces import get_space
from supernets import build

from .conftest import ToyObjectives, stub_counts


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    path = tmp_path_factory.mktemp("run")
    toy = ToyObjectives()
    config = SearchConfig.parse({"n_trials": 60, "batch_size": 30, "population_size": 20}, ["dev", "dev2"])
    run_search(config, path, toy.accuracy, {"dev": toy.latency(), "dev2": toy.latency(3.0)},
               space="ofa_mbv3_cifar", counts_fn=stub_counts)
    return path


def test_query_honours_budget_and_min_accuracy(run):
    from nas.query import open_fronts

    front = open_fronts(run).front("dev")
    for member in front:
        best = query_front(run, "dev", member.latency_ms)
        assert best.arch_id == member.arch_id  # the front is sorted, so the member at the budget wins
    mid = front[len(front) // 2]
    best = query_front(run, "dev", mid.latency_ms + 1e-9, min_accuracy=mid.val_accuracy)
    assert best.latency_ms <= mid.latency_ms + 1e-9 and best.val_accuracy >= mid.val_accuracy
    with pytest.raises(UsageError, match=r"front spans .* ms \(fastest"):
        query_front(run, "dev", front[0].latency_ms * 0.5)
    with pytest.raises(UsageError, match="reaches accuracy"):
        query_front(run, "dev", front[0].latency_ms, min_accuracy=front[-1].val_accuracy)
    with pytest.raises(UsageError, match="devices with a front: dev, dev2"):
        query_front(run, "phone", 10.0)


def test_hardware_in_the_loop_rebuilds_front_on_measured_latency(run, tmp_path):
    import shutil

    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    from nas.query import open_fronts

    before = open_fronts(copy).front("dev")
    # The device is twice as slow as predicted for all but the most accurate member, which is 10x slower.
    def measure(archs):
        out = np.array([2.0 * m.predicted_latency_ms for m in before])
        out[-1] = 10.0 * before[-1].predicted_latency_ms
        return out

    report = hardware_in_the_loop(copy, {"dev": measure})["dev"]
    # Error relative to the measurement: 1/2 for the 2x members, 9/10 for the 10x one.
    expected_mape = np.mean([0.5] * (len(before) - 1) + [0.9])
    assert report.members_before == len(before) and report.mape == pytest.approx(expected_mape)
    after = open_fronts(copy).front("dev")
    assert all(m.measured_latency_ms is not None for m in after)
    assert len(open_fronts(copy).measurements("dev")) == len(before)
    assert (copy / "fronts" / "hil.json").exists()
    if len(before) > 1 and before[-1].val_accuracy == max(m.val_accuracy for m in before):
        assert after[-1].latency_ms == pytest.approx(10.0 * before[-1].predicted_latency_ms)


def test_exported_onnx_equals_pytorch(run, tmp_path):
    import onnxruntime as ort

    member = query_front(run, "dev", 1e9)
    torch.manual_seed(0)
    model = build(get_space("ofa_mbv3_cifar"), member.arch).eval()
    summary = export_member(member, tmp_path / "net.onnx", model=model)
    assert summary["max_abs_diff"] <= 1e-4 and summary["output_scale"] < 10
    x = torch.randn(3, 3, member.arch.resolution, member.arch.resolution)
    session = ort.InferenceSession(str(tmp_path / "net.onnx"), providers=["CPUExecutionProvider"])
    with torch.no_grad():
        expected = model(x).numpy()
    assert np.abs(session.run(None, {"input": x.numpy()})[0] - expected).max() <= 1e-4
    export_member(member, tmp_path / "net.pt", model=model)
    data = torch.load(tmp_path / "net.pt", weights_only=True)
    rebuilt = build(get_space("ofa_mbv3_cifar"), member.arch)
    rebuilt.load_state_dict(data["state_dict"])
    assert data["arch_id"] == member.arch_id
    with pytest.raises(UsageError, match=".onnx or .pt"):
        export_member(member, tmp_path / "net.tflite", model=model)


def test_cli_query_and_plot_exit_codes(run, tmp_path, capsys):
    assert main(["query", str(run), "--device", "dev", "--max-latency-ms", "1000", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["device"] == "dev" and out["latency_ms"] <= 1000 and "arch_string" in out
    assert main(["query", str(run), "--device", "dev", "--max-latency-ms", "1000"]) == 0
    assert "arch id" in capsys.readouterr().out
    assert main(["query", str(run), "--device", "dev", "--max-latency-ms", "0.001"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "front spans" in err and "Traceback" not in err
    assert main(["query", str(run), "--device", "nope", "--max-latency-ms", "5"]) == 2
    assert main(["query", str(tmp_path / "missing"), "--device", "dev", "--max-latency-ms", "5"]) == 2
    assert main(["query", str(run), "--device", "dev", "--max-latency-ms", "1000", "--export", "x.txt"]) == 2
    # The toy run has no supernet checkpoint to take weights from.
    assert main(["query", str(run), "--device", "dev", "--max-latency-ms", "1000", "--export",
                 str(tmp_path / "x.onnx")]) == 2
    assert "checkpoint" in capsys.readouterr().err
    assert main(["plot", str(run), "--out", str(tmp_path / "fronts.png")]) == 0
    assert (tmp_path / "fronts.png").stat().st_size > 10_000
    assert main(["plot", str(tmp_path / "missing")]) == 2


def test_a_copied_run_takes_weights_from_its_own_checkpoint(tmp_path):
    import shutil

    original = tmp_path / "original"
    (original / "checkpoints").mkdir(parents=True)
    (original / "checkpoints" / "supernet.pt").write_bytes(b"placeholder")
    toy = ToyObjectives()
    config = SearchConfig.parse({"n_trials": 12, "batch_size": 6, "population_size": 6}, ["dev"])
    run_search(config, original, toy.accuracy, {"dev": toy.latency()}, space="ofa_mbv3_cifar",
               counts_fn=stub_counts, checkpoint=str(original / "checkpoints" / "supernet.pt"))
    copy = tmp_path / "copy"
    shutil.copytree(original, copy)
    shutil.rmtree(original)
    member = query_front(copy, "dev", 1e9)
    assert member.checkpoint == str(copy / "checkpoints" / "supernet.pt")
