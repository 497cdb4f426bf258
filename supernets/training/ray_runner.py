"""Ray Train wrapper: ``TorchTrainer`` with CPU workers (gloo DDP), per-epoch checkpoints, restarts.

Every epoch each rank calls ``ray.train.report`` (a barrier); rank 0 attaches the checkpoint it has just
written atomically to the run folder. ``FailureConfig(max_failures)`` restarts the worker group, which
resumes from ``ray.train.get_checkpoint()`` (or the run folder's own copy, whichever is further along).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .loop import TrainJob, run_job

CHECKPOINT_FILE = "train_state.pt"


@dataclass(frozen=True, slots=True)
class RaySettings:
    """Where and how wide training runs; the ``ray`` section of an experiment config."""

    # Address of a running cluster (``auto``, ``ray://host:10001``...); None starts Ray locally.
    address: str | None = None
    # Training workers (DDP ranks).
    num_workers: int = 1
    # CPUs reserved per worker (also its torch threads).
    cpus_per_worker: int = 1
    # CPUs of the local Ray instance (None: num_workers x cpus_per_worker, at least 2).
    num_cpus: int | None = None
    # Worker-group restarts from the latest checkpoint before the run fails.
    max_failures: int = 2


class TrainingFailedError(RuntimeError):
    """Training failed more often than ``max_failures`` allows; the message holds the first error line."""


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

    checkpoint = ray.train.get_checkpoint()
    if checkpoint is None:
        run_job(job, rank, world_size, report)
        return
    with checkpoint.as_directory() as folder:
        local = Path(tempfile.mkdtemp(prefix="hwnas-resume-")) / CHECKPOINT_FILE
        shutil.copyfile(Path(folder) / CHECKPOINT_FILE, local)
    try:
        run_job(job, rank, world_size, report, ray_checkpoint_file=str(local))
    finally:
        shutil.rmtree(local.parent, ignore_errors=True)


def ensure_ray_env() -> None:
    """The environment knobs of ``ENVIRONMENT.md``: no auth token locally, fast report barriers.

    Also normal CPU priority for Ray's worker processes: Ray starts them at nice 15 by default, so on a
    shared machine a training (or measurement) worker yields its core to every ordinary process.
    """
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.1")
    os.environ.setdefault("RAY_worker_niceness", "0")


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

    started = False
    if not ray.is_initialized():
        if settings.address:
            ray.init(address=settings.address)
        else:
            cpus = settings.num_cpus or max(2, settings.num_workers * settings.cpus_per_worker)
            # Without the dashboard, Ray Train's placement-group cleaner cannot reach the State API and
            # warns once a second for the whole run; the hook silences that logger in every worker.
            ray.init(num_cpus=cpus, include_dashboard=False,
                     runtime_env={"worker_process_setup_hook": _quiet_placement_group_cleaner})
        started = True
    trainer = TorchTrainer(
        _worker,
        train_loop_config={"job": job},
        scaling_config=ray.train.ScalingConfig(num_workers=settings.num_workers, use_gpu=False,
                                               resources_per_worker={"CPU": settings.cpus_per_worker}),
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
        first = next((line for line in str(exc).splitlines() if "Error" in line and line.strip()), str(exc))
        raise TrainingFailedError(f"training failed after {settings.max_failures} restarts: {first.strip()}") \
            from exc
    finally:
        if started:
            ray.shutdown()
