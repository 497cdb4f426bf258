"""The one training loop: every phase of every strategy runs through ``run_job``, driven by phase data.

A phase names its elastic dimensions; a step samples the subnets to train from them (``step_archs``), adds
distillation from a frozen teacher (progressive shrinking) or from the largest subnet of the same step
(sandwich rule), and sums the gradients. After every epoch rank 0 evaluates the largest, the smallest and
a fixed seeded set of random subnets (batch norms recalibrated), appends a line to the metrics file and
writes the checkpoint; every rank then reports (a barrier under Ray Train).
"""

from __future__ import annotations

import json
import os
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from search_spaces import SearchSpace, keep_copy, largest, progress_bar, sample, short_text, smallest

from .checkpoint import (
    REMEDY,
    CheckpointError,
    atomic_torch_save,
    check_identity,
    load_train_state,
    load_weights,
    read_supernet_file,
    save_supernet,
    train_state,
)
from .device import Execution
from .distributed import wrap_for_ranks
from .evaluate import DataSource, resize, subnet_accuracy
from .lock import FileLock
from .schedule import Phase, Position, TrainSettings, resolutions, step_archs

Reporter = Callable[[dict[str, Any], "str | None"], None]
"""Called by every rank after each epoch with the metrics and (rank 0 only) the checkpoint file."""


@dataclass(frozen=True)
class TrainJob:
    """Everything a training worker needs; plain data, sent to Ray workers as is."""

    # The space, with the dataset's number of classes.
    space: SearchSpace
    settings: TrainSettings
    # The resolved schedule (``settings.resolved_phases(space)``).
    phases: tuple[Phase, ...]
    seed: int
    # Hash of the config sections that define the run; stored in and checked against every checkpoint.
    config_hash: str
    # Absolute paths of the run folder's files (owned by ``nas.rundir.RunDir``).
    latest_path: str
    teacher_path: str
    supernet_path: str
    metrics_path: str
    # Builds the dataset inside each worker (a picklable callable, e.g. ``functools.partial``).
    make_data: Callable[[], DataSource]
    # Test hook: raise once after the checkpoint of this global epoch, if ``fail_marker`` does not exist.
    fail_at_epoch: int | None = None
    fail_marker: str | None = None
    progress: bool = True
    # Lock file held by rank 0 while it trains (None: no lock); see ``supernets.training.lock``.
    writer_lock_path: str | None = None

    @property
    def total_epochs(self) -> int:
        return sum(p.epochs for p in self.phases)


class TrainingDivergedError(RuntimeError):
    """The training loss became NaN or infinite: running again repeats it; the settings must change. Raised
    before the epoch is checkpointed, so the last good checkpoint stays."""


class TrainingInputError(ValueError):
    """The data and the settings do not fit (a training split smaller than one batch): running again fails the
    same way, so it is bad input to report in one line, not a failure to retry. ``nas.training`` refuses it
    before the run folder is made; this is the backstop in the worker."""


def _check_finite(total: torch.Tensor, count: int, phase: Phase, position: Position, step: int) -> float:
    """The mean loss so far (a host sync); ``TrainingDivergedError`` when it is not finite."""
    mean = float(total) / max(count, 1)
    if not np.isfinite(mean):
        raise TrainingDivergedError(
            f"training diverged: the loss became {mean} in phase {phase.name!r}, epoch {position.epoch + 1}, by step "
            f"{step + 1}; the last checkpoint is kept; lower the learning rate (this phase's: {phase.lr:g}) or the "
            f"subnets per step, in a new run folder")
    return mean


