"""``nas train`` end to end on real Ray Train and real (tiny) training: completion, resumption after
SIGKILL, a worker failure survived, refusal of corrupted or foreign checkpoints.

One local Ray instance is shared by the module; each run trains a few steps on 64 digits at 24x24.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from nas.cli import main
from nas.rundir import RunDir, load_supernet
from nas.training import FAIL_AT_EPOCH_ENV, FAIL_MARKER_ENV

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[2]


def tiny_config(path: Path, kernel_epochs: int = 2, seed: int = 0) -> Path:
    config = {
        "name": "tiny", "space": "ofa_mbv3_cifar", "seed": seed,
        "dataset": {"kind": "digits", "image_size": 24, "max_train_images": 64},
        "train": {
            "strategy": "progressive_shrinking",
            "batch_size": 8, "max_steps_per_epoch": 2, "bn_recal_images": 16, "eval_random_subnets": 1,
            "max_val_images": 32,
            "phases": [
                {"name": "full", "epochs": 1, "lr": 0.05, "elastic": {"resolutions": [24]}},
                {"name": "kernel", "epochs": kernel_epochs, "lr": 0.02, "distill_weight": 1.0,
                 "elastic": {"resolutions": [24], "kernel_sizes": [3, 5, 7], "depths": [2, 3, 4]}},
            ],
        },
        "ray": {"num_workers": 1, "cpus_per_worker": 1, "max_failures": 1},
    }
    path.write_text(yaml.safe_dump(config))
    return path


def epochs_recorded(run: Path) -> list[int]:
    return [json.loads(line)["global_epoch"] for line in (run / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def ray_cluster():
    from supernets.training import ensure_ray_env

    ensure_ray_env()
    import ray

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def finished_run(ray_cluster, tmp_path_factory) -> tuple[Path, Path]:
    folder = tmp_path_factory.mktemp("finished")
    config = tiny_config(folder / "tiny.yaml")
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert main(["train", str(config), "--run-dir", str(folder / "run"), "--no-progress"]) == 0
    (folder / "console.txt").write_text(out.getvalue())
    return config, folder / "run"


def test_the_console_has_one_line_per_epoch_and_no_ray_output(finished_run) -> None:
    """Issue 12: hwnas's own line per epoch on stdout (read from the metrics), Ray's output in the run's log."""
    _, run = finished_run
    console = (run.parent / "console.txt").read_text()
    lines = [line for line in console.splitlines() if line.startswith("epoch ")]
    assert [line.split(":")[0] for line in lines] == ["epoch 1/3 full", "epoch 2/3 kernel", "epoch 3/3 kernel"]
    assert all("img/s" in line and "val largest" in line for line in lines)
    assert "RayTrainWorker" not in console and "TrainingReport" not in console
    assert "logs/ray.log" in console and (run / "logs" / "ray.log").is_file()


def test_two_phase_schedule_finishes_with_complete_metrics(finished_run, capsys) -> None:
    config, run = finished_run
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["global_epoch"] for r in rows] == [0, 1, 2]
    assert [r["phase"] for r in rows] == ["full", "kernel", "kernel"]
    for row in rows:
        assert row["train_loss"] > 0 and row["steps"] == 2
        for key in ("val_acc_largest", "val_acc_smallest", "val_acc_random_mean"):
            assert 0.0 <= row[key] <= 1.0
        assert len(row["val_acc_random"]) == 1
    assert (run / "checkpoints" / "teacher.pt").is_file() and (run / "config.yaml").is_file()
    space, supernet = load_supernet(run)
    assert space.name == "ofa_mbv3_cifar" and space.num_classes == 10
    capsys.readouterr()
    assert main(["train", str(config), "--run-dir", str(run)]) == 0  # finished: not trained again
    assert "already trained" in capsys.readouterr().out
    assert epochs_recorded(run) == [0, 1, 2]


def test_foreign_and_corrupted_checkpoints_are_refused(finished_run, tmp_path, capsys) -> None:
    _, run = finished_run
    other = tiny_config(tmp_path / "other.yaml", seed=1)
    capsys.readouterr()
    assert main(["train", str(other), "--run-dir", str(run)]) == 2
    err = capsys.readouterr().err.strip()
    assert "another config" in err and len(err.splitlines()) == 1
    assert "The run's config.yaml -> this config: seed: 0 -> 1" in err  # what makes it another config
    broken = tmp_path / "broken"
    (broken / "checkpoints").mkdir(parents=True)
    (broken / "checkpoints" / "latest.pt").write_bytes(b"\x00garbage" * 10)
    assert main(["train", str(other), "--run-dir", str(broken)]) == 2
    err = capsys.readouterr().err.strip()
    assert "corrupted" in err and "latest.pt" in err and len(err.splitlines()) == 1
    assert not (broken / "metrics.jsonl").exists()


def test_injected_worker_failure_is_survived(ray_cluster, tmp_path, monkeypatch) -> None:
    marker = tmp_path / "failed-once"
    monkeypatch.setenv(FAIL_AT_EPOCH_ENV, "1")
    monkeypatch.setenv(FAIL_MARKER_ENV, str(marker))
    config = tiny_config(tmp_path / "tiny.yaml")
    assert main(["train", str(config), "--run-dir", str(tmp_path / "run"), "--no-progress"]) == 0
    assert marker.exists()  # the worker did fail once, after the checkpoint of epoch 1
    assert epochs_recorded(tmp_path / "run") == [0, 1, 2]
    assert RunDir(tmp_path / "run").is_trained()


def test_sigkilled_run_resumes_and_records_every_epoch_once(ray_cluster, tmp_path) -> None:
    config = tiny_config(tmp_path / "tiny.yaml", kernel_epochs=3)
    run = tmp_path / "run"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    process = subprocess.Popen([sys.executable, "-m", "nas", "train", str(config), "--run-dir", str(run),
                                "--no-progress"], cwd=tmp_path, env=env, start_new_session=True,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    latest = run / "checkpoints" / "latest.pt"
    deadline = time.monotonic() + 240
    try:
        while not latest.exists() and process.poll() is None and time.monotonic() < deadline:
            time.sleep(0.2)
        assert latest.exists(), "no checkpoint appeared"
    finally:
        os.killpg(process.pid, signal.SIGKILL)  # the command and the Ray it started
        process.wait()
    assert not (run / "checkpoints" / "supernet.pt").exists()
    done_before = len(epochs_recorded(run))
    assert done_before < 4
    assert main(["train", str(config), "--run-dir", str(run), "--no-progress"]) == 0
    assert epochs_recorded(run) == [0, 1, 2, 3]
    assert RunDir(run).is_trained()
