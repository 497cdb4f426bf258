"""Ray Train wrapper: ``TorchTrainer`` with CPU workers (gloo DDP) or GPU workers (NCCL DDP), per-epoch
checkpoints, restarts; and the same loop in process, without Ray.

Every epoch each rank calls ``ray.train.report`` (a barrier); rank 0 attaches the checkpoint it has just
written atomically to the run folder. ``FailureConfig(max_failures)`` restarts the worker group, which
resumes from ``ray.train.get_checkpoint()`` (or the run folder's own copy, whichever is further along).

The console: by default Ray's and Ray Train's own output (driver log records, the workers' and the
controller's stdout and stderr) goes to a log file (``ray_log``, the run folder's ``logs/ray.log``), and this
process prints one line of its own per epoch, read from the metrics file rank 0 appends to. ``verbose``
shows Ray's output as Ray prints it (the workers print the epoch lines then).
"""

from __future__ import annotations

import functools
import json
import logging
import os
import re
import shutil
import tempfile
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from search_spaces import connect_ray, set_ray_environment

from .device import DeviceError, cuda_available
from .loop import TrainJob, epoch_summary_line, job_execution, run_job

CHECKPOINT_FILE = "train_state.pt"


@dataclass(frozen=True, slots=True)
class RaySettings:
    """Where and how wide training runs; the ``ray`` section of an experiment config."""

    # False: train in the current process on one device (``nas train --no-ray``), same checkpoints.
    enabled: bool = True
    # Address of a running cluster (``auto``, ``ray://host:10001``...); None starts Ray locally.
    address: str | None = None
    # Training workers (DDP ranks): one per GPU on GPU machines.
    num_workers: int = 1
    # CPUs reserved per worker (also its torch threads unless ``train.threads_per_worker`` says otherwise).
    cpus_per_worker: int = 1
    # GPUs per worker (0: CPU workers, gloo; 1: one GPU each, NCCL). Fractions share a GPU between workers.
    gpus_per_worker: float = 0.0
    # CPUs of the local Ray instance (None: num_workers x cpus_per_worker, at least 2).
    num_cpus: int | None = None
    # Worker-group restarts from the latest checkpoint before the run fails.
    max_failures: int = 2


class TrainingFailedError(RuntimeError):
    """Training failed more often than ``max_failures`` allows; the message holds the cause's line.

    ``user_error`` is true when the cause was bad input (a ``UsageError``, a busy lock or a diverged loss
    raised in a worker): running again will not help until the input is fixed.
    """

    def __init__(self, message: str, user_error: bool = False) -> None:
        super().__init__(message)
        self.user_error = user_error


_CAUSE = re.compile(r"^\s*(?:[\w.]+\.)?(\w*(?:Error|Exception|Interrupt)):\s*(.+)$")


def failure_cause(text: str) -> tuple[str, str]:
    """``(exception type, message)`` of the innermost cause in Ray's failure text (its last
    ``SomethingError: message`` line, not a header like ``[Rank 0 Error Snippet]:``)."""
    found = ("", "")
    for line in text.splitlines():
        match = _CAUSE.match(line)
        if match and "Error Snippet" not in line:
            found = (match.group(1), match.group(2).strip())
    if not found[0]:
        lines = [line.strip() for line in text.splitlines() if line.strip()]
        return "", lines[-1] if lines else text
    return found


def _worker(config: dict[str, Any]) -> None:
    import ray.train

    job: TrainJob = config["job"]
    context = ray.train.get_context()
    rank, world_size = context.get_world_rank(), context.get_world_size()

    def report(metrics: dict[str, Any], checkpoint_file: str | None) -> None:
        flat = {k: v for k, v in metrics.items() if not isinstance(v, list)}
        if checkpoint_file is None:
            ray.train.report(flat)
            return
        with tempfile.TemporaryDirectory(prefix="hwnas-ckpt-") as folder:
            shutil.copyfile(checkpoint_file, Path(folder) / CHECKPOINT_FILE)
            ray.train.report(flat, checkpoint=ray.train.Checkpoint.from_directory(folder))

    device_index = None
    if config["gpus_per_worker"] > 0:
        import ray.train.torch

        device_index = ray.train.torch.get_device().index
    run = functools.partial(run_job, job, rank, world_size, report, device_index=device_index,
                            threads=config["cpus_per_worker"])
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is None:
        run()
        return
    with checkpoint.as_directory() as folder:
        local = Path(tempfile.mkdtemp(prefix="hwnas-resume-")) / CHECKPOINT_FILE
        shutil.copyfile(Path(folder) / CHECKPOINT_FILE, local)
    try:
        run(ray_checkpoint_file=str(local))
    finally:
        shutil.rmtree(local.parent, ignore_errors=True)