def distillation_loss(student: torch.Tensor, teacher: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """Cross-entropy of the student against the teacher's softened distribution (times T^2)."""
    target = F.softmax(teacher / temperature, dim=1)
    loss = -(target * F.log_softmax(student / temperature, dim=1)).sum(1).mean()
    return loss * temperature**2


def subnet_loss(out: torch.Tensor, y: torch.Tensor, soft: torch.Tensor | None, phase: Phase,
                settings: TrainSettings, other: bool) -> torch.Tensor:
    """The loss of one subnet of a step: cross-entropy on the labels plus the phase's distillation from ``soft``
    (the teacher's or the largest subnet's outputs; ``None``: none yet). ``other``: a sandwich subnet other than
    the largest, which learns from the distillation alone under ``sandwich_labels: largest``."""
    distill = soft is not None and phase.distill_weight > 0
    kd = phase.distill_weight * distillation_loss(out, soft, settings.kd_temperature) if distill else None
    if other and settings.sandwich_labels == "largest" and kd is not None:
        return kd
    loss = F.cross_entropy(out, y, label_smoothing=settings.label_smoothing)
    return loss + kd if kd is not None else loss


def _set_dropout(dropouts: list[nn.Module], enabled: bool) -> None:
    for module in dropouts:
        module.train(enabled)


def make_optimizer(model: nn.Module, phase: Phase, settings: TrainSettings) -> torch.optim.Optimizer:
    """SGD over ``model``: weight decay on convolution and linear weights only; the elastic kernels' transform
    matrices (``transform_*``) in a group of their own at ``settings.kernel_transform_lr`` times the phase's
    rate, when that is not 1 (each matrix is shared by every channel of its convolution, so its gradient is a
    sum over them)."""
    named = list(model.named_parameters())
    scaled = settings.kernel_transform_lr != 1.0
    transforms = [p for n, p in named if scaled and n.rsplit(".", 1)[-1].startswith("transform_")]
    ids = {id(p) for p in transforms}
    decay = [p for _, p in named if p.ndim > 1 and id(p) not in ids]
    no_decay = [p for _, p in named if p.ndim <= 1]
    groups = [{"params": decay, "weight_decay": settings.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    if transforms:
        groups.append({"params": transforms, "weight_decay": settings.weight_decay,
                       "lr": phase.lr * settings.kernel_transform_lr})
    return torch.optim.SGD(groups, lr=phase.lr, momentum=settings.momentum, nesterov=settings.momentum > 0)


def eval_archs(space: SearchSpace, settings: TrainSettings) -> list[tuple[str, Any]]:
    """The subnets evaluated after every epoch: largest, smallest, and a fixed seeded random set."""
    randoms = sample(space, settings.eval_random_subnets, settings.eval_seed)
    return [("largest", largest(space)), ("smallest", smallest(space))] + [
        (f"random_{i}", arch) for i, arch in enumerate(randoms)
    ]


def _epoch_seed(seed: int, phase: int, epoch: int) -> int:
    return int(np.random.default_rng([seed, phase, epoch]).integers(2**31))


def _load_teacher(job: TrainJob) -> nn.Module:
    from supernets import build_supernet, extract

    data = read_supernet_file(job.teacher_path)
    check_identity(data, job.teacher_path, job.space.name, job.config_hash)
    full = build_supernet(job.space)
    load_weights(full, data["state_dict"], job.teacher_path, job.space.name)
    teacher = extract(full, largest(job.space)).eval()
    for p in teacher.parameters():
        p.requires_grad_(False)
    return teacher


def _read_metrics(path: str | os.PathLike[str]) -> tuple[list[dict[str, Any]], int, bool]:
    """``(rows, damaged lines, unterminated)`` of a metrics file: every line that is a JSON object is a row; any
    other line (bad bytes, garbage, a list) is damaged, except a last line without its newline (unterminated:
    torn by a kill mid-write, dropped unless it is a whole object; a line appended to it would be lost)."""
    try:
        data = Path(path).read_bytes()
    except FileNotFoundError:
        return [], 0, False
    lines = data.split(b"\n")
    torn = lines.pop() != b""  # the part after the last newline: empty in a whole file
    rows, damaged = [], 0
    for line in lines:
        if not line.strip():
            continue
        try:
            row = json.loads(line.decode("utf-8"))
        except (ValueError, RecursionError):  # UnicodeDecodeError and JSONDecodeError are ValueErrors
            row = None
        if isinstance(row, dict):
            rows.append(row)
        else:
            damaged += 1
    if torn:
        try:
            row = json.loads(data[data.rfind(b"\n") + 1:].decode("utf-8"))
        except (ValueError, RecursionError):
            row = None
        if isinstance(row, dict):  # whole but for its newline (written by hand): keep it
            rows.append(row)
    return rows, damaged, torn


def read_metrics(path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """The metrics rows of a run, read tolerantly.

    The metrics file is a log of what each epoch scored; the run's state is in its checkpoints. So a damaged
    line (not a JSON object) is skipped with a warning instead of raising: raising would make every resume of
    the run fail on the log until someone edits it by hand, while skipping loses nothing the training needs
    (only that epoch's scores, which ``_trim_metrics`` keeps in a copy). A torn last line from a kill mid-write
    is dropped silently, as before.
    """
    rows, damaged, _ = _read_metrics(path)
    if damaged:
        warnings.warn(f"{path}: {damaged} damaged line(s) skipped (not JSON objects); the scores of those epochs "
                      f"are missing from the metrics, training is not affected", stacklevel=2)
    return rows


def _trim_metrics(path: str, completed: int) -> None:
    """Keep one line per epoch already covered by the checkpoint (a kill may leave extra lines or a torn one;
    new lines must not be appended to a torn one).

    Damaged lines are dropped too, after a warning; the file as it was is kept first as
    ``metrics.jsonl.damaged`` (``.damaged.1``, ... when that exists), so nothing it held is lost.
    """
    rows, damaged, torn = _read_metrics(path)
    kept: dict[int, dict[str, Any]] = {}
    for row in rows:
        g = row.get("global_epoch")
        if isinstance(g, int) and not isinstance(g, bool) and 0 <= g < completed and g not in kept:
            kept[g] = row
    if len(kept) == len(rows) and not damaged and not torn:
        return
    if damaged:
        backup = keep_copy(path, "damaged")
        warnings.warn(f"{path}: {damaged} damaged line(s) dropped (not JSON objects); the file as it was is kept "
                      f"as {backup}; training is not affected", stacklevel=2)
    text = "".join(json.dumps(kept[g], sort_keys=True) + "\n" for g in sorted(kept))
    tmp = f"{path}.tmp"
    Path(tmp).write_text(text)
    os.replace(tmp, path)


def _append_metrics(path: str, row: dict[str, Any]) -> None:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as handle:
        handle.write(json.dumps(row, sort_keys=True) + "\n")
        handle.flush()
        os.fsync(handle.fileno())


def train_epoch(job: TrainJob, model: nn.Module, teacher: nn.Module | None, phase: Phase, position: Position,
                data: DataSource, optimizer: torch.optim.Optimizer, scheduler: Any, steps: int,
                rank: int, world_size: int, execution: Execution | None = None,
                scaler: torch.amp.GradScaler | None = None, sync: Callable[[], None] | None = None) -> float:
    """One epoch of ``phase`` on ``execution``'s device and precision; returns the mean training loss per
    subnet."""
    execution = execution or Execution(torch.device("cpu"))
    settings, space = job.settings, job.space
    rng = np.random.default_rng([job.seed, position.phase, position.epoch, 7])  # same subnets on all ranks
    batches = data.train_batches(settings.batch_size, _epoch_seed(job.seed, position.phase, position.epoch),
                                 rank, world_size)
    allowed = resolutions(space, phase)
    model.train()
    sandwich = settings.strategy == "sandwich"
    # Switched off for the other subnets of a sandwich step under ``sandwich_dropout: largest``, back on after.
    dropouts = [m for m in model.modules() if isinstance(m, nn.Dropout) and m.p > 0] \
        if sandwich and settings.sandwich_dropout == "largest" else []
    total = torch.zeros((), device=execution.device)  # summed on the device: no host sync per step
    count = 0
    bar = progress_bar(job.progress and rank == 0, total=steps, leave=False, mininterval=2.0, dynamic_ncols=True,
                       desc=f"{phase.name} {position.epoch + 1}/{phase.epochs}")
    for step, (x, y) in zip(range(steps), batches):
        resolution = int(allowed[int(rng.integers(len(allowed)))])
        x = resize(execution.batch(x), resolution)
        y = y.to(execution.device, non_blocking=True)
        archs = step_archs(space, phase, settings.strategy, rng, resolution)
        optimizer.zero_grad(set_to_none=True)
        soft = None
        if teacher is not None:
            with torch.no_grad(), execution.autocast():
                soft = teacher(x).float()
        for i, arch in enumerate(archs):
            if dropouts and i < 2:
                _set_dropout(dropouts, i == 0)
            with execution.autocast():
                out = model(x, arch).float()
            loss = subnet_loss(out, y, soft, phase, settings, sandwich and i > 0)
            if sandwich and i == 0:
                soft = out.detach()  # in-place distillation: the largest teaches the others
            (scaler.scale(loss) if scaler is not None else loss).backward()
            total += loss.detach()
            count += 1
        if sync is not None:
            sync()  # one all-reduce of the step's summed gradients
        if scaler is not None:
            scaler.step(optimizer)
            scaler.update()
        else:
            optimizer.step()
        scheduler.step()
        bar.update(1)
        if bar.n % 20 == 0 or step == steps - 1:  # a host sync: only now and then
            bar.set_postfix(loss=f"{_check_finite(total, count, phase, position, step):.3f}", refresh=False)
    bar.close()
    _set_dropout(dropouts, True)
    return _check_finite(total, count, phase, position, steps - 1)


def evaluate(job: TrainJob, supernet: nn.Module, data: DataSource,
             execution: Execution | None = None) -> dict[str, Any]:
    """Validation accuracy of the evaluation subnets (batch norms recalibrated on copies)."""
    s = job.settings
    accs = {name: subnet_accuracy(supernet, arch, data, "val", s.bn_recal_images, s.max_val_images,
                                  seed=job.seed, execution=execution)
            for name, arch in eval_archs(job.space, s)}
    randoms = [v for k, v in accs.items() if k.startswith("random_")]
    return {
        "val_acc_largest": accs["largest"],
        "val_acc_smallest": accs["smallest"],
        "val_acc_random": randoms,
        "val_acc_random_mean": float(np.mean(randoms)) if randoms else None,
    }


def _resume_state(job: TrainJob, ray_checkpoint_file: str | None) -> tuple[str, dict[str, Any]] | None:
    """``(path, state)`` of the furthest training checkpoint (Ray's or the run's), its fields checked against
    the job's schedule by ``load_train_state``; None to start from the beginning."""
    candidates = [f for f in (ray_checkpoint_file, job.latest_path) if f and Path(f).exists()]
    epochs = [p.epochs for p in job.phases]
    states = [(f, load_train_state(f, job.space.name, job.config_hash, epochs)) for f in candidates]
    return max(states, key=lambda s: s[1]["completed_epochs"]) if states else None


def _restore_optimizer(path: str, state: dict[str, Any], optimizer: torch.optim.Optimizer,
                       scheduler: torch.optim.lr_scheduler.LRScheduler) -> None:
    """Load the optimizer and scheduler states of a checkpoint taken mid-phase (``path``: where it was read);
    ``CheckpointError`` when they are absent or do not fit this phase's optimizer."""
    for key, target in (("optimizer", optimizer), ("scheduler", scheduler)):
        if state[key] is None:
            raise CheckpointError(f"checkpoint {path} is damaged: field {key!r} is None in the middle of phase "
                                  f"{state['phase']}; {REMEDY}")
        try:
            target.load_state_dict(state[key])
        except (KeyError, TypeError, ValueError, RuntimeError, IndexError) as exc:
            reason = short_text(str(exc)) or type(exc).__name__
            raise CheckpointError(f"checkpoint {path} is damaged: field {key!r} does not fit phase "
                                  f"{state['phase']}'s {key} ({reason}); {REMEDY}") from exc


def default_threads() -> int:
    """The CPUs this process may run on (its affinity mask; Ray narrows it to the worker's share)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


def job_execution(job: TrainJob, device_index: int | None = None) -> Execution:
    """The resolved device, precision and memory format of ``job`` in this process."""
    s = job.settings
    return Execution.resolve(s.device, s.precision, s.channels_last, device_index)


def epoch_summary_line(row: dict[str, Any], total_epochs: int) -> str:
    def pct(key: str) -> str:
        value = row.get(key)
        return f"{100 * value:.1f}%" if isinstance(value, float) else "-"

    return (f"epoch {row['global_epoch'] + 1}/{total_epochs} {row['phase']}: loss {row['train_loss']:.3f}, "
            f"lr {row['lr']:.4g}, {row['train_images_per_s']:.0f} img/s, {row['train_time_s']:.1f} s; "
            f"val largest {pct('val_acc_largest')}, smallest {pct('val_acc_smallest')}, "
            f"random {pct('val_acc_random_mean')} ({row.get('eval_time_s', 0):.1f} s)")


WRITER_WAIT_S = 120.0
"""How long rank 0 waits for the writer lock of a run (an orphaned worker of a killed run stops in seconds)."""


def run_job(job: TrainJob, rank: int = 0, world_size: int = 1, reporter: Reporter | None = None,
            ray_checkpoint_file: str | None = None, device_index: int | None = None,
            threads: int | None = None, log: Callable[[str], None] | None = print) -> None:
    """Train (or continue training) the supernet of ``job`` on this rank, to ``job.supernet_path``.

    Args:
        device_index: the CUDA device of this rank (``None``: the current one).
        threads: torch CPU threads when ``train.threads_per_worker`` is unset (default: this process's CPUs).
        log: receives rank 0's one-line summary of every epoch (``None``: silent).

    Raises:
        LockBusyError: another process kept writing this run's checkpoints for ``WRITER_WAIT_S``.
    """
    lock = None
    if rank == 0 and job.writer_lock_path:
        lock = FileLock(job.writer_lock_path, "the run's checkpoints").acquire(
            WRITER_WAIT_S, waiting="waiting for {holder}, which still writes this run's checkpoints, to stop")
    try:
        _run_job(job, rank, world_size, reporter, ray_checkpoint_file, device_index, threads, log)
    finally:
        if lock is not None:
            lock.release()


def _run_job(job: TrainJob, rank: int, world_size: int, reporter: Reporter | None,
             ray_checkpoint_file: str | None, device_index: int | None, threads: int | None,
             log: Callable[[str], None] | None) -> None:
    from supernets import build_supernet, sort_channels

    settings = job.settings
    execution = job_execution(job, device_index)
    if world_size > 1:  # DDP keeps the parameters' layout it was built with: one format for every phase
        execution = execution.for_shapes(True)
    torch.set_num_threads(max(1, settings.threads_per_worker or threads or default_threads()))
    torch.manual_seed(job.seed)  # identical initial weights on every rank
    supernet = build_supernet(job.space)
    resumed = _resume_state(job, ray_checkpoint_file)
    state_path, state = resumed if resumed is not None else ("", None)
    position = Position()
    if state is not None:
        load_weights(supernet, state["model"], state_path, job.space.name)
        torch.set_rng_state(state["torch_rng"])
        position = Position(state["phase"], state["epoch"])
    else:
        if settings.zero_init_residual:
            supernet.zero_init_residuals()
        torch.manual_seed(job.seed + 1 + rank)
    execution.module(supernet)
    if rank == 0:
        _trim_metrics(job.metrics_path, position.global_epoch(job.phases))
    data = job.make_data()
    if hasattr(data, "to"):
        data.to(execution.device)
    steps = data.steps_per_epoch(settings.batch_size, world_size)
    if settings.max_steps_per_epoch:
        steps = min(steps, settings.max_steps_per_epoch)
    if steps < 1:
        raise TrainingInputError(f"the training split is smaller than one batch of "
                                 f"train.batch_size {settings.batch_size} on each of {world_size} worker(s); "
                                 f"lower train.batch_size or use more training images")
    if rank == 0 and log is not None:
        log(f"training on {execution.describe()}, {world_size} worker{'s' if world_size > 1 else ''}, "
            f"{steps} steps of {settings.batch_size} images per worker per epoch")

    # Channel sorting permutes in place, so one wrapper serves all phases.
    model, sync = wrap_for_ranks(supernet, world_size, settings.gradient_sync, execution.device)
    while position.phase < len(job.phases):
        p, phase = position.phase, job.phases[position.phase]
        if position.epoch == 0 and phase.sort_channels:
            sort_channels(supernet)
        varying = any(dimension != "resolutions" for dimension, _ in phase.elastic)
        phase_execution = execution.for_shapes(varying)
        phase_execution.module(supernet)
        teacher = None
        if settings.strategy == "progressive_shrinking" and p > 0 and phase.distill_weight > 0:
            teacher = execution.module(_load_teacher(job))
            if settings.compile:
                teacher = torch.compile(teacher)
        optimizer = make_optimizer(supernet, phase, settings)
        scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=phase.epochs * steps)
        scaler = execution.grad_scaler()
        if state is not None and state["phase"] == p and state["epoch"] > 0:
            _restore_optimizer(state_path, state, optimizer, scheduler)
        state = None
        for _ in range(position.epoch, phase.epochs):
            started = time.perf_counter()
            lr = optimizer.param_groups[0]["lr"]
            loss = train_epoch(job, model, teacher, phase, position, data, optimizer, scheduler, steps,
                               rank, world_size, phase_execution, scaler, sync)
            execution.synchronize()
            train_time = time.perf_counter() - started
            g = position.global_epoch(job.phases)
            row: dict[str, Any] = {"phase": phase.name, "phase_index": p, "epoch": position.epoch,
                                   "global_epoch": g, "train_loss": loss, "lr": lr, "steps": steps,
                                   "train_time_s": round(train_time, 3),
                                   "train_images_per_s": round(steps * settings.batch_size * world_size
                                                               / max(train_time, 1e-9), 1),
                                   "device": str(execution.device), "precision": execution.precision}
            following = position.advance(job.phases)
            checkpoint_file = None
            if rank == 0:
                eval_started = time.perf_counter()
                row.update(evaluate(job, supernet, data, execution.for_shapes(True)))
                execution.synchronize()
                eval_time = time.perf_counter() - eval_started
                row["eval_time_s"] = round(eval_time, 3)
                row["eval_images_per_s"] = round(_eval_images(job, data) / max(eval_time, 1e-9), 1)
                if settings.strategy == "progressive_shrinking" and p == 0 and following.phase == 1:
                    save_supernet(job.teacher_path, supernet, job.space, job.config_hash)
                _append_metrics(job.metrics_path, row)
                mid_phase = following.phase == p
                atomic_torch_save(train_state(
                    space_name=job.space.name, config_hash=job.config_hash, phase=following.phase,
                    epoch=following.epoch, model=_cpu(supernet.state_dict()),
                    optimizer=_cpu(optimizer.state_dict()) if mid_phase else None,
                    scheduler=scheduler.state_dict() if mid_phase else None,
                    rng=torch.get_rng_state(), completed_epochs=g + 1), job.latest_path)
                checkpoint_file = job.latest_path
                if log is not None:
                    log(epoch_summary_line(row, job.total_epochs))
            if reporter is not None:
                reporter(row, checkpoint_file)
            if job.fail_at_epoch == g and job.fail_marker and not Path(job.fail_marker).exists():
                Path(job.fail_marker).touch()
                raise RuntimeError(f"injected failure after epoch {g} (test hook)")
            position = following
    if rank == 0:
        last = read_metrics(job.metrics_path)
        save_supernet(job.supernet_path, supernet, job.space, job.config_hash,
                      summary=last[-1] if last else {})


def _eval_images(job: TrainJob, data: DataSource) -> int:
    """Images forwarded by one ``evaluate`` (BN recalibration and validation, every evaluation subnet)."""
    s = job.settings
    size = getattr(data, "size", None)
    val = size("val") if callable(size) else (s.max_val_images or 0)
    if s.max_val_images is not None:
        val = min(val, s.max_val_images)
    return (s.bn_recal_images + val) * len(eval_archs(job.space, s))


def _cpu(value: Any) -> Any:
    """``value`` with every tensor copied to the CPU (checkpoints load anywhere)."""
    if isinstance(value, torch.Tensor):
        return value.detach().cpu()
    if isinstance(value, dict):
        return {k: _cpu(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_cpu(v) for v in value)
    return value
