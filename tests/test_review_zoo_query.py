"""Importing Once-for-All's zoo, querying, plotting: damaged zoo files, a run's results kept with the supernet
they were measured on, the study a plot draws, budgets as the command line prints them."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from nas.cli import main
from nas.rundir import RunDir
from tests.cli_helpers import fails_in_one_line

REPO = Path(__file__).resolve().parents[1]
ZOO = Path(os.environ.get("HWNAS_OFA_ZOO_DIR", REPO.parent / "shared" / "data" / "ofa_zoo_format"))
SUPERNET_FILE = ZOO / "ofa_mbv3_d234_e346_k357_w1.0.pth"
PREDICTOR_FILE = ZOO / "acc_predictor_random.pth"

needs_zoo = pytest.mark.skipif(not SUPERNET_FILE.is_file(),
                               reason=f"Once-for-All zoo files not found at {ZOO} (set HWNAS_OFA_ZOO_DIR)")


def _zoo_state() -> dict:
    return torch.load(SUPERNET_FILE, map_location="cpu", weights_only=True)


# --- damaged zoo files ----------------------------------------------------------------------------------------


@needs_zoo
def test_a_zoo_supernet_with_non_finite_weights_is_refused(tmp_path, capsys):
    data = _zoo_state()
    data["state_dict"]["blocks.5.conv.depth_conv.bn.bn.running_var"][3] = float("nan")
    data["state_dict"]["classifier.linear.weight"][0, :4] = float("inf")
    damaged = tmp_path / "damaged.pth"
    torch.save(data, damaged)
    fails_in_one_line(capsys, ["import", "ofa-supernet", damaged, "--space", "ofa_mbv3_w1.0", "--run-dir",
                               tmp_path / "run"],
                      "'blocks.5.conv.depth_conv.bn.bn.running_var'", "1 NaN or infinite", "damaged")
    assert not (tmp_path / "run").exists()


@needs_zoo
def test_a_zoo_supernet_with_integer_weights_is_refused(tmp_path, capsys):
    data = _zoo_state()
    data["state_dict"]["first_conv.conv.weight"] = data["state_dict"]["first_conv.conv.weight"].to(torch.int8)
    foreign = tmp_path / "int8.pth"
    torch.save(data, foreign)
    fails_in_one_line(capsys, ["import", "ofa-supernet", foreign, "--space", "ofa_mbv3_w1.0", "--run-dir",
                               tmp_path / "run"], "'first_conv.conv.weight' is int8, not floating point")
    assert not (tmp_path / "run").exists()


@needs_zoo
def test_an_accuracy_predictor_with_non_finite_weights_is_refused(tmp_path, capsys):
    state = torch.load(PREDICTOR_FILE, map_location="cpu", weights_only=True)
    state["4.bias"][7] = float("nan")
    damaged = tmp_path / "acc.pth"
    torch.save(state, damaged)
    fails_in_one_line(capsys, ["import", "ofa-accuracy-predictor", damaged, "--run-dir", tmp_path / "run",
                               "--space", "ofa_mbv3_w1.0"], "'4.bias' holds 1 NaN or infinite", "damaged")
    assert not (tmp_path / "run" / "search" / "accuracy_predictor.json").exists()


@pytest.mark.parametrize("command", [["ofa-supernet", "--space", "ofa_mbv3_w1.0"], ["ofa-accuracy-predictor"]])
def test_a_device_a_pipe_or_an_empty_file_is_named_as_such(tmp_path, capsys, command):
    """``/dev/null`` and a pipe were said not to exist; an empty file gave torch's bare ``EOFError``."""
    fifo = tmp_path / "zoo.pth"
    os.mkfifo(fifo)
    empty = tmp_path / "empty.pth"
    empty.write_bytes(b"")
    for path, named in (("/dev/null", "/dev/null is not a regular file"), (fifo, "is not a regular file"),
                        (empty, "is an empty file")):
        err = fails_in_one_line(capsys, ["import", command[0], path, *command[1:], "--run-dir", tmp_path / "run"],
                                named)
        assert "does not exist" not in err and "EOFError" not in err
    assert not (tmp_path / "run").exists()


