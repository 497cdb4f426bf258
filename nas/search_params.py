"""A space's arch as Optuna parameters: a fixed-length set of categoricals, and back.

Every stage's depth and every block slot's choices are suggested on each trial (one slot per stage for
spaces whose blocks are shared; a slot's choices as one categorical over its block variants), so the
parameter set has a fixed length and multivariate samplers can model the whole space; ``decode_params``
drops the slots beyond the sampled depth.

A subnet quantised under a precision policy (``nas.precision_search``) is a trial with one more categorical per
policy group, ``precision.<group>`` (``stem``, each stage's name, ``head``; ``policy_params``); trials without them
are fp32 throughout (``decode_policy`` gives None).
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping
from typing import Any

import optuna

from search_spaces import (
    PRECISIONS,
    Arch,
    BlockArch,
    PrecisionPolicy,
    SearchSpace,
    StageArch,
    policy_or_none,
    precision_groups,
    validate,
)

__all__ = ["POLICY_PREFIX", "block_variants", "decode_params", "decode_policy", "params_of", "policy_distributions",
           "policy_params", "search_params", "suggest_arch"]

POLICY_PREFIX = "precision."


def _slots(space: SearchSpace, stage: int) -> int:
    spec = space.stages[stage]
    return 1 if spec.shared_blocks else spec.max_depth


def block_variants(spec: Any) -> dict[str, BlockArch]:
    """Every block a slot of the stage may hold, by a short token (``mbconv-k5-e4-se0.25-skip``)."""
    variants: dict[str, BlockArch] = {}
    for op in spec.op_types:
        for k, e, se, skip in itertools.product(spec.kernel_sizes, spec.allowed_expand_ratios(op), spec.se_ratios,
                                                spec.skips):
            token = f"{op}-k{k}-e{e:g}-se{se:g}-{'skip' if skip else 'noskip'}"
            variants[token] = BlockArch(kernel_size=k, expand_ratio=e, op_type=op, se_ratio=se, skip=skip)
    return variants


def _token(block: BlockArch) -> str:
    return (f"{block.op_type}-k{block.kernel_size}-e{block.expand_ratio:g}-se{block.se_ratio:g}-"
            f"{'skip' if block.skip else 'noskip'}")


def search_params(space: SearchSpace) -> dict[str, tuple]:
    """Every searched parameter name and its choices, in a fixed order (dimensions with one choice omitted).

    Per stage: its depth (and width multiplier); per block slot (``max_depth`` slots, one for spaces whose
    blocks are shared): one categorical over the slot's block variants (op type x kernel x expand x SE x
    skip), so a block's choices travel together through crossover and there are half as many parameters.
    """
    params: dict[str, tuple] = {}
    if len(space.resolutions) > 1:
        params["resolution"] = tuple(space.resolutions)
    for s, spec in enumerate(space.stages):
        if len(spec.depths) > 1:
            params[f"s{s}.depth"] = spec.depths
        if len(spec.width_mults) > 1:
            params[f"s{s}.width_mult"] = spec.width_mults
        variants = tuple(block_variants(spec))
        if len(variants) > 1:
            for b in range(_slots(space, s)):
                params[f"s{s}.b{b}"] = variants
    return params


def decode_params(space: SearchSpace, params: Mapping[str, Any]) -> Arch:
    """The arch of a full parameter set (slots beyond each stage's depth are dropped)."""
    def get(name: str, values: tuple):
        return params[name] if len(values) > 1 else values[0]

    stages = []
    for s, spec in enumerate(space.stages):
        depth = get(f"s{s}.depth", spec.depths)
        width = get(f"s{s}.width_mult", spec.width_mults)
        variants = block_variants(spec)
        only = next(iter(variants.values()))
        blocks = [variants[params[f"s{s}.b{b}"]] if len(variants) > 1 else only for b in range(_slots(space, s))]
        active = (blocks[0],) * depth if spec.shared_blocks else tuple(blocks[:depth])
        stages.append(StageArch(blocks=active, width_mult=width))
    resolution = get("resolution", space.resolutions)
    return validate(space, Arch(space=space.name, resolution=resolution, stages=tuple(stages)))


def suggest_arch(trial: optuna.trial.BaseTrial, space: SearchSpace) -> Arch:
    """Suggest every parameter of ``search_params(space)`` on ``trial`` and decode the arch."""
    params = {name: trial.suggest_categorical(name, list(values)) for name, values in search_params(space).items()}
    return decode_params(space, params)


def params_of(space: SearchSpace, arch: Arch) -> dict[str, Any]:
    """A full parameter set whose decoding is ``arch`` (unused slots copy the stage's last block)."""
    values = search_params(space)
    params: dict[str, Any] = {}
    if "resolution" in values:
        params["resolution"] = arch.resolution
    for s, stage in enumerate(arch.stages):
        if f"s{s}.depth" in values:
            params[f"s{s}.depth"] = stage.depth
        if f"s{s}.width_mult" in values:
            params[f"s{s}.width_mult"] = stage.width_mult
        for b in range(_slots(space, s)):
            if f"s{s}.b{b}" in values:
                params[f"s{s}.b{b}"] = _token(stage.blocks[min(b, stage.depth - 1)])
    return params


def policy_params(space: SearchSpace, policy: PrecisionPolicy) -> dict[str, str]:
    """The ``precision.<group>`` parameters of a per-stage ``policy`` (one precision per group; a policy with
    per-block precisions has no parameter form: ``ValueError``)."""
    if any(len(stage) != 1 for stage in policy.stages):
        raise ValueError(f"policy {policy} gives precisions per block; trials hold one precision per stage")
    values = [policy.stem, *(stage[0] for stage in policy.stages), policy.head]
    return {POLICY_PREFIX + group: value for group, value in zip(precision_groups(space), values)}


def policy_distributions(space: SearchSpace) -> dict[str, optuna.distributions.CategoricalDistribution]:
    """The distribution of each ``precision.<group>`` parameter (every precision a policy can name)."""
    return {POLICY_PREFIX + group: optuna.distributions.CategoricalDistribution(list(PRECISIONS))
            for group in precision_groups(space)}


def decode_policy(space: SearchSpace, params: Mapping[str, Any]) -> PrecisionPolicy | None:
    """The policy of a trial's parameters, or None when it has none or it is fp32 throughout."""
    groups = precision_groups(space)
    if POLICY_PREFIX + groups[0] not in params:
        return None
    stem, *stages, head = (str(params[POLICY_PREFIX + g]) for g in groups)
    return policy_or_none(PrecisionPolicy(stem, tuple((s,) for s in stages), head))
