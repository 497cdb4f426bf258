"""Damaged files, unwritable paths and out-of-range input end in one line on stderr and exit status 2."""

from __future__ import annotations

import json
import shutil
import sqlite3

import pytest

from nas.cli import main
from nas.search import run_search
from nas.search_config import SearchConfig
from search_spaces import get_space, largest, to_ofa_config
from tests.cli_helpers import fails_in_one_line

from .search.conftest import SPACE_NAME, ToyObjectives, stub_counts


@pytest.fixture(scope="module")
def toy_run(tmp_path_factory):
    """A searched run whose members take their weights from ``checkpoints/supernet.pt`` (a placeholder)."""
    path = tmp_path_factory.mktemp("run")
    checkpoint = path / "checkpoints" / "supernet.pt"
    checkpoint.parent.mkdir()
    checkpoint.write_bytes(b"placeholder")
    toy = ToyObjectives()
    config = SearchConfig.parse({"n_trials": 8, "batch_size": 8, "population_size": 8}, ["dev"])
    run_search(config, path, toy.accuracy, {"dev": toy.latency()}, space=SPACE_NAME, counts_fn=stub_counts,
               checkpoint=str(checkpoint))
    return path


@pytest.fixture
def run(toy_run, tmp_path):
    copy = tmp_path / "run"
    shutil.copytree(toy_run, copy)
    return copy


def _query(run, *extra):
    return ["query", run, "--device", "dev", "--max-latency-ms", "1e9", *extra]


def _bad_row(fronts):
    with sqlite3.connect(fronts) as conn:
        conn.execute("UPDATE members SET arch_json = '{\"space\": trunc'")


@pytest.mark.parametrize("damage", ["supernet", "fronts-truncated", "fronts-random", "fronts-bad-row", "table",
                                    "predictor", "device"])
