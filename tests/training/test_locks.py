"""One writer per run: a second ``nas train`` on a run is refused at once, naming the holder; a process
still writing a run's checkpoints (an orphaned worker of a killed run) is waited for; Ray's failure text
is reduced to its real cause."""

from __future__ import annotations

import threading
import time

import pytest

from nas.cli import main
from nas.rundir import RunDir
from supernets.training import FileLock, LockBusyError
from supernets.training.ray_runner import failure_cause

from .test_device import metrics, tiny_config


def test_a_second_train_on_a_run_is_refused_naming_the_holder(tmp_path, capsys) -> None:
    config = tiny_config(tmp_path / "tiny.yaml")
    run = RunDir(tmp_path / "run")
    with FileLock(run.train_lock):
        assert main(["train", str(config), "--run-dir", str(run.root)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "in use by pid" in err
    assert not run.metrics.exists()


def test_training_waits_for_a_process_still_writing_the_run(tmp_path, capsys) -> None:
    config = tiny_config(tmp_path / "tiny.yaml", epochs=1)
    run = RunDir(tmp_path / "run")
    orphan = FileLock(run.writer_lock).acquire()
    released = []

    def finish() -> None:
        time.sleep(1.5)
        released.append(time.monotonic())
        orphan.release()

    thread = threading.Thread(target=finish)
    thread.start()
    try:
        assert main(["train", str(config), "--run-dir", str(run.root), "--no-progress"]) == 0
    finally:
        thread.join()
    assert "waiting for pid" in capsys.readouterr().out
    assert released and [r["global_epoch"] for r in metrics(run.root)] == [0, 1]


def test_lock_is_free_again_after_release_and_busy_meanwhile(tmp_path) -> None:
    path = tmp_path / "x.lock"
    first = FileLock(path).acquire()
    with pytest.raises(LockBusyError, match="in use by pid"):
        FileLock(path).acquire(timeout=0.3)
    first.release()
    FileLock(path).acquire().release()


def test_failure_cause_is_the_innermost_error_line() -> None:
    text = ("Training failed.\n[Rank 0 Error Snippet]:\nTraceback (most recent call last):\n"
            '  File "x.py", line 3, in f\nzipfile.BadZipFile: File is not a zip file\n\n'
            "The above exception was the direct cause of the following exception:\n"
            "nas.errors.UsageError: cannot read CIFAR-10 shard /d/train_2.npz: BadZipFile: File is not a zip file\n")
    assert failure_cause(text) == ("UsageError",
                                   "cannot read CIFAR-10 shard /d/train_2.npz: BadZipFile: File is not a zip file")
    assert failure_cause("[Rank 0 Error Snippet]:\nsomething odd") == ("", "something odd")
