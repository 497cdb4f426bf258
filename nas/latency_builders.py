"""The glue that hands ``supernets``' static builders to ``latency_predictors`` (which never imports
``supernets``)."""

from __future__ import annotations

from torch import nn

from search_spaces import Arch, BlockPlan, NetworkPlan, SearchSpace
from supernets.static import build, build_block, build_head, build_stem


class StaticBuilder:
    """``latency_predictors.LayerBuilder`` over ``supernets.static``: what is timed is what is deployed."""

    def stem(self, p: NetworkPlan) -> nn.Module:
        return build_stem(p)

    def block(self, p: BlockPlan) -> nn.Module:
        return build_block(p)

    def head(self, p: NetworkPlan) -> nn.Module:
        return build_head(p)

    def network(self, space: SearchSpace, arch: Arch) -> nn.Module:
        return build(space, arch)


def static_builder() -> StaticBuilder:
    return StaticBuilder()
