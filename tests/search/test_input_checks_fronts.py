"""Bad input around a run's fronts, plots, queries and Once-for-All imports: one line, exit status 2, nothing
written (audit items A2-A4, C11-C13, D6, F and a policy that is not one)."""

from __future__ import annotations

import json
import shutil
import sqlite3

import pytest

from nas.fronts import SQLiteFrontStore, check_front_store
from nas.search import run_search
from nas.search_config import SearchConfig
from search_spaces import DamagedFileError
from tests.cli_helpers import fails_in_one_line

from .conftest import ToyObjectives, stub_counts


@pytest.fixture(scope="module")
def searched(tmp_path_factory):
    path = tmp_path_factory.mktemp("searched")
    toy = ToyObjectives()
    config = SearchConfig.parse({"n_trials": 30, "batch_size": 30, "population_size": 20}, ["dev"])
    run_search(config, path, toy.accuracy, {"dev": toy.latency()}, space="ofa_mbv3_cifar", counts_fn=stub_counts)
    return path


@pytest.fixture
def run(searched, tmp_path):
    """A copy of the searched run, with a supernet file standing in for the trained one."""
    copy = tmp_path / "run"
    shutil.copytree(searched, copy)
    (copy / "checkpoints").mkdir(exist_ok=True)
    (copy / "checkpoints" / "supernet.pt").write_bytes(b"the run's supernet")
    return copy


