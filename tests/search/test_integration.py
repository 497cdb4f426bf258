"""The search stage end to end on a real (untrained) supernet, real data, real Ray actors, and the CLI."""

from __future__ import annotations

import json
import time

import numpy as np
import optuna
import pytest
import torch
import yaml

from nas.cli import main
from nas.config import load_config
from nas.query import open_fronts
from nas.rundir import RunDir
from nas.search import hardware_in_the_loop
from nas.search_paths import search_paths
from nas.study import load_study
from search_spaces import get_space
from supernets import build, build_supernet

from .conftest import ToyObjectives

CONFIG = {
    "name": "tiny", "space": "ofa_mbv3_cifar", "seed": 0,
    "dataset": {"kind": "digits", "image_size": 24, "max_train_images": 256},
    "train": {"bn_recal_images": 32, "max_val_images": 48},
    "devices": {"local-cpu-1t-ort": None},
    "search": {"n_trials": 6, "batch_size": 3, "population_size": 4, "eval_workers": 2},
}


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    from supernets.training.checkpoint import save_supernet

    root = tmp_path_factory.mktemp("integration")
    path = root / "tiny.yaml"
    path.write_text(yaml.safe_dump({**CONFIG, "run_dir": str(root / "run")}))
    config = load_config(path)
    run = RunDir.for_config(config).create()
    torch.manual_seed(0)
    space = get_space("ofa_mbv3_cifar")
    save_supernet(run.supernet_checkpoint, build_supernet(space).eval(), space, config.config_hash)
    return path, config, run


def measure_torch(archs):
    """A real (tiny) end-to-end measurement: median of 5 timed forward passes at batch 1."""
    space = get_space("ofa_mbv3_cifar")
    out = []
    for arch in archs:
        net = build(space, arch).eval()
        x = torch.randn(1, 3, arch.resolution, arch.resolution)
        times = []
        with torch.no_grad():
            net(x)
            for _ in range(5):
                start = time.perf_counter()
                net(x)
                times.append(1e3 * (time.perf_counter() - start))
        out.append(float(np.median(times)))
    return out


@pytest.mark.slow
def test_search_stage_on_a_real_supernet_resumes_measures_queries_exports(run, tmp_path):
    from nas.search_stage import search_stage

    path, config, run_dir = run
    toy = ToyObjectives()
    fronts = search_stage(config, run_dir, latency_predictors={"local-cpu-1t-ort": toy.latency()}, progress=False)
    front = fronts["local-cpu-1t-ort"]
    assert front and all(m.test_accuracy is not None and 0 <= m.val_accuracy <= 1 for m in front)
    assert all(m.checkpoint == str(run_dir.supernet_checkpoint) and m.params > 0 and m.macs > 0 for m in front)
    # Continue the study to 9 trials: the 6 finished ones are kept, nothing is evaluated twice.
    search_stage(config, run_dir, n_trials=9, latency_predictors={"local-cpu-1t-ort": toy.latency()},
                 progress=False)
    study = load_study(run_dir)
    assert len(study.get_trials(states=(optuna.trial.TrialState.COMPLETE,))) == 9
    rows = [json.loads(line) for line in search_paths(run_dir).accuracy_cache.read_text().splitlines()]
    keys = [(r["arch_id"], r["split"]) for r in rows]
    assert len(keys) == len(set(keys))
    # Hardware in the loop with a real measurement.
    report = hardware_in_the_loop(run_dir, {"local-cpu-1t-ort": measure_torch})["local-cpu-1t-ort"]
    assert report.members_before >= 1 and all(t > 0 for t in report.measured_ms)
    # A search that adds no trial leaves the fronts hardware in the loop rebuilt as they are (nas run's later
    # stages stay done: they tell it by the store's age).
    fronts_file = search_paths(run_dir).fronts
    before, stamp = open_fronts(run_dir).front("local-cpu-1t-ort"), fronts_file.stat().st_mtime_ns
    again = search_stage(config, run_dir, n_trials=9, latency_predictors={"local-cpu-1t-ort": toy.latency()},
                         progress=False)
    assert open_fronts(run_dir).front("local-cpu-1t-ort") == before and fronts_file.stat().st_mtime_ns == stamp
    assert [m.arch_id for m in again["local-cpu-1t-ort"]] == [m.arch_id for m in before]
    # Query and export through the command line: ONNX checked against PyTorch before it is written.
    out = tmp_path / "subnet.onnx"
    assert main(["query", str(run_dir.root), "--device", "local-cpu-1t-ort", "--max-latency-ms", "1e6",
                 "--json", "--export", str(out)]) == 0
    assert out.stat().st_size > 10_000
    assert main(["query", str(run_dir.root), "--device", "local-cpu-1t-ort", "--max-latency-ms", "1e6",
                 "--export", str(tmp_path / "subnet.pt")]) == 0
    assert torch.load(tmp_path / "subnet.pt", weights_only=True)["space"] == "ofa_mbv3_cifar"
    assert main(["plot", str(run_dir.root)]) == 0
    assert search_paths(run_dir).plot.stat().st_size > 10_000


def test_cli_search_errors(run, tmp_path, monkeypatch, capsys):
    path, config, run_dir = run
    monkeypatch.setenv("HWNAS_HOME", str(tmp_path / "home"))
    assert main(["search", str(path)]) == 2
    assert "no latency table" in capsys.readouterr().err
    assert main(["search", str(path), "--run-dir", str(tmp_path / "untrained")]) == 2
    assert "nas train" in capsys.readouterr().err
    assert main(["search", str(tmp_path / "missing.yaml")]) == 2
