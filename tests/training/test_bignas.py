"""BigNAS's recipe for the sandwich rule, each part a setting of its own: residual blocks that start as the
identity (``train.zero_init_residual``), the other subnets taught by the largest alone
(``train.sandwich_labels: largest``) and dropout for the largest only (``train.sandwich_dropout: largest``)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
import yaml

from nas.cli import main
from nas.data import DatasetConfig, load_dataset
from nas.rundir import load_supernet
from search_spaces import get_space, largest, plan
from supernets import build_supernet
from supernets.training import TrainJob, TrainSettings, distillation_loss, sandwich_phase
from supernets.training.loop import make_optimizer, subnet_loss, train_epoch
from supernets.training.schedule import Position

SPACE = get_space("ofa_mbv3_cifar")


def test_zero_init_makes_every_residual_block_start_as_the_identity() -> None:
    torch.manual_seed(0)
    supernet = build_supernet(SPACE)
    assert supernet.zero_init_residuals() == sum(spec.max_depth - 1 for spec in SPACE.stages)
    full = plan(SPACE, largest(SPACE))
    residual = [bp for bp in full.blocks if bp.stage_index >= 0 and bp.residual]
    assert {bp.block_index for bp in residual} == {1, 2, 3}
    supernet.train()
    for bp in residual:
        x = torch.randn(2, bp.in_channels, bp.input_size, bp.input_size)
        assert torch.equal(supernet.stages[bp.stage_index][bp.block_index](x, bp), x)
    # the first block of each stage changes the stride or the width: it keeps its batch norm as it was
    for stage in supernet.stages:
        assert torch.all(stage[0].project.bn.weight == 1)


def test_zero_init_leaves_stages_whose_skip_connection_is_a_choice() -> None:
    space = get_space("mnasnet")
    supernet = build_supernet(space)
    expected = sum(spec.max_depth - 1 for spec in space.stages if all(spec.skips))
    assert any(not all(spec.skips) for spec in space.stages)
    assert supernet.zero_init_residuals() == expected
    for spec, stage in zip(space.stages, supernet.stages):
        norms = [bn for block in list(stage)[1:] for bn in block.residual_norms()]
        assert all(bool(torch.all(bn.weight == 0)) == all(spec.skips) for bn in norms)


def test_subnet_loss_under_each_labels_setting() -> None:
    torch.manual_seed(0)
    out, soft, y = torch.randn(6, 10), torch.randn(6, 10), torch.randint(0, 10, (6,))
    phase = sandwich_phase(SPACE, 1, 0.1, 3)  # distill_weight 1.0
    half = dataclasses.replace(phase, distill_weight=0.5)
    ce = F.cross_entropy(out, y, label_smoothing=0.1)
    kd = distillation_loss(out, soft)
    everyone, largest_only = TrainSettings(), TrainSettings(sandwich_labels="largest")
    assert torch.allclose(subnet_loss(out, y, None, phase, everyone, False), ce)  # the largest: labels only
    assert torch.allclose(subnet_loss(out, y, None, phase, largest_only, False), ce)
    assert torch.allclose(subnet_loss(out, y, soft, half, everyone, True), ce + 0.5 * kd)
    assert torch.allclose(subnet_loss(out, y, soft, half, largest_only, True), 0.5 * kd)
    # a teacher's outputs for a subnet that is not a sandwich's other (progressive shrinking): labels and teacher
    assert torch.allclose(subnet_loss(out, y, soft, phase, largest_only, False), ce + kd)


@pytest.mark.parametrize("dropout", ["all", "largest"])
def test_sandwich_dropout_trains_the_other_subnets_without_dropout(tmp_path: Path, dropout: str) -> None:
    settings = TrainSettings(batch_size=8, max_steps_per_epoch=2, sandwich_dropout=dropout,
                             sandwich_labels="largest")
    phase = sandwich_phase(SPACE, 1, 0.05, 3)
    job = TrainJob(space=SPACE, settings=settings, phases=(phase,), seed=0, config_hash="bignas",
                   latest_path=str(tmp_path / "latest.pt"), teacher_path=str(tmp_path / "teacher.pt"),
                   supernet_path=str(tmp_path / "supernet.pt"), metrics_path=str(tmp_path / "metrics.jsonl"),
                   make_data=lambda: None, progress=False)
    data = load_dataset(DatasetConfig(kind="digits", image_size=24, max_train_images=32), 24)
    torch.manual_seed(0)
    supernet = build_supernet(SPACE)
    seen: list[bool] = []
    supernet.head.dropout.register_forward_hook(lambda module, args, out: seen.append(module.training))
    optimizer = make_optimizer(supernet, phase, settings)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=2)
    loss = train_epoch(job, supernet, None, phase, Position(), data, optimizer, scheduler, 2, 0, 1)
    assert loss > 0 and torch.isfinite(torch.tensor(loss))
    # 2 steps of 3 subnets: the largest first in each
    assert seen == ([True] * 6 if dropout == "all" else [True, False, False] * 2)
    assert supernet.head.dropout.training  # on again after the epoch


def test_nas_train_with_the_recipe_starts_residual_blocks_at_zero(tmp_path: Path) -> None:
    """At a learning rate too small to move them, the trained supernet's residual gammas are still 0: the
    setting reaches a new run."""
    config = {
        "name": "bignas", "space": "ofa_mbv3_cifar",
        "dataset": {"kind": "digits", "image_size": 24, "max_train_images": 64},
        "train": {"batch_size": 8, "max_steps_per_epoch": 2, "bn_recal_images": 16, "eval_random_subnets": 0,
                  "max_val_images": 16, "zero_init_residual": True, "sandwich_labels": "largest",
                  "sandwich_dropout": "largest",
                  "phases": [{"name": "sandwich", "epochs": 1, "lr": 1e-12, "subnets_per_step": 3,
                              "distill_weight": 1.0, "elastic": {"resolutions": [24], "depths": [2, 3, 4]}}]},
        "ray": {"enabled": False},
    }
    path = tmp_path / "bignas.yaml"
    path.write_text(yaml.safe_dump(config))
    run = tmp_path / "run"
    assert main(["train", str(path), "--run-dir", str(run), "--no-progress"]) == 0
    _, supernet = load_supernet(run)
    for stage in supernet.stages:
        assert torch.allclose(stage[0].project.bn.weight, torch.ones_like(stage[0].project.bn.weight))
        for block in list(stage)[1:]:
            assert block.project.bn.weight.abs().max() < 1e-6


def test_static_zero_init_matches_the_supernet_subnet_it_is_extracted_from() -> None:
    """A network trained from scratch can start as the supernet's subnets do: the same batch norms at 0."""
    from supernets import build, extract
    from supernets.static import zero_init_residuals

    torch.manual_seed(0)
    supernet = build_supernet(SPACE)
    supernet.zero_init_residuals()
    arch = largest(SPACE)
    assert zero_init_residuals(build(SPACE, arch), plan(SPACE, arch)) == \
        sum(spec.max_depth - 1 for spec in SPACE.stages)
    net = build(SPACE, arch, zero_init_residual=True)
    extracted = extract(supernet, arch)
    zeros = {n for n, t in extracted.state_dict().items() if n.endswith(".weight") and t.ndim == 1
             and bool(torch.all(t == 0))}
    assert zeros and zeros == {n for n, t in net.state_dict().items() if n.endswith(".weight") and t.ndim == 1
                               and bool(torch.all(t == 0))}
