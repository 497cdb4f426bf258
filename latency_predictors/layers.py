"""The distinct layers a space can produce, the builder protocol, and analytic MAC counts.

A network is stem + blocks + head; its layers are keyed by ``NetworkPlan.stem_key()``,
``BlockPlan.key()`` and ``NetworkPlan.head_key()``. ``enumerate_layers`` lists every key any arch of the
space (at the chosen resolutions) can contain, each with what is needed to build and time it alone.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Protocol

import numpy as np

from search_spaces import (
    Arch,
    ArchError,
    BlockArch,
    BlockPlan,
    NetworkPlan,
    PrecisionPolicy,
    SearchSpace,
    StageArch,
    StageSpec,
    block_macs,
    encode_many,
    head_macs,
    plan,
    precision_groups,
    smallest,
    stem_macs,
    validate_policy,
)

if TYPE_CHECKING:
    from torch import nn


class LayerBuilder(Protocol):
    """Builds the modules that are timed. ``latency_predictors`` never imports ``supernets``; the caller
    (the command line, a test) hands an implementation in (``nas.latency_builders.StaticBuilder``)."""

    def stem(self, p: NetworkPlan) -> nn.Module: ...

    def block(self, p: BlockPlan) -> nn.Module: ...

    def head(self, p: NetworkPlan) -> nn.Module: ...

    def network(self, space: SearchSpace, arch: Arch) -> nn.Module: ...


@dataclass(frozen=True, slots=True)
class LayerSpec:
    """One distinct layer: its key, kind (stem, block, head), input shape (C, H, W) and plan."""

    key: str
    kind: str
    input_shape: tuple[int, int, int]
    resolution: int
    network: NetworkPlan
    block: BlockPlan | None = None

    def build(self, builder: LayerBuilder) -> nn.Module:
        if self.kind == "stem":
            return builder.stem(self.network)
        if self.kind == "head":
            return builder.head(self.network)
        assert self.block is not None
        return builder.block(self.block)


def network_layers(p: NetworkPlan) -> list[LayerSpec]:
    """The layers of one network plan, in order."""
    layers = [LayerSpec(p.stem_key(), "stem", (3, p.resolution, p.resolution), p.resolution, p)]
    layers += [LayerSpec(b.key(), "block", (b.in_channels, b.input_size, b.input_size), p.resolution, p, b)
               for b in p.blocks]
    size = p.head_input_size
    layers.append(LayerSpec(p.head_key(), "head", (p.last_block_channels, size, size), p.resolution, p))
    return layers


def layer_keys(space: SearchSpace, arch: Arch) -> list[str]:
    """Keys of the layers of ``arch`` (what a table sums)."""
    return [layer.key for layer in network_layers(plan(space, arch))]


# The precision a lookup table's plain keys hold; every other precision's entry is ``<key>@<precision>``.
BASE_PRECISION = "fp32"


def precision_key(key: str, precision: str = BASE_PRECISION) -> str:
    """The table key of layer ``key`` at ``precision``: the key itself for fp32 (tables from before precisions
    keep their keys), ``<key>@int8`` for int8."""
    return key if precision == BASE_PRECISION else f"{key}@{precision}"


def layer_group(space: SearchSpace, layer: LayerSpec) -> str:
    """The precision group (``search_spaces.precision_groups``) a layer belongs to: ``stem`` (with the fixed
    first block), the stage's name, or ``head``."""
    groups = precision_groups(space)
    if layer.kind == "stem" or (layer.block is not None and layer.block.stage_index < 0):
        return groups[0]
    if layer.kind == "head":
        return groups[-1]
    assert layer.block is not None
    return groups[1 + layer.block.stage_index]


def layer_precision(layer: LayerSpec, policy: PrecisionPolicy | None) -> str:
    """The precision ``policy`` runs ``layer`` in (fp32 without a policy)."""
    if policy is None:
        return BASE_PRECISION
    if layer.kind == "stem":
        return policy.stem
    if layer.kind == "head":
        return policy.head
    assert layer.block is not None
    return policy.block_precision(layer.block.stage_index, layer.block.block_index)