def test_a_config_naming_a_device_or_an_empty_file_is_named_as_such(tmp_path):
    """The config route (``supernet: {import: ofa, path: ...}``) checks its files as the command does."""
    from nas.config import SupernetImport
    from nas.errors import UsageError
    from nas.ofa_zoo import import_for_config

    empty = tmp_path / "w10.pth"
    empty.write_bytes(b"")
    for path, named in (("/dev/null", "/dev/null is not a regular file"), (empty, "is an empty file")):
        with pytest.raises(UsageError, match=named):
            import_for_config(SupernetImport("ofa", str(path)), "ofa_mbv3_w1.0", RunDir(tmp_path / "run"))
    assert not (tmp_path / "run").exists()


# --- an import replaced under a run's results ------------------------------------------------------------------


@needs_zoo
def test_another_zoo_file_is_not_imported_under_a_run_s_fronts(tmp_path, capsys):
    """Fronts measured on one zoo file's supernet stay with it: importing another file into the run would make
    ``nas query --export`` write the new weights under the old accuracies."""
    from nas.query import open_fronts
    from nas.search import run_search
    from nas.search_config import SearchConfig
    from supernets.training.checkpoint import read_supernet_file

    from .search.conftest import ToyObjectives, stub_counts

    run = RunDir(tmp_path / "run")
    assert main(["import", "ofa-supernet", str(SUPERNET_FILE), "--space", "ofa_mbv3_w1.0",
                 "--run-dir", str(run.root)]) == 0
    toy = ToyObjectives("ofa_mbv3_w1.0")
    config = SearchConfig.parse({"n_trials": 6, "batch_size": 6, "population_size": 6}, ["dev"])
    run_search(config, run.root, toy.accuracy, {"dev": toy.latency()}, space="ofa_mbv3_w1.0",
               counts_fn=stub_counts, checkpoint=str(run.supernet_checkpoint))
    assert open_fronts(run.root).front("dev")
    data = _zoo_state()
    data["state_dict"]["classifier.linear.bias"] += 1.0
    other = tmp_path / "other.pth"
    torch.save(data, other)
    before = run.supernet_checkpoint.read_bytes()
    capsys.readouterr()
    fails_in_one_line(capsys, ["import", "ofa-supernet", other, "--space", "ofa_mbv3_w1.0", "--run-dir", run.root],
                      "another file", "another --run-dir")
    assert run.supernet_checkpoint.read_bytes() == before
    # The same file again is no change: allowed. Another file into a run without results: allowed.
    assert main(["import", "ofa-supernet", str(SUPERNET_FILE), "--space", "ofa_mbv3_w1.0",
                 "--run-dir", str(run.root)]) == 0
    fresh = tmp_path / "fresh"
    assert main(["import", "ofa-supernet", str(SUPERNET_FILE), "--space", "ofa_mbv3_w1.0",
                 "--run-dir", str(fresh)]) == 0
    assert main(["import", "ofa-supernet", str(other), "--space", "ofa_mbv3_w1.0", "--run-dir", str(fresh)]) == 0
    summary = read_supernet_file(RunDir(fresh).supernet_checkpoint)["summary"]
    assert summary["imported"]["file"] == str(other.resolve())


# --- the study a plot draws -------------------------------------------------------------------------------------


def test_plot_draws_the_study_the_fronts_were_written_from(tmp_path, capsys):
    """A run's journal holding two studies (another search.resolutions needs another search.study_name): the
    plot's trials are those of the study its fronts came from, not of the study named after the run."""
    from nas.plots import plot_data
    from nas.query import open_fronts
    from nas.search import run_search
    from nas.search_config import SearchConfig

    from .search.conftest import SPACE_NAME, ToyObjectives, stub_counts

    run = tmp_path / "run"
    toy = ToyObjectives()
    for settings in ({"n_trials": 6}, {"n_trials": 18, "study_name": "at32", "resolutions": [32]}):
        config = SearchConfig.parse({"batch_size": 6, "population_size": 6, **settings}, ["dev"])
        run_search(config, run, toy.accuracy, {"dev": toy.latency()}, space=SPACE_NAME, counts_fn=stub_counts)
    front = open_fronts(run).front("dev")
    assert {m.arch.resolution for m in front} == {32}
    data = plot_data(run)
    assert data.n_trials == 18
    # A config naming no study (nas plot --config, nas run's plot stage) reads the same study; one naming a
    # study reads that one.
    assert plot_data(run, SearchConfig.parse({}, ["dev"])).n_trials == 18
    assert plot_data(run, SearchConfig.parse({"study_name": "run"}, ["dev"])).n_trials == 6
    panel = data.panels[0]
    assert panel.all_accuracy.size == 18 and panel.front_accuracy.size == len(front)
    assert main(["plot", str(run), "--out", str(tmp_path / "fronts.png")]) == 0
    assert (tmp_path / "fronts.png").stat().st_size > 10_000


