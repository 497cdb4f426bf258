"""``nas run``: a tiny experiment end to end with real Ray, Optuna and ONNX Runtime; a second run skips
every stage; bad configs fail with one line and exit status 2."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import textwrap

import onnx
import pytest

from nas.cli import main

TINY = textwrap.dedent("""
    name: tiny
    space: ofa_mbv3_cifar
    seed: 0
    dataset: {kind: digits, val_fraction: 0.1, test_fraction: 0.2}
    train:
      batch_size: 16
      max_steps_per_epoch: 2
      bn_recal_images: 32
      eval_random_subnets: 1
      max_val_images: 32
      threads_per_worker: 1
      strategy: progressive_shrinking
      phases:
        - {name: full, epochs: 1, lr: 0.05, elastic: {resolutions: [24]}}
        - {name: kernel, epochs: 1, lr: 0.02, distill_weight: 1.0,
           elastic: {resolutions: [24], kernel_sizes: [3, 5, 7]}}
    ray: {num_workers: 1, cpus_per_worker: 1, max_failures: 0}
    devices: [local-cpu-1t-ort]
    latency: {resolutions: [24], warmup: 1, repeats: 3}
    search: {resolutions: [24], n_trials: 12, batch_size: 6, population_size: 6, eval_workers: 1}
""")


@pytest.fixture()
def workdir(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HWNAS_HOME", str(tmp_path / "home"))
    (tmp_path / "tiny.yaml").write_text(TINY)
    return tmp_path


@pytest.mark.slow
def test_run_produces_every_artifact_then_skips_every_stage(workdir, capsys):
    assert main(["run", "tiny.yaml", "--no-progress", "--json"]) == 0
    out, err = capsys.readouterr()
    assert json.loads(out)["ran"] == ["train", "latency", "search", "hardware-in-the-loop", "plot", "export"]
    assert "epoch 1/" in err  # training's lines went to stderr: stdout holds the JSON alone
    run = workdir / "runs" / "tiny"
    for artifact in ("checkpoints/supernet.pt", "metrics.jsonl", "search/study.journal", "fronts/fronts.sqlite",
                     "fronts/hil.json", "plots/fronts.png", "exports/local-cpu-1t-ort-knee.onnx"):
        assert (run / artifact).is_file(), artifact
    assert (workdir / "home").is_dir()
    onnx.checker.check_model(onnx.load(str(run / "exports/local-cpu-1t-ort-knee.onnx")))
    with sqlite3.connect(run / "fronts/fronts.sqlite") as db:
        assert db.execute("select count(*) from measurements").fetchone()[0] >= 1

    assert main(["run", "tiny.yaml", "--no-progress", "--json"]) == 0
    out, err = capsys.readouterr()
    result = json.loads(out)
    assert result["ran"] == []
    assert result["skipped"] == ["train", "latency", "search", "hardware-in-the-loop", "plot", "export"]
    front = result["fronts"]["local-cpu-1t-ort"]
    assert front and all(m["measured_latency_ms"] is not None for m in front)
    assert err.count("already done, skipped") == 6

    # The search grows: every stage made from its fronts runs again, the others stay skipped.
    (workdir / "tiny.yaml").write_text(TINY.replace("n_trials: 12", "n_trials: 18"))
    assert main(["run", "tiny.yaml", "--no-progress", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["ran"] == ["search", "hardware-in-the-loop", "plot", "export"]
    assert result["skipped"] == ["train", "latency"]

    # The fronts change again (as a search of another process would leave them): while that process holds the
    # run's search lock, the plot is not redrawn from fronts it may be rewriting; once it is gone, it is.
    plot = run / "plots/fronts.png"
    before = plot.read_bytes()
    os.utime(run / "fronts/fronts.sqlite")
    os.utime(run / "fronts/hil.json")  # hardware in the loop stays done: the plot is the first stage to run
    holder = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(run / "search" / "search.lock")],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        assert main(["run", "tiny.yaml", "--no-progress"]) == 2
        err = capsys.readouterr().err
        assert err.count("nas: error:") == 1 and "search" in err and f"pid {holder.pid}" in err
        assert plot.read_bytes() == before
    finally:
        holder.kill()
        holder.wait()
    assert main(["run", "tiny.yaml", "--no-progress", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["ran"] == ["plot", "export"]


# Another process holding a run's search lock (an flock, as `nas search` takes it) until it is killed.
HOLD_LOCK = textwrap.dedent("""
    import sys, time
    from supernets.training import FileLock
    FileLock(sys.argv[1], "the search of the run").acquire()
    print("held", flush=True)
    time.sleep(600)
""")


@pytest.mark.parametrize("change, message", [
    (("devices: [local-cpu-1t-ort]", "devices: []"), "no devices"),
    (("latency: {resolutions: [24],", "latency: {resolutions: [23],"), "latency.resolutions [23] are not in space"),
    (("latency: {resolutions: [24],", "latency: {resolutions: [24], colour: red,"), "latency: unknown key(s) colour"),
    (("search: {resolutions: [24],", "search: {"), "search may pick resolutions [28, 32]"),
    (("space: ofa_mbv3_cifar", "space: nope"), "unknown space 'nope'"),
])
def test_bad_config_is_one_line_and_status_2(workdir, capsys, change, message):
    (workdir / "tiny.yaml").write_text(TINY.replace(*change))
    assert main(["run", "tiny.yaml"]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1
    assert not (workdir / "runs" / "tiny" / "checkpoints").exists()


def test_missing_config_file(workdir, capsys):
    assert main(["run", "missing.yaml"]) == 2
    assert "cannot read config missing.yaml" in capsys.readouterr().err
