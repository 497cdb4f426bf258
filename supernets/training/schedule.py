"""The training schedule as data: phases, each naming its elastic dimensions, and the settings of a run.

A phase says which dimensions of the space vary while it runs and which values they may take; every
dimension it does not name stays at its largest value. The default schedules follow Once-for-All
(progressive shrinking) and BigNAS (the sandwich rule); both are plain lists of ``Phase`` values that an
experiment config may replace entry by entry.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from search_spaces import Arch, BlockArch, SearchSpace, StageArch, StageSpec

STRATEGIES = ("progressive_shrinking", "sandwich")
"""``progressive_shrinking``: Once-for-All phases, distillation from the full network trained in the first
phase (frozen teacher). ``sandwich``: every step trains the largest, the smallest and random subnets; the
largest's outputs teach the others (in-place distillation)."""

SANDWICH_SUBSETS = ("all", "largest")
"""Values of ``TrainSettings.sandwich_labels`` and ``sandwich_dropout``: every subnet of a sandwich step, or the
largest only."""

STAGE_DIMENSIONS = ("depths", "kernel_sizes", "expand_ratios", "width_mults", "se_ratios", "op_types", "skips")
ELASTIC_DIMENSIONS = ("resolutions", *STAGE_DIMENSIONS)
"""Names a phase may make elastic: ``resolutions`` of the space, or any choice list of ``StageSpec``."""


@dataclass(frozen=True, slots=True)
class Phase:
    """One phase of the schedule."""

    # Name shown in metrics and progress bars.
    name: str
    # Epochs of this phase (>= 1).
    epochs: int
    # Peak learning rate; cosine decay to zero over the phase.
    lr: float
    # Elastic dimensions and their allowed values, sorted by name; unnamed dimensions stay largest.
    elastic: tuple[tuple[str, tuple[Any, ...]], ...] = ()
    # Subnets trained per step (gradients summed); the sandwich rule counts largest and smallest in it.
    subnets_per_step: int = 1
    # Weight of the distillation loss added to the cross-entropy of every student subnet.
    distill_weight: float = 0.0
    # Re-order expanded channels by importance (``sort_channels``) when the phase starts.
    sort_channels: bool = False

    @property
    def elastic_map(self) -> dict[str, tuple[Any, ...]]:
        return dict(self.elastic)

    def values(self, dimension: str) -> tuple[Any, ...] | None:
        """Allowed values of ``dimension`` in this phase, ``None`` when it is not elastic."""
        return self.elastic_map.get(dimension)


def make_phase(name: str, epochs: int, lr: float, elastic: Mapping[str, Sequence[Any]] | None = None,
               **kwargs: Any) -> Phase:
    """A ``Phase`` from a plain mapping of elastic dimensions (sorted into canonical order)."""
    items = tuple(sorted((str(k), tuple(v)) for k, v in (elastic or {}).items()))
    return Phase(name=name, epochs=int(epochs), lr=float(lr), elastic=items, **kwargs)