def check_placement(job: TrainJob, settings: RaySettings) -> None:
    """Raise ``DeviceError`` now when ``train.device`` cannot be honoured by ``settings``.

    In process (and on a local Ray instance) the device is checked on this machine; on a cluster
    (``ray.address``) only against the resources asked for, since the workers run elsewhere.
    """
    device = job.settings.device
    if settings.enabled:
        if device == "cuda" and settings.gpus_per_worker <= 0:
            raise DeviceError("train.device is cuda but ray.gpus_per_worker is 0; give each worker a GPU "
                              "(ray.gpus_per_worker: 1) or use device: auto / cpu")
        if settings.gpus_per_worker > 0 and device == "cpu":
            raise DeviceError("ray.gpus_per_worker reserves GPUs that train.device: cpu leaves idle; set "
                              "gpus_per_worker: 0 or device: auto / cuda")
        if settings.address:
            return
        if settings.gpus_per_worker > 0 and not cuda_available():
            raise DeviceError(f"ray.gpus_per_worker is {settings.gpus_per_worker:g} but this machine has no "
                              "CUDA device; set it to 0, or join a cluster with GPUs through ray.address")
    job_execution(job)  # in process: raises when the device or precision is unavailable here


def run_in_process(job: TrainJob, log: Callable[[str], None] | None = print) -> None:
    """Run ``job`` in this process on one device (no Ray): same loop, checkpoints and resume."""
    run_job(job, 0, 1, None, log=log)


def ensure_ray_env() -> None:
    """Ray's environment knobs (``search_spaces.set_ray_environment``), for code that starts Ray itself."""
    set_ray_environment()


def _worker_setup() -> None:
    """Runs in every Ray worker of a training job: quiet the placement-group cleaner and, when the job names a
    log file whose folder exists on this node, send this process's stdout and stderr there."""
    logging.getLogger("ray.train.v2._internal.execution.controller.placement_group_cleaner").setLevel(logging.ERROR)
    target = os.environ.get(RAY_LOG_ENV)
    if target and Path(target).parent.is_dir():
        fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        os.dup2(fd, 1)
        os.dup2(fd, 2)
        os.close(fd)


RAY_LOG_ENV = "HWNAS_RAY_LOG"
"""Set for Ray's workers: the file their stdout and stderr go to (when its folder exists on their node)."""


def run_on_ray(job: TrainJob, settings: RaySettings, storage_path: str, name: str = "train", *,
               ray_log: str | None = None, verbose: bool = False,
               log: Callable[[str], None] | None = print) -> None:
    """Run ``job`` under Ray Train; starts (and afterwards stops) a local Ray unless one is running.

    Args:
        ray_log: where Ray's own output goes (None: Ray's session folder); unused with ``verbose``.
        verbose: show Ray's output on the console, as Ray prints it.
        log: receives this process's one-line summary of each epoch (``None``: silent).

    Raises:
        TrainingFailedError: when the workers failed more than ``settings.max_failures`` times.
    """
    ensure_ray_env()
    import ray
    import ray.train
    from ray.train.torch import TorchTrainer

    # Without the dashboard, Ray Train's placement-group cleaner cannot reach the State API and warns once
    # a second for the whole run; the hook silences that logger in every worker (and sends the worker's
    # output to ``ray_log``).
    runtime_env: dict[str, Any] = {"worker_process_setup_hook": _worker_setup}
    quiet: dict[str, Any] = {}
    handler = None
    ray_logger = logging.getLogger("ray")
    saved_handlers, saved_propagate, saved_level = ray_logger.handlers[:], ray_logger.propagate, ray_logger.level
    if not verbose:
        quiet = {"log_to_driver": False}
        if ray_log:
            Path(ray_log).parent.mkdir(parents=True, exist_ok=True)
            runtime_env["env_vars"] = {RAY_LOG_ENV: str(Path(ray_log).resolve())}
            handler = logging.FileHandler(ray_log)
            handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
            ray_logger.handlers, ray_logger.propagate = [handler], False
            ray_logger.setLevel(logging.INFO)
            quiet["configure_logging"] = False
    follower = _MetricsFollower(job.metrics_path, job.total_epochs, log) if (log and not verbose) else None
    try:
        started = connect_ray(settings.address,
                              num_cpus=settings.num_cpus or max(2, settings.num_workers * settings.cpus_per_worker),
                              runtime_env=runtime_env, **quiet)
        _fit(ray, TorchTrainer, job, settings, storage_path, name, started, follower)
    finally:
        if handler is not None:
            ray_logger.handlers, ray_logger.propagate = saved_handlers, saved_propagate
            ray_logger.setLevel(saved_level)
            handler.close()