# --- budgets as the command line prints them ----------------------------------------------------------------------


def _store_run(tmp_path, latencies_accuracies):
    """A run whose front store holds one device's members at the given (latency ms, accuracy), measured."""
    from nas.fronts import FrontMember, get_front_store
    from nas.search_paths import search_paths
    from search_spaces import arch_to_string, get_space, random_arch

    space = get_space("ofa_mbv3_cifar")
    run = tmp_path / "run"
    search_paths(run).fronts.parent.mkdir(parents=True)
    store = get_front_store(search_paths(run).fronts)
    members = []
    for seed, (latency_ms, accuracy) in enumerate(latencies_accuracies):
        arch = random_arch(space, seed)
        members.append(FrontMember(device="dev", arch=arch, arch_string=arch_to_string(space, arch),
                                   arch_id=arch.arch_id, val_accuracy=accuracy, test_accuracy=None,
                                   predicted_latency_ms=latency_ms / 2, measured_latency_ms=latency_ms,
                                   macs=1, params=1))
    store.write_front("dev", members)
    return run


def test_a_refused_budget_names_budgets_that_work(tmp_path, capsys):
    """``nas fronts`` and the errors print three decimals: a budget copied from an error admits the member."""
    run = _store_run(tmp_path, [(15.4163, 0.5), (18.2, 0.8)])
    err = fails_in_one_line(capsys, ["query", run, "--device", "dev", "--max-latency-ms", "15.416"],
                            "meets 15.416 ms", "spans 15.417 ms (fastest, accuracy 0.5000)",
                            "to 18.200 ms (most accurate, accuracy 0.8000)")
    assert "15.416 ms (fastest" not in err
    assert main(["query", str(run), "--device", "dev", "--max-latency-ms", "15.417", "--json"]) == 0
    assert '"latency_ms": 15.4163' in capsys.readouterr().out
    fails_in_one_line(capsys, ["query", run, "--device", "dev", "--max-latency-ms", "17", "--min-accuracy", "0.75"],
                      "accuracy 0.75 needs at least 18.200 ms")
    fails_in_one_line(capsys, ["query", run, "--device", "dev", "--max-latency-ms", "30", "--min-accuracy", "0.9"],
                      "no member reaches it (best 0.8000)")
    # Accuracies are printed rounded down, so that one given back as --min-accuracy is met.
    run2 = _store_run(tmp_path / "b", [(10.0, 0.57158)])
    fails_in_one_line(capsys, ["query", run2, "--device", "dev", "--max-latency-ms", "20", "--min-accuracy", "0.5716"],
                      "the best within the budget has 0.5715", "no member reaches it (best 0.5715)")
    assert main(["query", str(run2), "--device", "dev", "--max-latency-ms", "20", "--min-accuracy", "0.5715"]) == 0
    capsys.readouterr()
    # A budget exactly a member's latency admits it; the most accurate within wins.
    assert main(["query", str(run), "--device", "dev", "--max-latency-ms", "18.2", "--json"]) == 0
    assert '"val_accuracy": 0.8' in capsys.readouterr().out