@dataclass(frozen=True, slots=True)
class TrainSettings:
    """How the supernet is trained; parsed from the ``train`` section of an experiment config."""

    # ``sandwich`` or ``progressive_shrinking`` (see ``STRATEGIES``). The sandwich rule is the default: it led
    # progressive shrinking in every comparison measured (experiments/cifar10_ofa_mbv3/README.md: on an H200 at
    # 6 epochs by 18.6-21.2 points for small, medium and large subnets; on CIFAR-10 and digits on CPU).
    strategy: str = "sandwich"
    # The phases, in order; empty means the strategy's default schedule scaled by ``epochs_scale``.
    phases: tuple[Phase, ...] = ()
    # Multiplier of every phase's epochs (each phase keeps at least one epoch).
    epochs_scale: float = 1.0
    # A single network's peak learning rate, for the default schedules: progressive shrinking's first phase
    # trains at it and later phases scale it as OFA; the sandwich phase trains each of its subnets at
    # lr / SANDWICH_SUBNETS (their gradients add up). Explicit phases give their own rates.
    lr: float = 0.1
    # Images per step on each worker.
    batch_size: int = 64
    momentum: float = 0.9
    # Weight decay of convolution and linear weights (not of batch norms and biases).
    weight_decay: float = 3e-5
    label_smoothing: float = 0.1
    # Learning rate of the elastic kernels' transform matrices (Once-for-All's 7to5 and 5to3) relative to the
    # phase's; 0 keeps them at the identity, so that the smaller kernels are centre crops (as in BigNAS).
    # Measured on an H200 (CIFAR-10, 6 epochs, the default sandwich rate): frozen 1.4-2.1 points below trained.
    kernel_transform_lr: float = 1.0
    # BigNAS's recipe for the sandwich rule, each part on its own, all off by default (a default that changed
    # would give saved runs the hash of a different recipe; the shipped configs set what they use). Measured on
    # 2 CPU cores (experiments/cifar10_ofa_mbv3/README.md): zero-init lifted the sandwich rule's subnets by
    # 2-13 points on digits and CIFAR-10; labels and dropout for the largest only lost there.
    # Start every residual block's last batch norm at gamma 0, so that each block begins as the identity (a
    # new run only: a resumed run keeps its weights);
    zero_init_residual: bool = False
    # which subnets of a sandwich step learn from the labels: ``all`` (the others add the distillation from the
    # largest to their cross-entropy) or ``largest`` (the others learn from the largest's outputs only:
    # BigNAS's in-place distillation);
    sandwich_labels: str = "all"
    # which subnets of a sandwich step train with the head's dropout: ``all`` or ``largest`` (BigNAS
    # regularises only the largest).
    sandwich_dropout: str = "all"
    # Temperature of the distillation soft targets.
    kd_temperature: float = 1.0
    # Cap on steps per epoch (None: the whole training split each epoch).
    max_steps_per_epoch: int | None = None
    # Training images forwarded to recalibrate batch norms before every evaluation.
    bn_recal_images: int = 2000
    # Random subnets (besides largest and smallest) evaluated after each epoch, from ``eval_seed``.
    eval_random_subnets: int = 3
    eval_seed: int = 0
    # Cap on validation images per evaluation (None: the whole validation split).
    max_val_images: int | None = None
    # Torch threads per worker (None: the CPUs the worker is given, ``ray.cpus_per_worker`` under Ray).
    threads_per_worker: int | None = None
    # Where each worker trains: ``auto`` (CUDA when the worker has a GPU), ``cpu`` or ``cuda``.
    device: str = "auto"
    # ``auto`` (bf16 on CUDA, fp32 on CPU), ``fp32``, ``bf16`` or ``fp16`` (autocast; fp16 with a grad scaler).
    precision: str = "auto"
    # Channels-last memory format (None: on the CPU always, on CUDA for fixed shapes only; see
    # ``supernets.training.device.Execution``).
    channels_last: bool | None = None
    # ``torch.compile`` the static networks of a run (the frozen teacher); the elastic supernet runs eager.
    compile: bool = False
    # Across ranks: ``step`` (one all-reduce of the summed gradients per step) or ``ddp``
    # (DistributedDataParallel with find_unused_parameters); see ``supernets.training.distributed``.
    gradient_sync: str = "step"

    EXECUTION_FIELDS = ("threads_per_worker", "device", "precision", "channels_last", "compile", "gradient_sync")
    """Fields that say where and how fast training runs, not what it learns: a run may resume under other
    values (they are left out of the config hash)."""
    LATER_FIELDS = ("kernel_transform_lr", "zero_init_residual", "sandwich_labels", "sandwich_dropout")
    """Fields added after runs were saved: at their defaults they are left out of the config hash, so that
    those runs keep theirs."""

    def resolved_phases(self, space: SearchSpace) -> tuple[Phase, ...]:
        """The explicit phases, or the default schedule of the strategy for ``space``."""
        if self.phases:
            return tuple(replace(p, epochs=scale_epochs(p.epochs, self.epochs_scale)) for p in self.phases)
        if self.strategy == "sandwich":
            return sandwich_schedule(space, self.epochs_scale, self.lr)
        return ofa_schedule(space, self.epochs_scale, self.lr)


# Once-for-All's ImageNet schedule: (name, epochs, lr relative to the first phase, elastic dimensions
# as (dimension, how many of the largest values), subnets per step, distillation weight, sort channels).
_OFA_PHASES = (
    ("full", 180, 1.0, (), 1, 0.0, False),
    ("kernel", 120, 0.3, (("kernel_sizes", 99),), 1, 1.0, False),
    ("depth_1", 25, 0.025, (("kernel_sizes", 99), ("depths", 2)), 2, 1.0, False),
    ("depth_2", 120, 0.075, (("kernel_sizes", 99), ("depths", 99)), 2, 1.0, False),
    ("expand_1", 25, 0.025, (("kernel_sizes", 99), ("depths", 99), ("expand_ratios", 2)), 4, 1.0, True),
    ("expand_2", 120, 0.075, (("kernel_sizes", 99), ("depths", 99), ("expand_ratios", 99)), 4, 1.0, False),
)


def _all_values(space: SearchSpace, dimension: str) -> tuple[Any, ...]:
    if dimension == "resolutions":
        return space.resolutions
    values: list[Any] = []
    for spec in space.stages:
        for value in getattr(spec, dimension):
            if value not in values:
                values.append(value)
    return tuple(sorted(values))


def scale_epochs(epochs: int, scale: float) -> int:
    return max(1, int(round(epochs * scale)))


