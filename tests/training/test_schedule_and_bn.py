"""Schedules as data, subnet sampling per phase, distillation loss, BN recalibration, checkpoint files."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from nas.data import DatasetConfig, load_dataset
from search_spaces import get_space, largest, smallest, validate
from supernets import build, build_supernet
from supernets.training import (
    CheckpointError,
    accuracy,
    distillation_loss,
    load_train_state,
    make_phase,
    ofa_schedule,
    phase_arch,
    recalibrate_bn,
    sandwich_phase,
    sandwich_schedule,
    step_archs,
)
from supernets.training.checkpoint import atomic_torch_save, train_state

SPACE = get_space("ofa_mbv3_cifar")


def test_ofa_schedule_follows_once_for_all_and_scales() -> None:
    phases = ofa_schedule(SPACE, epochs_scale=0.1)
    assert [p.name for p in phases] == ["full", "kernel", "depth_1", "depth_2", "expand_1", "expand_2"]
    assert [p.epochs for p in phases] == [18, 12, 2, 12, 2, 12]
    assert phases[0].values("kernel_sizes") is None and phases[1].values("kernel_sizes") == (3, 5, 7)
    assert [p.sort_channels for p in phases] == [False] * 4 + [True, False]
    assert phases[0].distill_weight == 0 and all(p.distill_weight > 0 for p in phases[1:])
    (sandwich,) = sandwich_schedule(SPACE, epochs_scale=0.1, lr=0.2)
    assert sandwich.epochs == sum(p.epochs for p in phases)
    # the subnets' gradients add up: each trains at a single network's rate over their number
    assert sandwich.subnets_per_step == 4 and sandwich.lr == pytest.approx(0.05)
    assert sandwich == sandwich_phase(SPACE, sandwich.epochs, 0.05, 4)


def test_sandwich_phase_makes_every_dimension_elastic_over_the_whole_space() -> None:
    phase = sandwich_phase(SPACE, 8, 0.02, 3)
    assert (phase.name, phase.epochs, phase.lr, phase.subnets_per_step) == ("sandwich", 8, 0.02, 3)
    assert phase.distill_weight == 1.0
    assert phase.values("resolutions") == SPACE.resolutions
    assert phase.values("kernel_sizes") == (3, 5, 7) and phase.values("depths") == (2, 3, 4)
    assert phase.values("expand_ratios") == (3, 4, 6)


def test_phase_archs_stay_inside_the_phase() -> None:
    phase = make_phase("depth", 1, 0.1, {"kernel_sizes": [3, 5], "depths": [3, 4], "resolutions": [24, 28]})
    rng = np.random.default_rng(0)
    seen_kernels, seen_depths = set(), set()
    for _ in range(20):
        arch = validate(SPACE, phase_arch(SPACE, phase, "random", rng))
        assert arch.resolution in (24, 28)
        seen_depths.update(arch.depths)
        for stage in arch.stages:
            seen_kernels.update(b.kernel_size for b in stage.blocks)
            assert all(b.expand_ratio == 6.0 for b in stage.blocks)  # not elastic: largest
    assert seen_kernels == {3, 5} and seen_depths == {3, 4}
    small = phase_arch(SPACE, phase, "smallest")
    assert small.depths == (3,) * 5 and small.resolution == 24
    full = make_phase("full", 1, 0.1)
    assert phase_arch(SPACE, full, "random", rng) == largest(SPACE)


def test_sandwich_steps_train_largest_then_smallest_then_random() -> None:
    phase = make_phase("all", 1, 0.1, {"kernel_sizes": [3, 5, 7], "depths": [2, 3, 4],
                                       "expand_ratios": [3, 4, 6], "resolutions": [24, 28, 32]},
                       subnets_per_step=4)
    archs = step_archs(SPACE, phase, "sandwich", np.random.default_rng(1), resolution=24)
    assert archs[0] == dataclasses.replace(largest(SPACE), resolution=24)
    assert archs[1] == dataclasses.replace(smallest(SPACE), resolution=24)
    assert len(archs) == 4 and all(a.resolution == 24 for a in archs)


def test_distillation_loss_is_zero_gradient_at_the_teacher() -> None:
    logits = torch.randn(4, 10, requires_grad=True)
    loss = distillation_loss(logits, logits.detach())
    loss.backward()
    assert torch.allclose(logits.grad, torch.zeros_like(logits.grad), atol=1e-6)
    assert float(distillation_loss(torch.zeros(2, 10), torch.randn(2, 10) * 5)) > 0


def test_bn_recalibration_changes_statistics_and_restores_accuracy() -> None:
    torch.manual_seed(0)
    torch.set_num_threads(1)
    data = load_dataset(DatasetConfig(max_train_images=384, augment=False), resolution=16, seed=0)
    arch = dataclasses.replace(smallest(SPACE.with_num_classes(10)), resolution=24)
    net = build(SPACE.with_num_classes(10), arch)
    optimizer = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9)
    net.train()
    for epoch in range(2):
        for x, y in data.train_batches(32, seed=epoch):
            optimizer.zero_grad()
            F.cross_entropy(net(x), y).backward()
            optimizer.step()
    trained = accuracy(net, data.eval_batches("val", 200), 16)
    # Statistics that are not this subnet's (as a supernet's shared batch norms hold): reset ones.
    norms = [m for m in net.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    for m in norms:
        m.reset_running_stats()
    before = [m.running_mean.clone() for m in norms]
    uncalibrated = accuracy(net, data.eval_batches("val", 200), 16)
    recalibrate_bn(net, data.calibration_batches(256, 128, seed=0))
    calibrated = accuracy(net, data.eval_batches("val", 200), 16)
    assert any(not torch.equal(b, m.running_mean) for b, m in zip(before, norms))
    assert all(m.momentum == 0.1 for m in norms) and not net.training
    assert calibrated > uncalibrated + 0.15, (uncalibrated, calibrated, trained)
    assert calibrated > 0.4, (uncalibrated, calibrated, trained)


def test_bn_recalibration_of_a_supernet_subnet_through_forward() -> None:
    supernet = build_supernet(SPACE)
    arch = dataclasses.replace(smallest(SPACE), resolution=24)
    x = torch.randn(16, 3, 24, 24) * 3 + 1
    recalibrate_bn(supernet, [x], forward=lambda batch: supernet(batch, arch))
    stem_bn = supernet.stem[1]
    assert float(stem_bn.running_mean.abs().sum()) > 0 and int(stem_bn.num_batches_tracked) == 1


def test_corrupted_and_foreign_checkpoints_are_refused(tmp_path: Path) -> None:
    bad = tmp_path / "latest.pt"
    bad.write_bytes(b"not a checkpoint at all")
    with pytest.raises(CheckpointError, match="corrupted"):
        load_train_state(bad, SPACE.name, "abc")
    good = tmp_path / "good.pt"
    atomic_torch_save(train_state(space_name=SPACE.name, config_hash="abc", phase=0, epoch=1, model={},
                                  optimizer=None, scheduler=None, rng=torch.get_rng_state(),
                                  completed_epochs=1), good)
    assert load_train_state(good, SPACE.name, "abc")["epoch"] == 1
    with pytest.raises(CheckpointError, match="another config"):
        load_train_state(good, SPACE.name, "xyz")
    with pytest.raises(CheckpointError, match="belongs to space"):
        load_train_state(good, "ofa_mbv3_w1.0", "abc")
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(good.read_bytes()[:100])
    with pytest.raises(CheckpointError, match="corrupted"):
        load_train_state(truncated, SPACE.name, "abc")


@pytest.mark.parametrize("factor", [0.0, 0.5, 1.0])
def test_kernel_transforms_train_at_their_own_rate(factor: float) -> None:
    from supernets.training import TrainSettings
    from supernets.training.loop import make_optimizer

    torch.manual_seed(0)
    supernet = build_supernet(SPACE)
    phase = sandwich_phase(SPACE, 1, 0.1)
    optimizer = make_optimizer(supernet, phase, TrainSettings(kernel_transform_lr=factor))
    transforms = {n: p for n, p in supernet.named_parameters() if ".transform_" in n}
    assert transforms
    if factor == 1.0:  # one rate for all: the optimizer is what it was before the setting existed
        assert [g["lr"] for g in optimizer.param_groups] == [0.1, 0.1]
    else:
        (group,) = [g for g in optimizer.param_groups if g["lr"] != 0.1]
        assert group["lr"] == pytest.approx(0.1 * factor)
        assert {id(p) for p in group["params"]} == {id(p) for p in transforms.values()}
    assert sum(len(g["params"]) for g in optimizer.param_groups) == len(list(supernet.parameters()))
    before = {n: p.detach().clone() for n, p in supernet.named_parameters()}
    x, y = torch.randn(4, 3, 24, 24), torch.randint(0, 10, (4,))
    F.cross_entropy(supernet(x, dataclasses.replace(smallest(SPACE), resolution=24)), y).backward()
    optimizer.step()
    moved = {n for n, p in supernet.named_parameters() if not torch.equal(p, before[n])}
    used = {n for n, p in transforms.items() if p.grad is not None and p.grad.abs().sum() > 0}
    assert used  # the smallest subnet's kernels of 3 go through both transforms of its blocks
    assert (moved & transforms.keys()) == (set() if factor == 0.0 else used)
    assert any(".depthwise." in n and n.endswith(".weight") for n in moved)