def test_damaged_files_name_the_file(damage, run, tmp_path, capsys):
    """Issue 11, item 7: every reader of a file the project wrote names it when it is damaged."""
    home = tmp_path / "home"
    fronts = run / "fronts" / "fronts.sqlite"
    if damage == "supernet":  # a truncated supernet.pt, on the export path and on the search's
        checkpoint = run / "checkpoints" / "supernet.pt"
        checkpoint.write_bytes(b"PK\x03\x04 truncated")
        # (The store keeps the path of the original run's checkpoint, also a placeholder.)
        fails_in_one_line(capsys, _query(run, "--export", tmp_path / "net.pt"), "checkpoints/supernet.pt",
                           "corrupted or unreadable")
        from nas.accuracy import DirectEvaluator, SupernetAccuracy
        from nas.errors import UsageError

        evaluator = DirectEvaluator(SupernetAccuracy(str(checkpoint), dict), workers=2)
        with pytest.raises(UsageError, match="corrupted or unreadable"):  # named before any Ray actor starts
            evaluator.evaluate([largest(get_space(SPACE_NAME))])
        return
    if damage.startswith("fronts"):
        if damage == "fronts-truncated":
            fronts.write_bytes(fronts.read_bytes()[: fronts.stat().st_size // 2])
        elif damage == "fronts-random":
            fronts.write_bytes(bytes(range(256)) * 20)
        else:
            _bad_row(fronts)
        for argv in (_query(run), ["plot", run, "--out", tmp_path / "fronts.png"]):
            fails_in_one_line(capsys, argv, str(fronts), "damaged", "nas search")
        return
    from latency_predictors import Device, DeviceStore

    store = DeviceStore(home)
    device = store.save(Device(id="local-cpu-1t-torch", backend="torch"))
    if damage == "table":
        path = store.table_path(device.id, SPACE_NAME)
        path.parent.mkdir(parents=True)
        path.write_text('{"format": "hwnas-latency-table", "version": 1, "entries": {"stem-')
        argv = ["latency", "build", "--space", SPACE_NAME, "--device", device.id, "--quiet", "--home", home]
    elif damage == "predictor":
        path = store.predictor_dir(device.id, SPACE_NAME) / "ridge.json"
        path.parent.mkdir(parents=True)
        path.write_text('{"format": "hwnas-latency-predictor", "version": 1, "kind": "ridge", "params": {"me')
        argv = ["latency", "eval", "--space", SPACE_NAME, "--device", device.id, "--home", home]
    else:
        path = store.device_dir(device.id) / "device.json"
        path.write_text('{"format": "hwnas-dev')
        argv = ["devices", "--home", home]
    fails_in_one_line(capsys, argv, str(path), "damaged")
    if damage != "device":  # the search loads the same files
        from nas.search_stage import load_latency_predictors
        from search_spaces import DamagedFileError

        with pytest.raises(DamagedFileError, match="damaged"):
            load_latency_predictors(get_space(SPACE_NAME), [device.id], home)


def test_unwritable_outputs_and_impossible_run_names(run, tmp_path, capsys, monkeypatch):
    """Issue 11, item 8: OS errors on the paths a user gives are one line naming the path."""
    folder = tmp_path / "folder.pt"
    folder.mkdir()
    a_file = tmp_path / "file"
    a_file.write_text("not a folder")
    fails_in_one_line(capsys, _query(run, "--export", folder), str(folder), "folder")
    fails_in_one_line(capsys, _query(run, "--export", a_file / "net.onnx"), str(a_file / "net.onnx"))
    fails_in_one_line(capsys, ["plot", run, "--out", a_file / "fronts.png"], str(a_file / "fronts.png"))
    fails_in_one_line(capsys, ["plot", run, "--out", folder], str(folder))
    from nas.errors import UsageError
    from nas.io import atomic_write_bytes

    with pytest.raises(UsageError, match="cannot write"):  # the writer itself, after the work is done
        atomic_write_bytes(folder, b"x")
    monkeypatch.chdir(tmp_path)
    for name, needle in (('"a\\0b"', "a plain folder name"), ("x" * 300, "bytes")):
        config = tmp_path / "bad.yaml"
        config.write_text(f"name: {name}\nspace: {SPACE_NAME}\ndevices: [dev]\n")
        fails_in_one_line(capsys, ["search", config], needle)
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())


@pytest.mark.parametrize("change", [
    {"ks": "x", "e": 1, "d": None},
    {"r": float("nan")},
    {"r": 32.5},
    {"r": "x"},
    {"ks": ["x"] * 20},
    {"d": [2.5, 2, 2, 2, 2]},
])
def test_malformed_ofa_config(change, capsys):
    """Issue 11, item 9: a malformed ``--ofa-config`` names the bad field."""
    space = get_space(SPACE_NAME)
    config = {**to_ofa_config(space, largest(space)), **change}
    fails_in_one_line(capsys, ["arch", "info", SPACE_NAME, "--ofa-config", json.dumps(config)], "OFA config")


def test_devices_this_machine_cannot_measure_and_failed_imports_leave_nothing(tmp_path, capsys):
    """Issue 11, item 13 and issue 14, item 6: an accelerator no backend times, a CUDA GPU named with threads,
    and (on a machine without one) a CUDA GPU are refused in one line; a failed import registers nothing."""
    import torch

    home = tmp_path / "home"
    refused = {"local-gpu-1t-ort": "local-cpu-1t-ort", "local-cuda0-1t-torch": "local-cuda0-b1-torch"}
    if not torch.cuda.is_available():
        refused["local-cuda-b1-torch"] = "no CUDA GPU"
    for device, hint in refused.items():
        fails_in_one_line(capsys, ["latency", "build", "--space", SPACE_NAME, "--device", device, "--quiet",
                                    "--home", home], device, hint)
    fails_in_one_line(capsys, ["latency", "import-ofa", tmp_path / "missing", "--device", "note10",
                                "--home", home], "does not exist")
    assert main(["devices", "--json", "--home", str(home)]) == 0
    assert json.loads(capsys.readouterr().out)["devices"] == []


@pytest.mark.parametrize("value", ["95", "-5", "nan", "inf"])
def test_min_accuracy_is_a_fraction(value, run, capsys):
    """Issue 11, item 16: ``--min-accuracy`` must be finite and in [0, 1]."""
    err = fails_in_one_line(capsys, _query(run, "--min-accuracy", value), "--min-accuracy", "[0, 1]")
    assert ("percentage" in err) == (value == "95")


def test_a_retryable_stop_is_one_line_with_exit_status_1(tmp_path, capsys, monkeypatch):
    """A training that stopped (a worker died beyond its retries) is not bad input: one line, status 1."""
    import yaml

    import nas.training
    from nas.errors import RetryableError

    def stopped(config, run, **_options):
        raise RetryableError("the training worker died (SIGKILL); run the same command again to continue")

    monkeypatch.setattr(nas.training, "train", stopped)
    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump({"name": "t", "space": "ofa_mbv3_cifar", "run_dir": str(tmp_path / "run")}))
    assert main(["train", str(config)]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("nas: error: the training worker died") and "again" in err


def test_the_command_line_prints_warnings_in_one_line_and_puts_the_format_back(monkeypatch):
    import warnings

    from nas import cli

    before = warnings.formatwarning
    seen = []

    def handler(args):  # what a warning raised during the command is printed as
        seen.append(warnings.formatwarning("something to know", UserWarning, "/x/y.py", 12, "line()"))
        return 0

    parser = cli.build_parser()
    args = parser.parse_args(["spaces"])
    args.handler = handler
    monkeypatch.setattr(cli, "build_parser", lambda: parser)
    monkeypatch.setattr(parser, "parse_args", lambda argv=None: args)
    assert cli.main(["spaces"]) == 0
    assert seen == ["nas: warning: something to know\n"]
    assert warnings.formatwarning is before