@needs_zoo
def test_another_accuracy_predictor_is_not_imported_under_a_run_s_study(tmp_path, capsys):
    """The study's accuracies came from the imported predictor: another file would leave its fronts scored by
    one predictor and a resumed search scoring by another. The same file again, or a run without results, is
    fine; while a search holds the run's lock the import is refused, naming the lock."""
    from nas.search_paths import search_paths
    from supernets.training import FileLock

    run = tmp_path / "run"
    assert main(["import", "ofa-accuracy-predictor", str(PREDICTOR_FILE), "--run-dir", str(run)]) == 0
    state = torch.load(PREDICTOR_FILE, map_location="cpu", weights_only=True)
    state["6.bias"] += 0.5
    other = tmp_path / "other.pth"
    torch.save(state, other)
    target = search_paths(run).accuracy_predictor
    search_paths(run).journal.write_text("")  # a study begun on the imported predictor
    before = target.read_bytes()
    capsys.readouterr()
    fails_in_one_line(capsys, ["import", "ofa-accuracy-predictor", other, "--run-dir", run],
                      "accuracy predictor imported from another file", "search/study.journal", "another --run-dir")
    assert target.read_bytes() == before
    assert main(["import", "ofa-accuracy-predictor", str(PREDICTOR_FILE), "--run-dir", str(run)]) == 0
    # A search of the run in progress (another process holds its lock): refused, nothing replaced.
    search_paths(run).journal.unlink()
    lock = FileLock(search_paths(run).lock, "a search").acquire()
    try:
        fails_in_one_line(capsys, ["import", "ofa-accuracy-predictor", other, "--run-dir", run], "search.lock")
    finally:
        lock.release()
    assert target.read_bytes() == before
    assert main(["import", "ofa-accuracy-predictor", str(other), "--run-dir", str(run)]) == 0
    assert target.read_bytes() != before


def test_plot_of_a_run_searched_in_a_database_takes_the_config(tmp_path, capsys):
    """With search.storage the study is not in the run's journal: `nas plot RUN` said "run `nas search` first"
    of a searched run and could not be told where the study is; now it asks for the config, which names it."""
    from nas.plots import plot_data
    from nas.search import run_search
    from nas.search_config import SearchConfig

    from .search.conftest import SPACE_NAME, ToyObjectives, stub_counts

    run = tmp_path / "run"
    search = {"n_trials": 6, "batch_size": 6, "population_size": 6, "storage": f"sqlite:///{tmp_path / 'study.db'}"}
    toy = ToyObjectives()
    run_search(SearchConfig.parse(search, ["dev"]), run, toy.accuracy, {"dev": toy.latency()}, space=SPACE_NAME,
               counts_fn=stub_counts)
    err = fails_in_one_line(capsys, ["plot", run], "search study 'run'", "search.storage", "--config CONFIG")
    assert "nas search` first" not in err
    config = tmp_path / "experiment.yaml"
    config.write_text(f"name: run\nspace: {SPACE_NAME}\nrun_dir: {run}\ndevices: [dev]\n"
                      f"search: {{storage: 'sqlite:///{tmp_path / 'study.db'}'}}\n")
    out = tmp_path / "fronts.png"
    assert main(["plot", str(run), "--config", str(config), "--out", str(out)]) == 0, capsys.readouterr().err
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert plot_data(run, SearchConfig.parse(search, ["dev"])).n_trials == 6
    fails_in_one_line(capsys, ["plot", run, "--config", tmp_path / "missing.yaml"], "missing.yaml")


@pytest.mark.parametrize("key, value, named", [
    ("dataset", [1, 2], "dataset must be a mapping"),
    ("dataset", {"kind": "digits", "image_size": -3}, "dataset.image_size: -3"),
    ("dataset", {"kind": "digits", "colour": 1}, "unknown key 'colour'"),
    ("bn_images", "all", "meta 'bn_images'"),
    ("data_resolution", 0, "meta 'data_resolution'"),
])
def test_an_export_from_a_store_with_a_damaged_dataset_record_is_one_line(tmp_path, capsys, key, value, named):
    """The dataset the search recorded (front store meta) rebuilt for the export: a value no search writes was a
    TypeError or torch's RuntimeError traceback."""
    from nas.fronts import get_front_store
    from nas.search_paths import search_paths

    run = _store_run(tmp_path, [(10.0, 0.5)])
    store = get_front_store(search_paths(run).fronts)
    store.set_meta("dataset", {"kind": "digits", "image_size": 32})
    store.set_meta(key, value)
    out = tmp_path / "best.onnx"
    fails_in_one_line(capsys, ["query", run, "--device", "dev", "--max-latency-ms", "20", "--export", out],
                      "front store", "is damaged", named)
    assert not out.exists()


