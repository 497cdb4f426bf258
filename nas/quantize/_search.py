"""Choosing by measurement: the calibration method, and the fastest precision policy within an accuracy-loss
bound (sensitivity order, then bisection, as HAWQ-style mixed-precision references do).

Sensitivity of a layer group is the mean KL divergence of the subnet's output distribution when only that
group is int8, from the fp32 subnet's, on the selection images: cheaper than an accuracy drop to read (it
moves before top-1 does, so groups that change no label still rank). Groups are made int8 least sensitive
first; the largest prefix within the bound is found by bisection (assuming the loss grows with the prefix),
every shorter prefix is evaluated too, and the fastest of those within the bound, measured end to end in
ONNX Runtime, is the answer (candidates within ``LATENCY_TIE`` of the fastest are ties, the most accurate of
them wins): int8 does not make every group faster on a CPU (depthwise layers gain little
and each fp32/int8 boundary adds a QuantizeLinear / DequantizeLinear pair), so the longest prefix is not
always the fastest.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from latency_predictors.measure import MeasureConfig
from search_spaces import Arch, PrecisionPolicy, SearchSpace, policy_to_string

from ..errors import UsageError
from ._images import ImageSet
from ._ptq import CALIBRATION_METHODS, SubnetQuantizer
from ._runtime import DEFAULT_MEASURE, latencies_ms, logits

__all__ = ["GRANULARITIES", "Candidate", "GroupSensitivity", "MethodChoice", "PolicySearch", "choose_method",
           "group_units", "policy_of", "prefix_policies", "search_policy", "sensitivities", "unit_name"]

GRANULARITIES = ("stage", "block")
# Latencies within this share of the fastest candidate's count as equal (one-thread ONNX Runtime series on a
# shared machine repeat to a few percent).
LATENCY_TIE = 0.03
# A unit of a policy: "stem", "head", (stage, None) for a whole stage, (stage, block) for one block.
Unit = str | tuple[int, int | None]


def group_units(space: SearchSpace, arch: Arch, granularity: str = "stage") -> list[Unit]:
    """The units a policy search switches: stem, each stage (or each active block), head."""
    if granularity not in GRANULARITIES:
        raise UsageError(f"granularity {granularity!r} is not allowed; allowed: {', '.join(GRANULARITIES)}")
    units: list[Unit] = ["stem"]
    for s, stage in enumerate(arch.stages):
        units.extend([(s, None)] if granularity == "stage" else [(s, b) for b in range(stage.depth)])
    return [*units, "head"]


def unit_name(space: SearchSpace, unit: Unit) -> str:
    if isinstance(unit, str):
        return unit
    stage, block = unit
    return space.stages[stage].name + ("" if block is None else f".b{block}")


def policy_of(space: SearchSpace, arch: Arch, int8: set[Unit] | frozenset[Unit]) -> PrecisionPolicy:
    """The policy with exactly the units in ``int8`` int8 and the rest fp32 (canonical)."""
    def p(flag: bool) -> str:
        return "int8" if flag else "fp32"

    stages = tuple(((p((s, None) in int8),) if (s, None) in int8 or not any((s, b) in int8 for b in range(st.depth))
                    else tuple(p((s, b) in int8) for b in range(st.depth)))
                   for s, st in enumerate(arch.stages))
    return PrecisionPolicy(p("stem" in int8), stages, p("head" in int8)).canonical()


def prefix_policies(space: SearchSpace, arch: Arch, order: Sequence[str | Unit], counts: Sequence[int]
                    ) -> list[PrecisionPolicy]:
    """For each ``k`` of ``counts``, the policy with the first ``k`` groups of ``order`` int8 and the rest fp32
    (``policy_of``): ``order`` lists groups least sensitive first, by name (``unit_name``: ``stem``, a stage
    name, ``stage3.b1``, ``head``) or as units (``group_units``).

    Raises:
        UsageError: a group ``arch`` does not have, or a count outside 0..len(order).
    """
    units = {unit_name(space, u): u for g in GRANULARITIES for u in group_units(space, arch, g)}
    resolved: list[Unit] = []
    for group in order:
        unit = units.get(group) if isinstance(group, str) else (group if group in units.values() else None)
        if unit is None:
            raise UsageError(f"precision group {group!r} is not a group of this subnet; allowed: "
                             f"{', '.join(units)}")
        resolved.append(unit)
    out = []
    for k in counts:
        if not 0 <= k <= len(resolved):
            raise UsageError(f"int8 group count {k} is not allowed; allowed: 0 to {len(resolved)}")
        out.append(policy_of(space, arch, set(resolved[:k])))
    return out


def _softmax(x: np.ndarray) -> np.ndarray:
    z = np.exp(x - x.max(1, keepdims=True))
    return z / z.sum(1, keepdims=True)


def mean_kl(reference: np.ndarray, other: np.ndarray) -> float:
    """Mean KL(softmax(reference) || softmax(other)) over the rows."""
    p, q = _softmax(reference.astype(np.float64)), _softmax(other.astype(np.float64))
    return float(np.mean(np.sum(p * (np.log(p + 1e-12) - np.log(q + 1e-12)), axis=1)))


def _top1(out: np.ndarray, labels: np.ndarray) -> float:
    return float(np.mean(out.argmax(1) == labels))


@dataclass(frozen=True)
class MethodChoice:
    """The calibration method chosen, and what each measured: top-1 of the uniformly int8 subnet and KL from
    the fp32 subnet on the selection images."""

    method: str
    accuracy: dict[str, float]
    kl: dict[str, float]
    fp32_accuracy: float
    images: str

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def choose_method(quantizer: SubnetQuantizer, space: SearchSpace, images: ImageSet,
                  methods: Sequence[str] = CALIBRATION_METHODS) -> MethodChoice:
    """The calibration method whose uniformly int8 subnet is most accurate on ``images`` (ties: the lower KL
    from fp32, then the order of ``methods``, cheapest first)."""
    reference = logits(quantizer.fp32, images)
    int8 = PrecisionPolicy.uniform(space, "int8")
    accuracy, kl = {}, {}
    for method in methods:
        out = logits(quantizer.quantize(int8, method), images)
        accuracy[method], kl[method] = _top1(out, images.labels), mean_kl(reference, out)
    best = max(methods, key=lambda m: (accuracy[m], -kl[m], -methods.index(m)))
    return MethodChoice(best, accuracy, kl, _top1(reference, images.labels), images.source)


@dataclass(frozen=True)
class GroupSensitivity:
    """How much one group alone in int8 changes the subnet on the selection images."""

    group: str
    kl: float
    accuracy: float


@dataclass(frozen=True)
class Candidate:
    """One policy the search evaluated: the first ``int8_groups`` groups in sensitivity order int8."""

    policy: str
    int8_groups: int
    accuracy: float
    loss_points: float
    latency_ms: float | None = None


@dataclass(frozen=True)
class PolicySearch:
    """The fastest policy found within ``max_loss_points`` of fp32 top-1 on the selection split."""

    policy: PrecisionPolicy
    accuracy: float
    fp32_accuracy: float
    max_loss_points: float
    latency_ms: float
    fp32_latency_ms: float
    method: str
    granularity: str
    images: str
    sensitivities: tuple[GroupSensitivity, ...]
    candidates: tuple[Candidate, ...]

    @property
    def policy_string(self) -> str:
        return policy_to_string(self.policy)

    @property
    def loss_points(self) -> float:
        return 100.0 * (self.fp32_accuracy - self.accuracy)

    def to_dict(self) -> dict[str, Any]:
        return {"policy": self.policy_string, "accuracy": self.accuracy, "fp32_accuracy": self.fp32_accuracy,
                "loss_points": self.loss_points, "max_loss_points": self.max_loss_points,
                "latency_ms": self.latency_ms, "fp32_latency_ms": self.fp32_latency_ms, "method": self.method,
                "granularity": self.granularity, "images": self.images,
                "sensitivities": [dataclasses.asdict(s) for s in self.sensitivities],
                "candidates": [dataclasses.asdict(c) for c in self.candidates]}


def sensitivities(quantizer: SubnetQuantizer, space: SearchSpace, arch: Arch, images: ImageSet,
                  units: Sequence[Unit], method: str = "minmax", threads: int = 0) -> list[GroupSensitivity]:
    """Each unit alone in int8: KL from the fp32 outputs and top-1 on ``images``, in the order of ``units``
    (ONNX Runtime with ``threads`` threads; 0: its default)."""
    reference = logits(quantizer.fp32, images, threads=threads)
    out = []
    for unit in units:
        got = logits(quantizer.quantize(policy_of(space, arch, {unit}), method), images, threads=threads)
        out.append(GroupSensitivity(unit_name(space, unit), mean_kl(reference, got), _top1(got, images.labels)))
    return out


def check_max_loss(max_loss_points: float) -> None:
    """Refuse an accuracy-loss bound that is not a finite number of points >= 0 (the command checks it before
    loading anything)."""
    if not (math.isfinite(max_loss_points) and max_loss_points >= 0):
        raise UsageError(f"--max-loss must be a finite number of accuracy points >= 0 (e.g. 0.5); got "
                         f"{max_loss_points:g}")


def search_policy(quantizer: SubnetQuantizer, space: SearchSpace, arch: Arch, images: ImageSet,
                  max_loss_points: float, method: str = "minmax", granularity: str = "stage",
                  measure: MeasureConfig = DEFAULT_MEASURE) -> PolicySearch:
    """The fastest policy whose top-1 on ``images`` is at most ``max_loss_points`` (percentage points) below
    the fp32 subnet's.

    Sensitivity order from ``sensitivities``; the largest feasible prefix by bisection; every prefix up to
    it evaluated; their ONNX Runtime latencies (one thread, interleaved, ``measure``) decide. fp32 (the empty
    prefix) is always feasible, so there is always an answer.
    """
    check_max_loss(max_loss_points)
    units = group_units(space, arch, granularity)
    sens = sensitivities(quantizer, space, arch, images, units, method)
    order = [u for _, u in sorted(zip(sens, units), key=lambda pair: (pair[0].kl, units.index(pair[1])))]
    fp32_accuracy = _top1(logits(quantizer.fp32, images), images.labels)
    evaluated: dict[int, float] = {0: fp32_accuracy}

    def accuracy(k: int) -> float:
        if k not in evaluated:
            model = quantizer.quantize(policy_of(space, arch, set(order[:k])), method)
            evaluated[k] = _top1(logits(model, images), images.labels)
        return evaluated[k]

    def feasible(k: int) -> bool:  # a small tolerance: accuracies are ratios of image counts
        return 100.0 * (fp32_accuracy - accuracy(k)) <= max_loss_points + 1e-9

    lo, hi = 0, len(order)
    if feasible(hi):
        lo = hi
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if feasible(mid) else (lo, mid)
    within = [k for k in range(lo + 1) if feasible(k)]
    policies = [policy_of(space, arch, set(order[:k])) for k in within]
    measured = latencies_ms([quantizer.quantize(p, method) for p in policies], quantizer.resolution, measure)
    candidates = tuple(Candidate(policy_to_string(p), k, evaluated[k], 100.0 * (fp32_accuracy - evaluated[k]),
                                 m.latency_ms) for p, k, m in zip(policies, within, measured))
    fastest = min(c.latency_ms for c in candidates)
    # Candidates within the measurement's noise of the fastest are ties: the most accurate of them, then the
    # one with more int8 groups, wins.
    ties = [i for i, c in enumerate(candidates) if c.latency_ms <= fastest * (1.0 + LATENCY_TIE)]
    best = max(ties, key=lambda i: (candidates[i].accuracy, candidates[i].int8_groups))
    return PolicySearch(policies[best], evaluated[within[best]], fp32_accuracy, float(max_loss_points),
                        float(candidates[best].latency_ms), float(measured[0].latency_ms), method, granularity,
                        images.source, tuple(sens), candidates)