def ofa_schedule(space: SearchSpace, epochs_scale: float = 1.0, lr: float = 0.1) -> tuple[Phase, ...]:
    """Full network, elastic kernel, elastic depth (two steps), elastic expand ratio (two steps).

    Every phase has elastic resolution; the step phases take the largest values first (depth 3-4 before
    2-4, expand 4-6 before 3-6), as Once-for-All does. Epochs are scaled by ``epochs_scale``.
    """
    phases = []
    for name, epochs, lr_factor, dims, n_subnets, distill, sort in _OFA_PHASES:
        elastic: dict[str, tuple[Any, ...]] = {"resolutions": space.resolutions}
        for dimension, keep in dims:
            elastic[dimension] = _all_values(space, dimension)[-keep:]
        phases.append(make_phase(name, scale_epochs(epochs, epochs_scale), lr * lr_factor, elastic,
                                 subnets_per_step=n_subnets, distill_weight=distill, sort_channels=sort))
    return tuple(phases)


SANDWICH_SUBNETS = 4
"""Subnets per step of the default sandwich schedule: the largest, the smallest and two random ones."""


def sandwich_schedule(space: SearchSpace, epochs_scale: float = 1.0, lr: float = 0.1) -> tuple[Phase, ...]:
    """One phase with every dimension elastic, as long as the whole OFA schedule (equal epochs).

    ``lr`` is a single network's rate; the phase trains each subnet at ``lr / SANDWICH_SUBNETS``, because the
    step adds the subnets' gradients and the shared weights would otherwise move several times as far as one
    network's. Measured (experiments/cifar10_ofa_mbv3/README.md), on an H200 at 6 epochs of CIFAR-10: 4
    subnets at a single network's rate diverged, at half of it trailed from-scratch training by 19-25 points,
    at a quarter of it by 2.3-9.1 (3 subnets at 0.4 of it: within 1.8 points of that); on 2 CPU cores, 3
    subnets at 0.4 of it trained every subnet to 59-64% test accuracy in two passes over CIFAR-10."""
    total = sum(p.epochs for p in ofa_schedule(space, epochs_scale, lr))
    return (sandwich_phase(space, total, sandwich_subnet_lr(lr, SANDWICH_SUBNETS), SANDWICH_SUBNETS),)


def sandwich_subnet_lr(lr: float, subnets: int, factor: float | None = None) -> float:
    """Each subnet's rate in a sandwich step of ``subnets``: a single network's ``lr`` times ``factor``, by
    default ``1 / subnets`` (the step adds the subnets' gradients; ``sandwich_schedule`` says what was measured)."""
    return lr * (factor if factor is not None else 1.0 / subnets)


def sandwich_phase(space: SearchSpace, epochs: int, lr: float, subnets: int = SANDWICH_SUBNETS) -> Phase:
    """The sandwich rule's phase: every dimension elastic over all of ``space``'s values, ``subnets`` per step
    (the largest, the smallest, random ones), in-place distillation; ``lr`` is each subnet's rate (callers
    divide a single network's rate by the subnets, as ``sandwich_schedule`` does)."""
    elastic = {d: _all_values(space, d) for d in ("resolutions", "kernel_sizes", "depths", "expand_ratios")}
    return make_phase("sandwich", epochs, lr, elastic, subnets_per_step=subnets, distill_weight=1.0)


def check_recipe(settings: TrainSettings, space: SearchSpace) -> None:
    """Raise ``ValueError`` (naming the ``train`` key) when settings that are each allowed do not fit together:
    the sandwich rule's own settings under another strategy, or a sandwich phase whose other subnets would learn
    nothing (``sandwich_labels: largest`` without distillation)."""
    own = [name for name in ("sandwich_labels", "sandwich_dropout") if getattr(settings, name) != "all"]
    if own and settings.strategy != "sandwich":
        raise ValueError(f"train.{own[0]} applies to the sandwich rule only; this config's train.strategy is "
                         f"{settings.strategy!r} (remove it, or set train.strategy: sandwich)")
    if settings.sandwich_labels == "largest":
        for phase in settings.resolved_phases(space):
            if phase.subnets_per_step > 1 and phase.distill_weight <= 0:
                raise ValueError(f"train.sandwich_labels: 'largest' trains the other subnets on the largest's "
                                 f"outputs only, so phase {phase.name!r} needs distill_weight > 0 (it has "
                                 f"{phase.distill_weight:g})")