def _fit(ray: Any, trainer_cls: Any, job: TrainJob, settings: RaySettings, storage_path: str, name: str,
         started: bool, follower: _MetricsFollower | None) -> None:
    resources = {"CPU": settings.cpus_per_worker}
    if settings.gpus_per_worker > 0:
        resources["GPU"] = settings.gpus_per_worker
    trainer = trainer_cls(
        _worker,
        train_loop_config={"job": job, "gpus_per_worker": settings.gpus_per_worker,
                           "cpus_per_worker": settings.cpus_per_worker},
        # NCCL between GPU workers, gloo between CPU workers (TorchConfig's defaults for use_gpu).
        scaling_config=ray.train.ScalingConfig(num_workers=settings.num_workers,
                                               use_gpu=settings.gpus_per_worker > 0,
                                               resources_per_worker=resources),
        run_config=ray.train.RunConfig(
            name=name,
            storage_path=storage_path,
            failure_config=ray.train.FailureConfig(max_failures=settings.max_failures),
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=1),
        ),
    )
    if follower is not None:
        follower.start()
    try:
        trainer.fit()
    except ray.train.TrainingFailedError as exc:
        kind, message = failure_cause(str(exc))
        if kind in ("UsageError", "LockBusyError", "TrainingDivergedError", "TrainingInputError", "CheckpointError"):
            raise TrainingFailedError(message, user_error=True) from exc
        raise TrainingFailedError(f"training failed after {settings.max_failures} restarts: "
                                  f"{kind + ': ' if kind else ''}{message}") from exc
    finally:
        if follower is not None:
            follower.stop()
        if started:
            ray.shutdown()


class _MetricsFollower(threading.Thread):
    """Prints the summary line of each epoch rank 0 appends to the metrics file while Ray trains."""

    def __init__(self, path: str, total_epochs: int, log: Callable[[str], None], interval_s: float = 0.5) -> None:
        super().__init__(name="hwnas-metrics", daemon=True)
        self.path, self.total, self.log, self.interval = Path(path), total_epochs, log, interval_s
        self.offset = self.path.stat().st_size if self.path.is_file() else 0  # earlier epochs were shown before
        self._done = threading.Event()

    def run(self) -> None:
        while not self._done.wait(self.interval):
            self._drain()

    def stop(self) -> None:
        self._done.set()
        self.join(timeout=5)
        self._drain()

    def _drain(self) -> None:
        try:
            size = self.path.stat().st_size
        except OSError:
            return
        if size < self.offset:  # rewritten (a resumed run trims rows past its checkpoint)
            self.offset = size
        if size == self.offset:
            return
        with open(self.path, "rb") as handle:
            handle.seek(self.offset)
            data = handle.read(size - self.offset)
        complete = data[: data.rfind(b"\n") + 1]
        self.offset += len(complete)
        for line in complete.decode("utf-8", "replace").splitlines():
            try:
                row = json.loads(line)
                self.log(epoch_summary_line(row, self.total))
            except (ValueError, KeyError, TypeError):
                continue  # not an epoch row
