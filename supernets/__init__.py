"""Supernets: elastic layers, extraction of static subnets, static builders, training."""

from __future__ import annotations

from .counting import Counts, arch_counts, count_macs, count_params
from .static import StaticNet, build

__all__ = ["Counts", "StaticNet", "arch_counts", "build", "count_macs", "count_params"]
