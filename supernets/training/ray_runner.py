"""Ray Train wrapper: ``TorchTrainer`` with CPU workers (gloo DDP) or GPU workers (NCCL DDP), per-epoch
checkpoints, restarts; and the same loop in process, without Ray.

Every epoch each rank calls ``ray.train.report`` (a barrier); rank 0 attaches the checkpoint it has just
written atomically to the run folder. ``FailureConfig(max_failures)`` restarts the worker group, which
resumes from ``ray.train.get_checkpoint()`` (or the run folder's own copy, whichever is further along).
"""

from __future__ import annotations

import functools
import re
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from search_spaces import connect_ray, set_ray_environment

from .device import DeviceError, cuda_available
from .loop import TrainJob, job_execution, run_job

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

    ``user_error`` is true when the cause was bad input (a ``UsageError`` or a busy lock raised in a
    worker): running again will not help until the input is fixed.
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


def _quiet_placement_group_cleaner() -> None:
    import logging

    logging.getLogger("ray.train.v2._internal.execution.controller.placement_group_cleaner").setLevel(logging.ERROR)


def run_on_ray(job: TrainJob, settings: RaySettings, storage_path: str, name: str = "train") -> None:
    """Run ``job`` under Ray Train; starts (and afterwards stops) a local Ray unless one is running.

    Raises:
        TrainingFailedError: when the workers failed more than ``settings.max_failures`` times.
    """
    ensure_ray_env()
    import ray
    import ray.train
    from ray.train.torch import TorchTrainer

    # Without the dashboard, Ray Train's placement-group cleaner cannot reach the State API and warns once
    # a second for the whole run; the hook silences that logger in every worker.
    started = connect_ray(settings.address,
                          num_cpus=settings.num_cpus or max(2, settings.num_workers * settings.cpus_per_worker),
                          runtime_env={"worker_process_setup_hook": _quiet_placement_group_cleaner})
    resources = {"CPU": settings.cpus_per_worker}
    if settings.gpus_per_worker > 0:
        resources["GPU"] = settings.gpus_per_worker
    trainer = TorchTrainer(
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
    try:
        trainer.fit()
    except ray.train.TrainingFailedError as exc:
        kind, message = failure_cause(str(exc))
        if kind in ("UsageError", "LockBusyError"):
            raise TrainingFailedError(message, user_error=True) from exc
        raise TrainingFailedError(f"training failed after {settings.max_failures} restarts: "
                                  f"{kind + ': ' if kind else ''}{message}") from exc
    finally:
        if started:
            ray.shutdown()