def precision_layers(space: SearchSpace, arch: Arch, policy: PrecisionPolicy | None = None
                     ) -> list[tuple[LayerSpec, str, str]]:
    """The layers of ``arch`` in order, each with its precision group and its precision under ``policy``
    (checked against the space and arch: ``PolicyError``)."""
    if policy is not None:
        validate_policy(space, policy, arch)
    return [(layer, layer_group(space, layer), layer_precision(layer, policy))
            for layer in network_layers(plan(space, arch))]


def _block_choices(spec: StageSpec) -> list[BlockArch]:
    return [BlockArch(kernel_size=k, expand_ratio=e, op_type=op, se_ratio=se, skip=skip)
            for op in spec.op_types
            for k, e, se, skip in itertools.product(spec.kernel_sizes, spec.allowed_expand_ratios(op),
                                                    spec.se_ratios, spec.skips)]


def enumerate_layers(space: SearchSpace, resolutions: tuple[int, ...] | list[int] | None = None
                     ) -> dict[str, LayerSpec]:
    """Every distinct layer a subnet of ``space`` can contain at ``resolutions`` (default: all).

    Works through ``plan`` itself, so the keys are exactly those of ``plan(space, arch)``: for each stage,
    each width of the stage before it, and each block choice, one arch whose stage repeats that block at
    its largest depth (later blocks of a stage all see the same shapes, so two positions suffice).
    """
    resolutions = tuple(space.resolutions if resolutions is None else resolutions)
    bad = [r for r in resolutions if r not in space.resolutions]
    if bad:
        raise ArchError(f"resolutions {bad} are not in space {space.name!r}; allowed: "
                        f"{', '.join(map(str, space.resolutions))}")
    base = smallest(space)
    layers: dict[str, LayerSpec] = {}
    for r in resolutions:
        for s, spec in enumerate(space.stages):
            previous_widths = space.stages[s - 1].width_mults if s > 0 else (None,)
            for prev_width, width, block in itertools.product(previous_widths, spec.width_mults,
                                                              _block_choices(spec)):
                stages = list(base.stages)
                if prev_width is not None:
                    stages[s - 1] = replace(stages[s - 1], width_mult=prev_width)
                stages[s] = StageArch(blocks=(block,) * spec.max_depth, width_mult=width)
                arch = Arch(space=space.name, resolution=r, stages=tuple(stages))
                for layer in network_layers(plan(space, arch)):
                    layers.setdefault(layer.key, layer)
    return layers


# --- analytic counts (``search_spaces``: conv and linear MACs, as torch's flop counter counts them) -------


def network_macs(space: SearchSpace, arch: Arch) -> int:
    """Multiply-accumulates of one forward pass at batch 1 (convolutions and the classifier)."""
    p = plan(space, arch)
    return stem_macs(p) + sum(block_macs(b) for b in p.blocks) + head_macs(p)


def network_gmacs(space: SearchSpace, archs: Sequence[Arch]) -> np.ndarray:
    """``network_macs`` of each arch, in billions (the MACs prior and the MACs column of the predictors)."""
    return np.array([network_macs(space, a) / 1e9 for a in archs], dtype=float)


def arch_features(space: SearchSpace, archs: list[Arch]) -> np.ndarray:
    """Features of end-to-end regressors: the one-hot encoding plus, per stage, MACs (millions) and
    depthwise MACs, total MACs and resolution. Needs nothing but the space."""
    rows = []
    for arch in archs:
        p = plan(space, arch)
        n = len(space.stages)
        stage_macs = np.zeros(n)
        stage_dw = np.zeros(n)
        stage_act = np.zeros(n)
        for b in p.blocks:
            s = max(b.stage_index, 0)
            stage_macs[s] += block_macs(b) / 1e6
            stage_dw[s] += b.mid_channels * b.kernel_size ** 2 * b.output_size ** 2 / 1e6
            stage_act[s] += b.mid_channels * (b.input_size ** 2 + b.output_size ** 2) / 1e6
        total = (stem_macs(p) + head_macs(p)) / 1e6 + stage_macs.sum()
        rows.append(np.concatenate([stage_macs, stage_dw, stage_act,
                                    [total, arch.resolution / 100.0, len(p.blocks)]]))
    return np.concatenate([encode_many(space, archs), np.asarray(rows)], axis=1)
