"""The training stage as library functions: train an experiment's supernet (on Ray Train or in this process),
or import a published one when the config names it. Resumes by itself, never retrains; raises the project's
errors (``UsageError`` for bad input, ``RetryableError`` when running it again continues).
"""

from __future__ import annotations

import dataclasses
import functools
import os
import time
from pathlib import Path
from typing import Any

from .config import ExperimentConfig, differences_note
from .data import check_split_sizes, load_dataset, num_classes, record_data
from .errors import RetryableError, UsageError
from .rundir import RunDir

FAIL_AT_EPOCH_ENV = "HWNAS_FAIL_AT_EPOCH"
FAIL_MARKER_ENV = "HWNAS_FAIL_MARKER"
"""Test hook: a worker raises once after the checkpoint of that global epoch (the marker file makes it once)."""


def _fmt(value: Any) -> str:
    return f"{100 * value:.1f}%" if isinstance(value, float) else "-"


def _print_flushed(line: str) -> None:
    print(line, flush=True)


def import_supernet(config: ExperimentConfig, run: RunDir) -> None:
    """The ``train`` stage of a config that imports its supernet (``supernet: {import: ofa, ...}``)."""
    from .ofa_zoo import import_for_config

    run.check_writable()
    done = import_for_config(config.supernet, config.space, run)
    run.create()
    run.write_config(config)
    for record in done:
        print(f"imported {record.source} (sha256 {record.sha256[:16]}...) into {run.root}")
    if not done:
        also = " and predictor" if config.supernet.accuracy_predictor else ""
        print(f"run {run.root} already holds the imported supernet{also}")


def train(config: ExperimentConfig, run: RunDir, progress: bool = True, verbose: bool = False,
          quiet: bool = False) -> None:
    """Train (or finish training) the supernet of ``config`` into ``run``.

    On Ray, Ray's own output goes to ``RUN/logs/ray.log`` and one line per epoch is printed here;
    ``verbose`` shows Ray's output instead; ``quiet`` prints no epoch lines.

    A config with a ``supernet`` section imports it instead (nothing is trained).

    Raises:
        UsageError: bad input found before any work (a damaged checkpoint, another config's run, a busy run,
            no such device, out of device memory).
        RetryableError: training stopped (a worker died); running it again continues from the last epoch.
    """
    if config.supernet is not None:
        import_supernet(config, run)
        return
    from supernets.training import (
        CheckpointError,
        DeviceError,
        FileLock,
        LockBusyError,
        TrainJob,
        check_placement,
        load_train_state,
        read_supernet_file,
    )
    from supernets.training.checkpoint import check_identity

    from .accuracy import check_run_supernet

    space = config.get_space().with_num_classes(num_classes(config.dataset))
    phases = config.train.resolved_phases(space)
    total = sum(p.epochs for p in phases)
    if run.supernet_checkpoint.is_file():  # what every later stage checks: this config's weights
        done = ("holds a supernet imported from Once-for-All's zoo" if check_run_supernet(config, run)
                else f"is already trained ({total} epochs)")
        print(f"run {run.root} {done}; supernet: {run.supernet_checkpoint}")
        return
    position = "from the start"
    try:
        if run.latest_checkpoint.is_file():
            state = load_train_state(run.latest_checkpoint, space.name, config.config_hash, [p.epochs for p in phases])
            position = f"after epoch {state['completed_epochs']} of {total}"
        if run.teacher_checkpoint.is_file():  # a damaged teacher would fail every worker at the next phase
            check_identity(read_supernet_file(run.teacher_checkpoint), run.teacher_checkpoint, space.name,
                           config.config_hash)
    except CheckpointError as exc:
        raise UsageError(str(exc) + differences_note(run.config_copy, config)) from exc
    run.check_writable()  # a folder where supernet.pt goes would otherwise be found after the last epoch
    fail_at = os.environ.get(FAIL_AT_EPOCH_ENV)
    dataset = config.dataset  # workers run elsewhere: give them an absolute data path
    if dataset.path:
        dataset = dataclasses.replace(dataset, path=str(Path(dataset.path).expanduser().resolve()))
    job = TrainJob(
        space=space, settings=config.train, phases=phases, seed=config.seed, config_hash=config.config_hash,
        latest_path=str(run.latest_checkpoint), teacher_path=str(run.teacher_checkpoint),
        supernet_path=str(run.supernet_checkpoint), metrics_path=str(run.metrics),
        make_data=functools.partial(load_dataset, dataset, max(space.resolutions), config.seed),
        fail_at_epoch=int(fail_at) if fail_at else None, fail_marker=os.environ.get(FAIL_MARKER_ENV),
        progress=progress, writer_lock_path=str(run.writer_lock),
    )
    workers = config.ray.num_workers if config.ray.enabled else 1
    check_split_sizes(config.dataset, config.seed, {
        "train": (config.train.batch_size * workers,
                  f"one batch of train.batch_size {config.train.batch_size} on each of {workers} worker(s)"),
        "val": (1, "the validation after every epoch")})
    try:
        check_placement(job, config.ray)
    except DeviceError as exc:
        raise UsageError(str(exc)) from exc
    try:
        lock = FileLock(run.train_lock, f"run {run.root}").acquire()
    except LockBusyError as exc:
        raise UsageError(str(exc)) from exc
    except OSError as exc:  # the run folder cannot be made (checked above as far as permissions tell)
        raise UsageError(f"cannot create run folder {run.root} ({exc.strerror or exc}); choose another "
                         f"--run-dir") from exc
    try:
        record_data(run.data_record, config.dataset)  # kept on the first start, checked on every resume
        _train_locked(config, run, job, space, phases, total, position, verbose, quiet)
    finally:
        lock.release()


