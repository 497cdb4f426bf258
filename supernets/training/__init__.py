"""Supernet training: schedule as data, progressive shrinking and the sandwich rule, distillation, BN
recalibration, checkpoints, the Ray Train wrapper."""

from __future__ import annotations

from .bn import recalibrate_bn
from .checkpoint import (
    CheckpointError,
    atomic_torch_save,
    load_supernet_file,
    load_train_state,
    read_supernet_file,
    save_supernet,
)
from .device import DEVICES, PRECISIONS, DeviceError, Execution
from .distributed import GRADIENT_SYNCS
from .evaluate import DataSource, accuracy, resize, subnet_accuracy
from .lock import FileLock, LockBusyError
from .loop import TrainingDivergedError, TrainJob, distillation_loss, eval_archs, read_metrics, run_job
from .ray_runner import RaySettings, TrainingFailedError, check_placement, ensure_ray_env, run_in_process, run_on_ray
from .schedule import (
    ELASTIC_DIMENSIONS,
    SANDWICH_SUBSETS,
    STRATEGIES,
    Phase,
    Position,
    TrainSettings,
    check_recipe,
    make_phase,
    ofa_schedule,
    phase_arch,
    sandwich_phase,
    sandwich_schedule,
    sandwich_subnet_lr,
    step_archs,
    validate_phase,
)

__all__ = [
    "DEVICES",
    "PRECISIONS",
    "DeviceError",
    "Execution",
    "FileLock",
    "LockBusyError",
    "ELASTIC_DIMENSIONS",
    "GRADIENT_SYNCS",
    "SANDWICH_SUBSETS",
    "STRATEGIES",
    "CheckpointError",
    "DataSource",
    "Phase",
    "Position",
    "RaySettings",
    "TrainJob",
    "TrainingDivergedError",
    "TrainSettings",
    "TrainingFailedError",
    "accuracy",
    "atomic_torch_save",
    "check_placement",
    "check_recipe",
    "distillation_loss",
    "ensure_ray_env",
    "eval_archs",
    "load_supernet_file",
    "load_train_state",
    "make_phase",
    "ofa_schedule",
    "phase_arch",
    "read_metrics",
    "read_supernet_file",
    "recalibrate_bn",
    "resize",
    "run_in_process",
    "run_job",
    "run_on_ray",
    "sandwich_phase",
    "sandwich_schedule",
    "sandwich_subnet_lr",
    "save_supernet",
    "step_archs",
    "subnet_accuracy",
    "validate_phase",
]
