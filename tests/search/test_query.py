from __future__ import annotations

import io
import json

import numpy as np
import pandas as pd
import pytest
import torch

from nas.cli import main
from nas.errors import UsageError
from nas.query import export_member, query_front
from nas.search import hardware_in_the_loop, run_search
from nas.search_config import SearchConfig
from search_spaces import get_space
from supernets import build
from tests.cli_helpers import fails_in_one_line

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

    from nas.query import Normalization

    member = query_front(run, "dev", 1e9)
    torch.manual_seed(0)
    model = build(get_space("ofa_mbv3_cifar"), member.arch).eval()
    summary = export_member(member, tmp_path / "net.onnx", model=model)
    assert summary["max_abs_diff"] <= 1e-4 and summary["output_scale"] < 10
    # The file takes RGB in [0, 1] and normalises inside (a run without data: ImageNet's mean and std).
    x = torch.rand(3, 3, member.arch.resolution, member.arch.resolution)
    imagenet = Normalization.imagenet()
    mean, std = torch.tensor(imagenet.mean).view(1, 3, 1, 1), torch.tensor(imagenet.std).view(1, 3, 1, 1)
    session = ort.InferenceSession(str(tmp_path / "net.onnx"), providers=["CPUExecutionProvider"])
    with torch.no_grad():
        expected = model((x - mean) / std).numpy()
    assert np.abs(session.run(None, {"image": x.numpy()})[0] - expected).max() <= 1e-4 * max(1, np.abs(expected).max())
    export_member(member, tmp_path / "net.pt", model=model)
    data = torch.load(tmp_path / "net.pt", weights_only=True)
    rebuilt = build(get_space("ofa_mbv3_cifar"), member.arch)
    rebuilt.load_state_dict(data["state_dict"])
    assert data["arch_id"] == member.arch_id and data["mean"] == list(imagenet.mean)
    with pytest.raises(UsageError, match=r"\.onnx, \.pt2 or \.pt"):
        export_member(member, tmp_path / "net.tflite", model=model)
    assert not (tmp_path / "net.tflite").exists()


def test_cli_query_and_plot_exit_codes(run, tmp_path, capsys):
    assert main(["query", str(run), "--device", "dev", "--max-latency-ms", "1000", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["device"] == "dev" and out["latency_ms"] <= 1000 and "arch_string" in out
    assert out["ofa_config"]["d"] == list(query_front(run, "dev", 1000).arch.depths)
    assert main(["query", str(run), "--device", "dev", "--max-latency-ms", "1000"]) == 0
    assert "arch id" in capsys.readouterr().out
    assert main(["query", str(run), "--device", "dev", "--max-latency-ms", "0.001"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "front spans" in err and "Traceback" not in err
    assert main(["query", str(run), "--device", "nope", "--max-latency-ms", "5"]) == 2
    assert main(["query", str(tmp_path / "missing"), "--device", "dev", "--max-latency-ms", "5"]) == 2
    assert main(["query", str(run), "--device", "dev", "--max-latency-ms", "1000", "--export", "x.txt"]) == 2
    assert ".onnx, .pt2 or .pt" in capsys.readouterr().err
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


def test_query_csv_is_one_row_and_refuses_json_beside_it(run, capsys):
    from nas.tables import FRONT_COLUMNS

    assert main(["query", str(run), "--device", "dev", "--max-latency-ms", "1000", "--csv"]) == 0
    table = pd.read_csv(io.StringIO(capsys.readouterr().out))
    best = query_front(run, "dev", 1000)
    assert list(table.columns) == list(FRONT_COLUMNS) and len(table) == 1
    assert table.loc[0, "arch_id"] == best.arch_id and table.loc[0, "latency_ms"] == pytest.approx(best.latency_ms)
    fails_in_one_line(capsys, ["query", run, "--device", "dev", "--max-latency-ms", "1000", "--csv", "--json"],
                      "--csv and --json")


def test_nas_fronts_as_table_csv_and_json(run, capsys):
    from nas.query import open_fronts
    from nas.tables import FRONT_COLUMNS, fronts_frame

    store = open_fronts(run)
    fronts = {d: store.front(d) for d in ("dev", "dev2")}
    assert main(["fronts", str(run), "--csv"]) == 0
    table = pd.read_csv(io.StringIO(capsys.readouterr().out))
    assert list(table.columns) == list(FRONT_COLUMNS)
    assert len(table) == sum(len(f) for f in fronts.values())
    assert list(table["arch_id"]) == [m.arch_id for d in ("dev", "dev2") for m in fronts[d]]
    assert np.allclose(table["latency_ms"], [m.latency_ms for d in ("dev", "dev2") for m in fronts[d]])
    assert table["test_accuracy"].isna().all()  # the toy search ran no test evaluation
    assert main(["fronts", str(run), "--device", "dev2", "--json"]) == 0
    records = json.loads(capsys.readouterr().out)  # the whole of stdout is the JSON list
    assert [r["arch_id"] for r in records] == [m.arch_id for m in fronts["dev2"]]
    assert all(r["device"] == "dev2" and r["measured_latency_ms"] is None for r in records)
    assert main(["fronts", str(run)]) == 0
    text = capsys.readouterr().out
    assert all(m.arch_id in text for m in fronts["dev"]) and "members" in text
    frame = fronts_frame(store, ["dev"])
    assert len(frame) == len(fronts["dev"]) and str(frame["trial_number"].dtype) == "Int64"
    fails_in_one_line(capsys, ["fronts", run, "--csv", "--json"], "--csv and --json")
    fails_in_one_line(capsys, ["fronts", run, "--device", "phone"], "phone", "devices with a front: dev, dev2")
    fails_in_one_line(capsys, ["fronts", run.parent / "missing-run"], "no run folder")


def test_trials_frame_has_every_finished_trial(run):
    from nas.tables import trials_frame

    frame = trials_frame(run)
    assert len(frame) == 60 and list(frame["trial_number"]) == list(range(60))
    assert {"arch_string", "arch_id", "accuracy", "latency_ms:dev", "latency_ms:dev2"} <= set(frame.columns)
    assert (frame["latency_ms:dev2"] > frame["latency_ms:dev"]).all()  # dev2 is the 3x slower device
