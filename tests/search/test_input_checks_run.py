"""Bad input to `nas run`, `nas search` and `nas eval` is refused before any work, in one line, leaving the run and
$HWNAS_HOME as they were: another config's supernet (seed, training, space), unknown or unmeasurable devices, a
storage that cannot be opened, resolutions an imported predictor lacks, a budget no subnet can meet; a journal
whose last record a kill cut off is mended (the original kept), a damaged one named; Ray's wrapped errors and
-q with -v are one line too."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from nas.cli import main
from nas.config import load_config
from nas.errors import UsageError
from nas.rundir import RunDir
from nas.search_config import SearchConfig
from nas.search_paths import search_paths
from search_spaces import DamagedFileError, get_space
from supernets import build_supernet
from supernets.training.checkpoint import SUPERNET_FORMAT, atomic_torch_save, save_supernet
from tests.cli_helpers import fails_in_one_line

from .conftest import stub_counts

SPACE = "ofa_mbv3_cifar"


def _raw(tmp_path: Path, **overrides) -> dict:
    raw = {"name": "checks", "space": SPACE, "seed": 0, "run_dir": str(tmp_path / "run"),
           "dataset": {"kind": "digits", "image_size": 24, "max_train_images": 256},
           "train": {"bn_recal_images": 16, "max_val_images": 16, "device": "cpu"},
           "ray": {"enabled": False}, "devices": ["local-cpu-1t-ort"],
           "latency": {"resolutions": [24], "warmup": 0, "repeats": 1},
           "search": {"n_trials": 4, "batch_size": 2, "population_size": 2, "eval_workers": 1, "resolutions": [24]}}
    raw.update(overrides)
    return raw


def _config(tmp_path: Path, name: str = "config.yaml", **overrides) -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(_raw(tmp_path, **overrides)))
    return path


@pytest.fixture(scope="module")
def weights():
    torch.manual_seed(0)
    return build_supernet(get_space(SPACE)).eval()


@pytest.fixture
def trained(tmp_path, weights):
    """``(config path, run)``: a run whose supernet was "trained" from the config (seed 0)."""
    path = _config(tmp_path)
    config = load_config(path)
    run = RunDir.for_config(config).create()
    save_supernet(run.supernet_checkpoint, weights, get_space(SPACE), config.config_hash)
    return path, run


@pytest.fixture
def home(tmp_path, monkeypatch):
    home = tmp_path / "home"
    monkeypatch.setenv("HWNAS_HOME", str(home))
    return home


def _files(folder: Path) -> dict[str, int]:
    return {str(p.relative_to(folder)): p.stat().st_mtime_ns for p in folder.rglob("*")} if folder.exists() else {}


# --- B1, B2, E1: the run's supernet must be the config's -----------------------------------------------------


def test_another_configs_supernet_is_refused_by_run_search_and_eval(tmp_path, trained, home, capsys):
    _path, run = trained
    before = _files(run.root)
    seed1 = _config(tmp_path, "seed1.yaml", seed=1)
    for argv in (["run", seed1, "--no-progress"], ["search", seed1], ["eval", seed1, "--arch", "smallest"]):
        fails_in_one_line(capsys, argv, "written by another config", str(run.supernet_checkpoint))
    # The same with the training scaled, or another dataset.
    fails_in_one_line(capsys, ["run", _config(tmp_path), "--epochs-scale", "2"], "written by another config")
    other_data = _config(tmp_path, "data.yaml", dataset={"kind": "digits", "image_size": 24, "max_train_images": 128})
    fails_in_one_line(capsys, ["search", other_data], "written by another config")
    assert _files(run.root) == before and not home.exists()


def test_a_supernet_of_another_space_is_refused_before_ray_starts(tmp_path, home, capsys):
    import ray

    run = RunDir(tmp_path / "run")
    atomic_torch_save({"format": SUPERNET_FORMAT, "space": "ofa_mbv3_w1.0", "num_classes": 1000,
                       "config_hash": "ofa-import-0123456789abcdef", "summary": {}, "state_dict": {}},
                      run.supernet_checkpoint)
    before = _files(run.root)
    config = _config(tmp_path)
    for argv in (["search", config], ["run", config, "--no-progress"], ["eval", config, "--arch", "smallest"]):
        fails_in_one_line(capsys, argv, "belongs to space 'ofa_mbv3_w1.0', not 'ofa_mbv3_cifar'")
    assert not ray.is_initialized() and _files(run.root) == before and not home.exists()


def test_imported_supernets_are_identified_by_their_space_and_zoo_file(tmp_path):
    from nas.accuracy import check_run_supernet
    from nas.ofa_zoo import sha256_file

    zoo, other = tmp_path / "zoo.pth", tmp_path / "other.pth"
    zoo.write_bytes(b"zoo weights")
    other.write_bytes(b"other weights")
    run = RunDir(tmp_path / "run")

    def write(config_hash: str, imported: Path | None, num_classes: int = 1000) -> None:
        summary = {"imported": {"sha256": sha256_file(imported)}} if imported else {}
        atomic_torch_save({"format": SUPERNET_FORMAT, "space": "ofa_mbv3_w1.2", "num_classes": num_classes,
                           "config_hash": config_hash, "summary": summary, "state_dict": {}}, run.supernet_checkpoint)

    w12 = {"space": "ofa_mbv3_w1.2", "latency": {}, "search": {"accuracy": "predictor"}}
    plain = load_config(_config(tmp_path, "plain.yaml", **w12))
    importing = load_config(_config(tmp_path, "import.yaml", **w12, supernet={"import": "ofa", "path": str(zoo)}))
    write(f"ofa-import-{sha256_file(zoo)[:16]}", zoo)
    assert check_run_supernet(plain, run)  # `nas import ofa-supernet`, then a config without a supernet section
    assert check_run_supernet(importing, run)
    write(f"ofa-import-{sha256_file(other)[:16]}", other)
    with pytest.raises(UsageError, match="imported from another file"):
        check_run_supernet(importing, run)
    write(plain.config_hash, None, num_classes=10)  # trained, on the config's 10 digits
    assert check_run_supernet(plain, run) is False
    with pytest.raises(UsageError, match="holds a trained supernet"):
        check_run_supernet(importing, run)


# --- D2, D3, D4: devices, storage and predictor resolutions before training ------------------------------------


@pytest.mark.parametrize(("overrides", "needles"), [
    ({"devices": ["nope-device"]}, ["unknown device 'nope-device'"]),
    ({"devices": ["local-cpu-1t-ort", "local-gpu-1t-ort"]}, ["local-gpu-1t-ort", "local-cpu-1t-ort"]),
    ({"devices": ["local-cpu-1t-ort", "local-cpu-1t-torch"],
      "search": {"precisions": ["fp32", "int8"], "resolutions": [24]}}, ["local-cpu-1t-torch", "int8"]),
    ({"search": {"storage": "foo://bar", "resolutions": [24]}}, ["search.storage 'foo://bar' cannot be opened"]),
])
def test_nas_run_checks_devices_and_storage_before_training(tmp_path, home, capsys, overrides, needles):
    if "precisions" in overrides.get("search", {}):
        overrides["latency"] = {"table": True, "resolutions": [24]}
    fails_in_one_line(capsys, ["run", _config(tmp_path, **overrides), "--no-progress"], *needles)
    assert not (tmp_path / "run").exists() and not home.exists()  # nothing trained, no device recorded


def test_nas_run_refuses_a_cuda_device_this_machine_lacks_before_training(tmp_path, home, capsys):
    if torch.cuda.is_available():
        pytest.skip("this machine has a CUDA GPU")
    fails_in_one_line(capsys, ["run", _config(tmp_path, devices=["local-cuda-b1-torch"]), "--no-progress"],
                      "local-cuda-b1-torch", "no CUDA GPU")
    assert not (tmp_path / "run").exists() and not home.exists()


def test_nas_run_refuses_resolutions_the_imported_predictor_lacks_before_importing(tmp_path, home, capsys):
    zoo = tmp_path / "zoo"
    zoo.mkdir()
    config = _config(tmp_path, space="ofa_mbv3_w1.2", dataset=None, train={},
                     supernet={"import": "ofa", "path": str(zoo / "w12.pth"),
                               "accuracy_predictor": str(zoo / "acc.pth")},
                     latency={"table": True, "resolutions": [128]},
                     search={"accuracy": "predictor", "resolutions": [128], "n_trials": 4})
    raw = yaml.safe_load(config.read_text())
    del raw["dataset"]
    config.write_text(yaml.safe_dump(raw))
    fails_in_one_line(capsys, ["run", config, "--no-progress"], "search.resolutions [128]", "not covered",
                      "allowed: 160")
    assert not (tmp_path / "run").exists() and not home.exists()


# --- D7, D8: nas search leaves nothing behind when it refuses; a budget no subnet can meet ------------------------


def test_refused_searches_leave_no_lock_or_journal(tmp_path, trained, home, capsys):
    path, run = trained
    fails_in_one_line(capsys, ["search", path], "no latency table")
    bad_storage = _config(tmp_path, "storage.yaml", search={"storage": "foo://bar", "resolutions": [24]})
    fails_in_one_line(capsys, ["search", bad_storage], "cannot be opened")
    assert not run.search.exists() and not home.exists()


def test_a_budget_below_the_smallest_subnets_latency_is_refused_before_searching(tmp_path, trained, toy):
    from nas.search_stage import search_stage

    path = _config(tmp_path, devices=[{"id": "local-cpu-1t-ort", "max_latency_ms": 0.001}])
    _, run = trained
    with pytest.raises(UsageError) as info:
        search_stage(load_config(path), run, latency_predictors={"local-cpu-1t-ort": toy.latency()}, progress=False)
    message = str(info.value)
    assert "no subnet meets the latency budget of 0.001 ms on device 'local-cpu-1t-ort'" in message
    assert "smallest subnet" in message and "\n" not in message
    assert toy.calls == 0 and not run.search.exists()


# --- C10: the study journal ------------------------------------------------------------------------------------


def _search(run: Path, toy, n_trials: int) -> None:
    from nas.search import run_search

    config = SearchConfig.parse({"n_trials": n_trials, "batch_size": 4, "population_size": 4}, ["dev"])
    run_search(config, run, toy.accuracy, {"dev": toy.latency()}, space=SPACE, counts_fn=stub_counts)


def test_a_journal_cut_by_a_kill_is_mended_and_the_original_kept(tmp_path, toy):
    from nas.study import load_study, sampler_trials_done, storage_for

    _search(tmp_path, toy, 8)
    journal = search_paths(tmp_path).journal
    original = journal.read_bytes()
    journal.write_bytes(original[:-40])  # what a kill in the middle of the last write leaves
    cut = journal.read_bytes()
    assert sampler_trials_done(load_study(tmp_path)) == 7  # readers skip the torn line and leave the file alone
    assert journal.read_bytes() == cut
    with pytest.warns(UserWarning, match="dropped its last record"):
        storage_for(SearchConfig(), tmp_path, repair=True)
    assert journal.read_bytes() == cut[:cut.rfind(b"\n") + 1]
    assert (journal.parent / "study.journal.torn").read_bytes() == cut
    _search(tmp_path, toy, 12)  # the study goes on: nothing glued onto the torn line
    assert sampler_trials_done(load_study(tmp_path)) == 12
    # A last record that lost only its newline is kept, and the first backup is not overwritten.
    whole = journal.read_bytes()
    journal.write_bytes(whole[:-1])
    with pytest.warns(UserWarning, match="newline"):
        storage_for(SearchConfig(), tmp_path, repair=True)
    assert journal.read_bytes() == whole and (journal.parent / "study.journal.torn.1").read_bytes() == whole[:-1]
    assert (journal.parent / "study.journal.torn").read_bytes() == cut


def test_a_damaged_journal_is_one_line_naming_it_and_kept(tmp_path, trained, toy, home, capsys):
    from nas.study import load_study

    path, run = trained
    _search(run.root, toy, 4)
    journal = search_paths(run).journal
    lines = journal.read_bytes().split(b"\n")
    damaged = b"\n".join([lines[0], b"garbage", *lines[1:]])
    journal.write_bytes(damaged)
    with pytest.raises(DamagedFileError, match="line 2 is not a journal record"):
        load_study(run.root)
    fails_in_one_line(capsys, ["search", path], str(journal), "line 2", "move it away")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        fails_in_one_line(capsys, ["run", path, "--no-progress"], str(journal), "line 2")
    assert journal.read_bytes() == damaged and not list(journal.parent.glob("*.torn*"))


# --- E1, G: one line from the command line ---------------------------------------------------------------------


def test_an_error_of_ours_raised_in_a_ray_task_is_its_own_line(monkeypatch, capsys, tmp_path):
    from ray.exceptions import RayTaskError

    import nas.commands.search as search_command
    from nas.errors import RetryableError

    def raising(error):
        def handler(args):
            raise RayTaskError("evaluate", "Traceback (most recent call last):\n  File ...\n", error,
                               ).as_instanceof_cause()
        return handler

    config = _config(tmp_path)
    for error, status in ((UsageError("search.thing 'x' is not allowed; allowed: y"), 2),
                          (RetryableError("the worker died; run the same command again"), 1)):
        monkeypatch.setattr(search_command, "run", raising(error))
        assert main(["search", str(config)]) == status
        assert capsys.readouterr().err == f"nas: error: {error}\n"


def test_quiet_and_verbose_together_are_refused(tmp_path, capsys):
    config = _config(tmp_path)
    fails_in_one_line(capsys, ["-q", "train", config, "-v"], "-q/--quiet", "-v/--verbose")
    with pytest.raises(SystemExit) as info:
        main(["train", str(config), "-q", "-v"])
    assert info.value.code == 2 and "not allowed with" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


def test_a_budget_the_smallest_subnet_meets_is_searched(tmp_path, trained, toy):
    from nas.search_stage import check_budgets, predictor_space

    search = SearchConfig.parse({}, [{"id": "dev", "max_latency_ms": 1e6}])
    check_budgets(search, get_space(SPACE), {"dev": toy.latency()}, {})
    with pytest.raises(UsageError, match="allowed: 160"):
        predictor_space((160, 176), SearchConfig.parse({"resolutions": [24]}, ["dev"]), get_space(SPACE))


def test_a_budget_a_sampled_subnet_meets_is_not_refused_early():
    from nas.search_stage import check_budgets
    from search_spaces import get_space, smallest

    space = get_space(SPACE)
    tiny = smallest(space)

    def learned(archs):  # a learned predictor need not rank the smallest subnet fastest
        return np.array([10.0 if a == tiny else 1.0 for a in archs])

    search = SearchConfig.parse({}, [{"id": "dev", "max_latency_ms": 5.0}])
    check_budgets(search, space, {"dev": learned}, {})  # some subnet is predicted within 5 ms
    search = SearchConfig.parse({}, [{"id": "dev", "max_latency_ms": 0.5}])
    with pytest.raises(UsageError, match="the fastest is predicted at 1 ms"):
        check_budgets(search, space, {"dev": learned}, {})