def _train_locked(config: ExperimentConfig, run: RunDir, job: Any, space: Any, phases: Any, total: int,
                  position: str, verbose: bool, quiet: bool) -> None:
    import torch

    from supernets.training import (
        LockBusyError,
        TrainingDivergedError,
        TrainingFailedError,
        read_metrics,
        run_in_process,
        run_on_ray,
    )
    from supernets.training.loop import TrainingInputError

    run.create()
    run.write_config(config)
    where = "" if verbose or not config.ray.enabled else f"; Ray's own output: {run.logs / 'ray.log'} (-v shows it)"
    print(f"training {space.name} on {config.dataset.kind} ({config.train.strategy}, {len(phases)} "
          f"phase{'s' * (len(phases) != 1)}, "
          f"{total} epochs) in {run.root}, {position}{where}", flush=True)
    started = time.perf_counter()
    try:
        if config.ray.enabled:
            run_on_ray(job, config.ray, storage_path=str(run.ray_storage), name="train",
                       ray_log=str(run.logs / "ray.log"), verbose=verbose, log=None if quiet else _print_flushed)
        else:
            run_in_process(job, log=None if quiet else _print_flushed)
    except torch.OutOfMemoryError as exc:
        raise UsageError(f"out of device memory at train.batch_size {config.train.batch_size}: "
                         f"{str(exc).splitlines()[0]}; use a smaller train.batch_size (in a new run folder: the batch "
                         f"size is part of a run's identity)") from exc
    except (LockBusyError, TrainingDivergedError, TrainingInputError) as exc:
        raise UsageError(str(exc)) from exc
    except TrainingFailedError as exc:
        if exc.user_error:
            raise UsageError(str(exc)) from exc
        raise RetryableError(f"{exc}; run the same command again to continue from the last checkpoint") from exc
    if not run.supernet_checkpoint.is_file():
        raise RetryableError("training ended without writing the supernet (see the Ray log above); run the same "
                             "command again to continue from the last checkpoint")
    rows = read_metrics(run.metrics)
    last = rows[-1] if rows else {}
    print(f"done in {time.perf_counter() - started:.0f} s: val accuracy largest {_fmt(last.get('val_acc_largest'))}, "
          f"smallest {_fmt(last.get('val_acc_smallest'))}, random mean {_fmt(last.get('val_acc_random_mean'))}; "
          f"supernet: {run.supernet_checkpoint}")