def validate_phase(space: SearchSpace, phase: Phase) -> Phase:
    """Return ``phase`` if every elastic value exists in ``space``; raise ``ValueError`` naming the bad one."""
    if phase.epochs < 1:
        raise ValueError(f"phase {phase.name!r}: epochs must be >= 1, got {phase.epochs}")
    if phase.lr <= 0:
        raise ValueError(f"phase {phase.name!r}: lr must be > 0, got {phase.lr}")
    if phase.subnets_per_step < 1:
        raise ValueError(f"phase {phase.name!r}: subnets_per_step must be >= 1")
    if phase.distill_weight < 0:
        raise ValueError(f"phase {phase.name!r}: distill_weight must be >= 0")
    for dimension, values in phase.elastic:
        if dimension not in ELASTIC_DIMENSIONS:
            raise ValueError(f"phase {phase.name!r}: unknown elastic dimension {dimension!r}; allowed: "
                             f"{', '.join(ELASTIC_DIMENSIONS)}")
        allowed = _all_values(space, dimension)
        bad = [v for v in values if v not in allowed]
        if bad or not values:
            raise ValueError(f"phase {phase.name!r}: {dimension} {list(values)} not allowed in space "
                             f"{space.name!r}; allowed: {list(allowed)}")
        if dimension != "resolutions":
            for spec in space.stages:
                if not set(values) & set(getattr(spec, dimension)):
                    raise ValueError(f"phase {phase.name!r}: {dimension} {list(values)} leaves stage "
                                     f"{spec.name!r} no choice; its choices: {list(getattr(spec, dimension))}")
    return phase


# ---------------------------------------------------------------------------------------------------------
# Subnets of a phase.


def _choices(phase: Phase, spec: StageSpec, dimension: str, op_type: str | None = None) -> tuple[Any, ...]:
    own = spec.allowed_expand_ratios(op_type or spec.op_types[-1]) if dimension == "expand_ratios" \
        else getattr(spec, dimension)
    wanted = phase.values(dimension)
    if wanted is None:
        return (own[-1],)
    kept = tuple(v for v in own if v in wanted)
    return kept or (own[-1],)


def resolutions(space: SearchSpace, phase: Phase) -> tuple[int, ...]:
    wanted = phase.values("resolutions")
    return tuple(r for r in space.resolutions if r in wanted) if wanted else (space.resolutions[-1],)


def phase_arch(space: SearchSpace, phase: Phase, which: str = "random",
               rng: np.random.Generator | None = None, resolution: int | None = None) -> Arch:
    """The ``largest``, ``smallest`` or a ``random`` subnet among those ``phase`` makes elastic."""

    def pick(values: tuple[Any, ...]) -> Any:
        if which == "largest":
            return values[-1]
        if which == "smallest":
            return values[0]
        assert rng is not None, "a random subnet needs a generator"
        return values[int(rng.integers(len(values)))]

    def block(spec: StageSpec) -> BlockArch:
        op = pick(_choices(phase, spec, "op_types"))
        return BlockArch(kernel_size=pick(_choices(phase, spec, "kernel_sizes")),
                         expand_ratio=pick(_choices(phase, spec, "expand_ratios", op)), op_type=op,
                         se_ratio=pick(_choices(phase, spec, "se_ratios")), skip=pick(_choices(phase, spec, "skips")))

    stages = []
    for spec in space.stages:
        depth = pick(_choices(phase, spec, "depths"))
        width = pick(_choices(phase, spec, "width_mults"))
        blocks = (block(spec),) * depth if spec.shared_blocks else tuple(block(spec) for _ in range(depth))
        stages.append(StageArch(blocks=blocks, width_mult=width))
    res = resolution if resolution is not None else pick(resolutions(space, phase))
    return Arch(space=space.name, resolution=res, stages=tuple(stages))


def step_archs(space: SearchSpace, phase: Phase, strategy: str, rng: np.random.Generator,
               resolution: int) -> list[Arch]:
    """The subnets one training step trains: random ones (progressive shrinking) or, under the sandwich
    rule, the largest first, then the smallest, then random ones."""
    n = phase.subnets_per_step
    if strategy == "sandwich":
        head = [phase_arch(space, phase, "largest", resolution=resolution)]
        if n > 1:
            head.append(phase_arch(space, phase, "smallest", resolution=resolution))
        return head + [phase_arch(space, phase, "random", rng, resolution) for _ in range(n - len(head))]
    return [phase_arch(space, phase, "random", rng, resolution) for _ in range(n)]


@dataclass(frozen=True, slots=True)
class Position:
    """Where a run stands: the next epoch to train is ``epoch`` of phase ``phase``."""

    phase: int = 0
    epoch: int = 0

    def global_epoch(self, phases: Sequence[Phase]) -> int:
        return sum(p.epochs for p in phases[: self.phase]) + self.epoch

    def advance(self, phases: Sequence[Phase]) -> Position:
        if self.epoch + 1 >= phases[self.phase].epochs:
            return replace(self, phase=self.phase + 1, epoch=0)
        return replace(self, epoch=self.epoch + 1)
