"""Gradient averaging across ranks for supernet training: one all-reduce per step.

Every rank trains the same subnets in a step (their seeds agree), and a step sums the gradients of several
subnets (``subnets_per_step``). ``DistributedDataParallel`` would all-reduce after every subnet's backward
pass, and needs ``find_unused_parameters=True`` (blocks beyond a stage's depth get no gradient), which walks
the autograd graph on every backward. ``StepGradientSync`` instead all-reduces once per step, after the last
subnet, the gradients that exist; they are the same parameters on every rank because the subnets are. Batch-
norm running statistics stay per rank (rank 0's are saved; every evaluation recalibrates them anyway).
``experiments/benchmarks/ddp_sync.py`` measures both.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import nn
from torch._utils import _flatten_dense_tensors, _unflatten_dense_tensors

GRADIENT_SYNCS = ("step", "ddp")
"""``step``: one all-reduce of the summed gradients per step; ``ddp``: ``DistributedDataParallel``."""


class StepGradientSync:
    """Average the gradients of ``module`` over ``world_size`` ranks, in one flat all-reduce."""

    def __init__(self, module: nn.Module, world_size: int) -> None:
        self.module = module
        self.world_size = world_size

    def __call__(self) -> None:
        if self.world_size <= 1:
            return
        grads = [p.grad for p in self.module.parameters() if p.grad is not None]
        if not grads:
            return
        flat = _flatten_dense_tensors(grads)
        dist.all_reduce(flat)
        flat.div_(self.world_size)
        for grad, synced in zip(grads, _unflatten_dense_tensors(flat, grads)):
            grad.copy_(synced)


def wrap_for_ranks(supernet: nn.Module, world_size: int, mode: str,
                   device: torch.device) -> tuple[nn.Module, StepGradientSync | None]:
    """``(model to call, sync to run before each optimizer step)`` for ``world_size`` ranks. The supernet adds
    the gradients of its sliced parameters in place (``ElasticSupernet.set_in_place_grads``) except under
    ``DistributedDataParallel``, whose hooks would miss them."""
    ddp = world_size > 1 and mode == "ddp"
    if hasattr(supernet, "set_in_place_grads"):
        supernet.set_in_place_grads(not ddp)
    if world_size <= 1:
        return supernet, None
    if ddp:
        ids = [device.index] if device.type == "cuda" else None
        return nn.parallel.DistributedDataParallel(supernet, device_ids=ids, find_unused_parameters=True), None
    if mode != "step":
        raise ValueError(f"gradient sync {mode!r} is not known; allowed: {', '.join(GRADIENT_SYNCS)}")
    return supernet, StepGradientSync(supernet, world_size)