def _snapshot(root):
    return {p.relative_to(root): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _fronts(run):
    return run / "fronts" / "fronts.sqlite"


def _query(run, *extra):
    return ["query", run, "--device", "dev", "--max-latency-ms", "1000", *extra]


# --- A3 / A4: outputs never land on what the run keeps ------------------------------------------------------


@pytest.mark.parametrize("inside", ["fronts/fronts.png", "checkpoints/plot.png", "search/x.png", "fronts"])
def test_plot_out_inside_the_runs_results_is_refused(run, capsys, inside):
    before = _snapshot(run)
    out = run / inside if inside.endswith(".png") else run / inside / "new.png"
    fails_in_one_line(capsys, ["plot", run, "--out", out], "--out", "would write into")
    assert _snapshot(run) == before


def test_plot_over_the_front_store_is_refused(run, capsys):
    before = _snapshot(run)
    fails_in_one_line(capsys, ["plot", run, "--out", _fronts(run)], "--out", "must end in .png")
    assert _snapshot(run) == before


@pytest.mark.parametrize("name", ["x.svg", "x.txt", "noext", "x.pdf"])
def test_plot_out_must_be_png(run, tmp_path, capsys, name):
    fails_in_one_line(capsys, ["plot", run, "--out", tmp_path / name], "--out", name, "must end in .png")
    assert not (tmp_path / name).exists()


@pytest.mark.parametrize("inside", ["checkpoints/supernet.pt", "fronts/best.onnx", "search/x.pt2",
                                    "fronts/../checkpoints/new.pt"])
def test_query_export_inside_the_runs_results_is_refused(run, capsys, inside):
    before = _snapshot(run)
    fails_in_one_line(capsys, _query(run, "--export", run / inside), "--export", "would write into")
    assert _snapshot(run) == before


@pytest.mark.parametrize("argv", [
    lambda run: _query(run, "--export", run / "exports" / "dev-knee.onnx"),
    lambda run: _query(run, "--export", run / "exports" / "other-device-knee.onnx"),
    lambda run: ["plot", run, "--out", run / "plots" / "fronts.png"],
])
def test_outputs_under_the_names_nas_run_gives_its_own_files_are_refused(run, capsys, argv):
    """``nas run`` tells its plot and export stages done by the files' age: another file under those names
    would stand for the knee (or the front) from then on."""
    before = _snapshot(run)
    fails_in_one_line(capsys, argv(run), "is the name `nas run` gives its own")
    assert _snapshot(run) == before
    out = run / "exports" / "dev-small.onnx"  # any other name in the output folders is the user's
    from nas.query import check_outside_run_results

    assert check_outside_run_results(out, run, "--export") == out


# --- C11 / D6: damaged or empty front stores ----------------------------------------------------------------


@pytest.mark.parametrize("command", ["fronts", "query", "plot"])
def test_an_empty_store_is_damaged_and_stays_empty(run, capsys, command):
    _fronts(run).write_bytes(b"")
    argv = {"fronts": ["fronts", run], "query": _query(run), "plot": ["plot", run]}[command]
    fails_in_one_line(capsys, argv, str(_fronts(run)), "an empty file", "move it away", "nas search")
    assert _fronts(run).read_bytes() == b""


@pytest.mark.parametrize("damage", ["garbage", "truncated"])
def test_a_damaged_store_is_one_line_naming_it(run, capsys, damage):
    path = _fronts(run)
    data = path.read_bytes()
    path.write_bytes(b"not a database " * 100 if damage == "garbage" else data[: len(data) // 2])
    before = path.read_bytes()
    fails_in_one_line(capsys, ["fronts", run], str(path), "damaged", "move it away")
    fails_in_one_line(capsys, _query(run), str(path), "damaged")
    assert path.read_bytes() == before


def test_a_search_finds_a_damaged_store_before_its_trials(run):
    path = _fronts(run)
    path.write_bytes(b"not a database " * 100)
    shutil.rmtree(run / "search")
    toy = ToyObjectives()
    config = SearchConfig.parse({"n_trials": 30, "batch_size": 30, "population_size": 20}, ["dev"])
    calls = []

    def accuracy(archs):
        calls.append(len(archs))
        return toy.accuracy(archs)

    with pytest.raises(DamagedFileError, match=r"front store .*fronts\.sqlite.*move it away"):
        run_search(config, run, accuracy, {"dev": toy.latency()}, space="ofa_mbv3_cifar", counts_fn=stub_counts)
    assert calls == [] and not (run / "search" / "study.journal").exists()
    assert path.read_bytes() == b"not a database " * 100


def test_check_front_store_accepts_no_store_and_reads_a_good_one(run, tmp_path):
    check_front_store(tmp_path / "none.sqlite")
    check_front_store(_fronts(run))
    assert not (tmp_path / "none.sqlite").exists()


def test_opening_a_store_that_should_exist_writes_nothing(tmp_path):
    empty = tmp_path / "empty.sqlite"
    empty.write_bytes(b"")
    with pytest.raises(DamagedFileError, match="an empty file"):
        SQLiteFrontStore(empty, create=False)
    other = tmp_path / "other.sqlite"  # a database, but not a front store
    sqlite3.connect(other).execute("CREATE TABLE t (x)").connection.commit()
    before = other.read_bytes()
    with pytest.raises(DamagedFileError, match="no front store format"):
        SQLiteFrontStore(other, create=False)
    assert other.read_bytes() == before


# --- C12 / G: rows that are not what was written ------------------------------------------------------------


@pytest.mark.parametrize(("column", "value", "needle"), [("macs", "'x'", "macs is 'x'"),
                                                          ("params", "-1", "params is -1"),
                                                          ("val_accuracy", "'high'", "val_accuracy is 'high'"),
                                                          ("predicted_latency_ms", "'fast'", "predicted_latency_ms"),
                                                          ("policy", "'p:zz'", "p:zz")])
def test_a_bad_row_is_one_line_naming_the_column(run, capsys, column, value, needle):
    path = _fronts(run)
    with sqlite3.connect(path) as conn:
        conn.execute(f"UPDATE members SET {column} = {value} WHERE rowid = (SELECT min(rowid) FROM members)")
    before = path.read_bytes()
    fails_in_one_line(capsys, ["fronts", run], str(path), needle)
    fails_in_one_line(capsys, _query(run), str(path), needle)
    assert path.read_bytes() == before


# --- F: messages --------------------------------------------------------------------------------------------


def test_query_of_a_plain_file_says_it_is_not_a_run_folder(tmp_path, capsys):
    afile = tmp_path / "afile"
    afile.write_text("x")
    fails_in_one_line(capsys, _query(afile), "afile", "is a file, not a run folder")
    fails_in_one_line(capsys, ["fronts", afile], "is a file, not a run folder")


def test_import_of_a_folder_says_it_is_a_folder(tmp_path, capsys):
    folder = tmp_path / "zoo"
    folder.mkdir()
    fails_in_one_line(capsys, ["import", "ofa-supernet", folder, "--space", "ofa_mbv3_w1.0", "--run-dir",
                               tmp_path / "r"], str(folder), "is a folder")
    fails_in_one_line(capsys, ["import", "ofa-accuracy-predictor", folder, "--run-dir", tmp_path / "r"],
                      "is a folder")
    assert not (tmp_path / "r").exists()


def test_torch_load_reasons_are_cut_at_a_word():
    from nas.ofa_zoo import _short_reason

    long = "Weights only load failed. " + "This file can still be loaded, " * 20
    assert _short_reason(ValueError(long)) == "Weights only load failed."
    one = ValueError("word " * 60)
    cut = _short_reason(one)
    assert cut.endswith("...") and len(cut) <= 164 and cut[:-3].split()[-1] == "word"
    assert _short_reason(ValueError("")) == "ValueError"
    # A weights-only refusal: the unpickler's reason, not the advice to load the file unsafely.
    refusal = ("Weights only load failed. Re-running `torch.load` with `weights_only` set to `False` will likely "
               "succeed.\n\tWeightsUnpickler error: Unsupported global: GLOBAL os.system was not an allowed "
               "global by default. Please use `torch.serialization.add_safe_globals`\n\nCheck the documentation")
    assert _short_reason(ValueError(refusal)) == \
        "Unsupported global: GLOBAL os.system was not an allowed global by default."


def test_import_of_a_garbage_file_gives_a_whole_reason(tmp_path, capsys):
    bad = tmp_path / "bad.pth"
    bad.write_bytes(b"garbage " * 200)
    err = fails_in_one_line(capsys, ["import", "ofa-supernet", bad, "--space", "ofa_mbv3_w1.0", "--run-dir",
                                     tmp_path / "r"], "not a readable")
    reason = err.split("weights_only failed: ", 1)[1].rstrip(")\n")
    assert len(reason) <= 163 and "weights_only` set to `False`" not in reason, reason


def test_quantize_image_counts_name_their_options():
    from nas.errors import UsageError
    from nas.quantize import calibration_images
    from nas.quantize._flow import _check_max_images

    with pytest.raises(UsageError, match="--calibration-images"):
        calibration_images(None, 32, 0)
    with pytest.raises(UsageError, match="--max-images"):
        _check_max_images(0)


# --- A2 / C13: the Once-for-All accuracy predictor import ---------------------------------------------------


def test_import_predictor_refuses_to_replace_a_fitted_one(tmp_path, capsys):
    run = tmp_path / "r"
    (run / "search").mkdir(parents=True)
    fitted = run / "search" / "accuracy_predictor.json"
    fitted.write_text(json.dumps({"format": "hwnas-accuracy-mlp-1", "weights": []}))
    before = _snapshot(run)
    source = tmp_path / "acc_predictor.pth"
    source.write_bytes(b"never read")
    fails_in_one_line(capsys, ["import", "ofa-accuracy-predictor", source, "--run-dir", run],
                      "already holds an accuracy predictor not imported", "another --run-dir")
    assert _snapshot(run) == before


def test_import_predictor_with_a_damaged_import_record(tmp_path, capsys):
    run = tmp_path / "r"
    run.mkdir()
    (run / "import.json").write_text("{bad")
    source = tmp_path / "acc_predictor.pth"
    source.write_bytes(b"never read")
    fails_in_one_line(capsys, ["import", "ofa-accuracy-predictor", source, "--run-dir", run],
                      str(run / "import.json"), "damaged", "--space")
    assert not (run / "search").exists()