@pytest.mark.parametrize("budgets, named", [([1], "[1]"), ({"dev": "x"}, '{"dev": "x"}'), (7, "7")])
def test_plot_of_a_store_with_damaged_budgets_is_one_line(tmp_path, capsys, budgets, named):
    """The budgets the search capped fronts at (front store meta) are drawn as lines: a value no search writes
    was an AttributeError or ValueError traceback."""
    from nas.fronts import get_front_store
    from nas.search import run_search
    from nas.search_config import SearchConfig
    from nas.search_paths import search_paths

    from .search.conftest import SPACE_NAME, ToyObjectives, stub_counts

    run = tmp_path / "run"
    toy = ToyObjectives()
    config = SearchConfig.parse({"n_trials": 6, "batch_size": 6, "population_size": 6}, ["dev"])
    run_search(config, run, toy.accuracy, {"dev": toy.latency()}, space=SPACE_NAME, counts_fn=stub_counts)
    get_front_store(search_paths(run).fronts).set_meta("budgets_ms", budgets)
    out = tmp_path / "fronts.png"
    fails_in_one_line(capsys, ["plot", run, "--out", out], "front store", "is damaged", f"'budgets_ms' is {named}")
    assert not out.exists()


# --- nas quantize on another config's supernet --------------------------------------------------------------------


def test_quantize_refuses_the_supernet_of_another_config(tmp_path, capsys):
    """`nas eval` refuses a run trained under another seed (its training split may hold this config's test
    images); `nas quantize` recalibrated, quantised and reported test accuracy on it."""
    from nas.config import load_config
    from search_spaces import get_space
    from supernets import build_supernet
    from supernets.training.checkpoint import save_supernet

    from .search.conftest import SPACE_NAME

    def config(seed: int) -> Path:
        path = tmp_path / f"seed{seed}.yaml"
        path.write_text(f"name: q\nspace: {SPACE_NAME}\nseed: {seed}\nrun_dir: {tmp_path / 'run'}\n"
                        f"dataset: {{kind: digits, image_size: 32, max_train_images: 64}}\n")
        return path

    trained = RunDir(tmp_path / "run")
    trained.checkpoints.mkdir(parents=True)
    space = get_space(SPACE_NAME)
    save_supernet(trained.supernet_checkpoint, build_supernet(space).eval(), space, load_config(config(0)).config_hash)
    out = tmp_path / "int8.onnx"
    fails_in_one_line(capsys, ["quantize", config(1), "--arch", "smallest", "--out", out],
                      "written by another config", str(trained.supernet_checkpoint))
    assert not out.exists()


# --- nas arch info --ofa-config --------------------------------------------------------------------------------------


def test_an_ofa_config_with_an_unknown_key_is_refused(capsys):
    """A misspelt resolution key was ignored: the arch described at the space's largest resolution, exit 0."""
    import json

    config = {"ks": [3] * 20, "e": [3] * 20, "d": [2] * 5}
    fails_in_one_line(capsys, ["arch", "info", "ofa_mbv3_w1.0", "--ofa-config", json.dumps({**config, "R": [160]})],
                      "unknown key 'R'", "allowed: ks, e, d, r")
    assert main(["arch", "info", "ofa_mbv3_w1.0", "--ofa-config", json.dumps({**config, "r": [160]}), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["archs"][0]["resolution"] == 160


@needs_zoo
@pytest.mark.parametrize("resolutions", [["x"], "abc", None, [], [999]])
def test_an_imported_predictor_with_damaged_resolutions_is_a_damaged_file(tmp_path, resolutions):
    """What the search reads back (``OFAAccuracyPredictor.load``): a damaged ``resolutions`` was a bare
    ValueError or TypeError (a traceback from `nas search`/`nas run`), or "abc" read as three resolutions."""
    import json

    from nas.ofa_zoo import OFAAccuracyPredictor, import_ofa_accuracy_predictor
    from search_spaces import DamagedFileError

    path = import_ofa_accuracy_predictor(PREDICTOR_FILE, tmp_path / "run").path
    assert OFAAccuracyPredictor.load(path).resolutions == (160, 176, 192, 208, 224)
    data = json.loads(path.read_text())
    path.write_text(json.dumps({**data, "resolutions": resolutions}))
    with pytest.raises(DamagedFileError, match=r"accuracy_predictor.json is damaged .*'resolutions' is") as info:
        OFAAccuracyPredictor.load(path)
    assert "\n" not in str(info.value) and "nas import ofa-accuracy-predictor" in str(info.value)


def test_a_deeply_nested_ofa_config_is_one_line(capsys):
    """json.loads recurses per bracket: 100000 of them were a RecursionError traceback."""
    fails_in_one_line(capsys, ["arch", "info", "ofa_mbv3_w1.0", "--ofa-config", "[" * 100_000], "nested too deeply")
