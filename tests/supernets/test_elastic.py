"""Supernet contract tests, run for every registered space: extraction is exact, structure equals
``build``, gradients reach the active weights only, channel sorting keeps the function."""

from __future__ import annotations

import copy
import dataclasses

import pytest
import torch
import torch.nn.functional as F

from search_spaces import Arch, ArchError, SearchSpace, get_space, largest, list_spaces, plan, sample, smallest
from supernets import (
    SUPERNET_CLASSES,
    ElasticConv2d,
    ElasticMBConv,
    ElasticSupernet,
    StaticNet,
    build,
    build_supernet,
    extract,
    sort_channels,
)

SEED = 0
N_RANDOM = 20


def op_archs(space: SearchSpace) -> list[Arch]:
    """The largest arch, and for multi-operator spaces the largest arch of every operator."""
    big = largest(space)
    archs = [big]
    for op in space.stages[0].op_types:
        if op == big.stages[0].blocks[0].op_type:
            continue
        stages = tuple(
            dataclasses.replace(stage, blocks=tuple(
                dataclasses.replace(b, op_type=op, expand_ratio=spec.allowed_expand_ratios(op)[-1])
                for b in stage.blocks))
            for spec, stage in zip(space.stages, big.stages))
        archs.append(dataclasses.replace(big, stages=stages))
    return archs


@torch.no_grad()
def randomize(net: ElasticSupernet, generator: torch.Generator) -> None:
    """Non-trivial kernel transforms and BN parameters, then BN statistics of real batches (momentum 1)."""
    for name, param in net.named_parameters():
        if "transform_" in name:
            param.add_(0.05 * torch.randn(param.shape, generator=generator))
    bns = [m for m in net.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    for bn in bns:
        bn.weight.copy_(1 + 0.1 * torch.randn(bn.weight.shape, generator=generator))
        bn.bias.copy_(0.1 * torch.randn(bn.bias.shape, generator=generator))
        bn.momentum = 1.0
    net.train()
    x = torch.randn(8, 3, 64, 64, generator=generator)
    for arch in reversed(op_archs(net.space)):  # the largest last: shared stem/head stats fit it
        net(x, arch)
    for bn in bns:
        bn.momentum = 0.1
        bn.running_var.mul_(0.8 + 0.4 * torch.rand(bn.running_var.shape, generator=generator)).add_(0.05)
    net.eval()


@pytest.fixture(scope="module", params=list_spaces())
def supernet(request) -> ElasticSupernet:
    torch.set_num_threads(1)
    torch.manual_seed(SEED)
    net = build_supernet(get_space(request.param))
    randomize(net, torch.Generator().manual_seed(SEED))
    return net


def test_every_registered_space_has_a_supernet() -> None:
    for name in list_spaces():
        assert get_space(name).family in SUPERNET_CLASSES
    with pytest.raises(ValueError, match="family"):
        build_supernet(dataclasses.replace(get_space("ofa_mbv3_cifar"), family="nope"))


def test_arch_of_another_space_is_refused() -> None:
    net = build_supernet("ofa_mbv3_cifar")
    with pytest.raises(ArchError):
        net(torch.randn(1, 3, 32, 32), largest(get_space("ofa_mbv3_w1.0")))


def test_ddp_forward_backward(tmp_path) -> None:
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        net = DistributedDataParallel(build_supernet("ofa_mbv3_cifar"), find_unused_parameters=True)
        for arch in sample(net.module.space, 2, seed=1):
            net(torch.randn(2, 3, 32, 32), arch).sum().backward()
        assert isinstance(extract(net, arch), StaticNet)
    finally:
        dist.destroy_process_group()


def structure(module: torch.nn.Module) -> tuple[list[tuple[str, str]], dict[str, tuple[int, ...]]]:
    modules = [(name, type(m).__name__) for name, m in module.named_modules()]
    return modules, {k: tuple(v.shape) for k, v in module.state_dict().items()}


def test_extract_equals_supernet_and_build(supernet: ElasticSupernet) -> None:
    space = supernet.space
    archs = [largest(space), smallest(space)] + sample(space, N_RANDOM, seed=SEED)
    generator = torch.Generator().manual_seed(1)
    for i, arch in enumerate(archs):
        size = 32 if i % 2 else 40  # any input size works: resolution is the input's
        x = torch.randn(2, 3, size, size, generator=generator)
        with torch.no_grad():
            expected = supernet(x, arch)
            static = extract(supernet, arch)
            assert not static.training
            got = static(x)
        assert structure(static) == structure(build(space, arch)), arch
        assert (got - expected).abs().max().item() <= 1e-5, arch
        assert expected.abs().max().item() > 1e-3  # the comparison is not between vanishing outputs
        # Copies, not views: changing the static net leaves the supernet alone.
        with torch.no_grad():
            static.stem[0].weight.zero_()
        assert supernet.stem[0].weight.abs().sum() > 0


def test_forward_keeps_no_arch_state(supernet: ElasticSupernet) -> None:
    a, b = sample(supernet.space, 2, seed=3)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        first = supernet(x, a)
        supernet(x, b)
        again = supernet(x, a)
    assert torch.equal(first, again)


def active_region_check(conv: ElasticConv2d, out_channels: int, in_channels: int, kernel_size: int) -> None:
    grad = conv.weight.grad
    assert grad is not None
    mask = torch.zeros_like(grad, dtype=torch.bool)
    # A smaller kernel reads the first centre crop (7 -> 5), mixed by the transform matrices.
    crop = conv.max_kernel if kernel_size == conv.max_kernel else conv.kernel_sizes[1]
    start = (conv.max_kernel - crop) // 2
    window = slice(start, start + crop)
    if conv.depthwise:
        mask[:out_channels, :, window, window] = True
    else:
        mask[:out_channels, :in_channels, window, window] = True
    if (~mask).any():
        assert grad[~mask].abs().max().item() == 0
    assert grad[mask].abs().sum().item() > 0
    for name, matrix in conv.named_parameters():
        if name.startswith("transform_"):
            small = int(name.rsplit("to", 1)[1])
            if small >= kernel_size:
                assert matrix.grad is not None and matrix.grad.abs().sum() > 0, name
            else:
                assert matrix.grad is None or matrix.grad.abs().sum() == 0, name


def test_forward_backward_reaches_active_weights(supernet: ElasticSupernet) -> None:
    net = copy.deepcopy(supernet).train()
    net.head.dropout.p = 0.0
    space = net.space
    x = torch.randn(2, 3, 32, 32)
    target = torch.tensor([0, 1])
    for arch in sample(space, 2, seed=5):
        net.zero_grad(set_to_none=True)
        static = extract(net, arch).train()
        static.head.dropout.p = 0.0
        out = net(x, arch)
        F.cross_entropy(out, target).backward()
        static_out = static(x)
        F.cross_entropy(static_out, target).backward()
        # Train mode (batch statistics): same output and same gradients as the static subnet.
        assert (out - static_out).abs().max().item() <= 1e-5
        assert torch.allclose(net.stem[0].weight.grad, static.stem[0].weight.grad, atol=1e-5, rtol=1e-4)
        assert torch.allclose(net.head.classifier.weight.grad, static.head.classifier.weight.grad,
                              atol=1e-6, rtol=1e-4)
        p = plan(space, arch)
        active = {(b.stage_index, b.block_index): b for b in p.blocks if b.stage_index >= 0}
        for s, stage in enumerate(net.stages):
            for b, block in enumerate(stage):
                bp = active.get((s, b))
                ops = dict(block.ops) if hasattr(block, "ops") else {"mbconv": block}
                for op, module in ops.items():
                    if bp is None or op != bp.op_type:
                        assert all(q.grad is None for q in module.parameters()), (s, b, op)
                        continue
                    if op == "mbconv":
                        active_region_check(module.expand.conv, bp.mid_channels, bp.in_channels, 1)
                        active_region_check(module.depthwise.conv, bp.mid_channels, bp.mid_channels,
                                            bp.kernel_size)
                        active_region_check(module.project.conv, bp.out_channels, bp.mid_channels, 1)
                    elif op == "sepconv":
                        active_region_check(module.depthwise.conv, bp.in_channels, bp.in_channels,
                                            bp.kernel_size)
                        active_region_check(module.project.conv, bp.out_channels, bp.in_channels, 1)
                    else:
                        active_region_check(module.conv.conv, bp.out_channels, bp.in_channels, bp.kernel_size)
                    if module.se is not None:
                        if bp.se_channels:
                            active_region_check(module.se.reduce, bp.se_channels, bp.mid_channels, 1)
                        else:
                            assert module.se.reduce.weight.grad is None


def test_sort_channels_keeps_function(supernet: ElasticSupernet) -> None:
    net = copy.deepcopy(supernet)
    x = torch.randn(2, 3, 32, 32)
    archs = op_archs(net.space)
    with torch.no_grad():
        before = [net(x, a) for a in archs]
    assert sort_channels(net) > 0
    with torch.no_grad():
        after = [net(x, a) for a in archs]
    for a, b in zip(before, after):
        assert (a - b).abs().max().item() <= 1e-5
    for block in net.modules():
        if isinstance(block, ElasticMBConv):
            importance = block.project.conv.weight.abs().sum((0, 2, 3))
            assert torch.all(importance[:-1] >= importance[1:])


def test_sliced_batch_norm_updates_leading_statistics() -> None:
    from supernets import ElasticBatchNorm2d

    bn = ElasticBatchNorm2d(8).train()
    x = torch.randn(4, 5, 3, 3) * 2 + 1
    bn(x)
    assert torch.allclose(bn.running_mean[:5], 0.1 * x.mean((0, 2, 3)), atol=1e-6)
    assert torch.equal(bn.running_mean[5:], torch.zeros(3))
    bn.reset_running_stats()
    bn.momentum = None  # cumulative average, as BN recalibration uses
    for _ in range(2):
        bn(x)
    assert torch.allclose(bn.running_mean[:5], x.mean((0, 2, 3)), atol=1e-6)
    assert int(bn.num_batches_tracked) == 2


@pytest.mark.parametrize("name", list_spaces())
def test_num_classes_override(name: str) -> None:
    space = get_space(name)
    net = build_supernet(space, num_classes=7).eval()
    arch = smallest(space)
    with torch.no_grad():
        assert net(torch.randn(2, 3, 32, 32), arch).shape == (2, 7)
    static = extract(net, arch)
    assert static.head.classifier.out_features == 7
    assert structure(static) == structure(build(space, arch, num_classes=7))


def _reference_weight(conv: ElasticConv2d, out_channels: int, in_channels: int, kernel_size: int) -> torch.Tensor:
    """The active weight by chained slices (what ``leading_box`` replaces)."""
    w = conv.weight[:out_channels] if conv.depthwise else conv.weight[:out_channels, :in_channels]
    current = conv.max_kernel
    for small in conv.kernel_sizes[1:]:
        if current == kernel_size:
            break
        start = (current - small) // 2
        crop = w[:, :, start:start + small, start:start + small]
        matrix = getattr(conv, conv.transform_name(current, small))
        w = F.linear(crop.reshape(-1, small * small), matrix).reshape(crop.shape)
        current = small
    return w


@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("depthwise", [False, True])
def test_active_weight_is_the_sliced_weight_with_its_gradients(channels_last: bool, depthwise: bool) -> None:
    torch.manual_seed(SEED)
    conv = ElasticConv2d(12, 12, (3, 5, 7), depthwise=depthwise)
    with torch.no_grad():  # transforms away from identity, so that a wrong crop shows
        for name, p in conv.named_parameters():
            if name.startswith("transform"):
                p.add_(0.1 * torch.randn_like(p))
    if channels_last:
        conv = conv.to(memory_format=torch.channels_last)
    for out_c, in_c, k in ((12, 12, 7), (7, 5, 7), (9, 12, 5), (5, 3, 3), (12, 12, 3)):
        in_c = 1 if depthwise else in_c
        got = conv.active_weight(out_c, in_c, k)
        assert got.shape == (out_c, in_c, k, k)
        grad = torch.randn(got.shape)
        conv.zero_grad(set_to_none=True)
        (got * grad).sum().backward()
        got_grads = {n: p.grad.clone() for n, p in conv.named_parameters() if p.grad is not None}
        conv.zero_grad(set_to_none=True)
        want = _reference_weight(conv, out_c, in_c, k)
        (want * grad).sum().backward()
        want_grads = {n: p.grad for n, p in conv.named_parameters() if p.grad is not None}
        assert torch.allclose(got, want, atol=1e-6)
        assert got_grads.keys() == want_grads.keys()
        for name, g in want_grads.items():
            assert torch.allclose(got_grads[name], g, atol=1e-6), (out_c, in_c, k, name)


def test_active_weight_refuses_a_box_larger_than_the_weight() -> None:
    conv = ElasticConv2d(4, 6, (3, 5))
    with pytest.raises(ValueError, match="does not fit"):
        conv.active_weight(6, 5, 3)
    with pytest.raises(ValueError, match="kernel size 7"):
        conv.active_weight(6, 4, 7)


@pytest.mark.parametrize("channels_last", [False, True])
def test_in_place_gradients_equal_plain_autograd_over_a_sandwich_step(channels_last: bool) -> None:
    """A step of several subnets (largest first, as the sandwich rule; then a random subnet first, as
    progressive shrinking's steps) gives the same gradients, and the same parameters none, either way."""
    space = get_space("ofa_mbv3_cifar")
    torch.manual_seed(SEED)
    plain = build_supernet(space).train()
    plain.head.dropout.p = 0.0
    if channels_last:
        plain = plain.to(memory_format=torch.channels_last)
    fast = copy.deepcopy(plain)
    fast.set_in_place_grads(True)
    x = torch.randn(4, 3, 32, 32)
    y = torch.tensor([0, 1, 2, 3])
    randoms = sample(space, 3, seed=2)
    for archs in ([largest(space), smallest(space), randoms[0]], [randoms[1], randoms[2], smallest(space)]):
        grads = []
        for net in (plain, fast):
            net.zero_grad(set_to_none=True)
            for arch in archs:
                F.cross_entropy(net(x, arch), y).backward()
            grads.append({n: p.grad for n, p in net.named_parameters()})
        assert grads[0].keys() == grads[1].keys()
        for name, g in grads[0].items():
            h = grads[1][name]
            assert (g is None) == (h is None), name
            if g is not None:
                assert torch.allclose(g, h, atol=1e-6, rtol=1e-5), name


def test_in_place_gradients_are_off_by_default_and_under_ddp_only() -> None:
    from supernets.elastic_layers import ElasticBatchNorm2d
    from supernets.training.distributed import wrap_for_ranks

    net = build_supernet("ofa_mbv3_cifar")
    flags = lambda: {m.in_place_grads for m in net.modules() if isinstance(m, (ElasticConv2d, ElasticBatchNorm2d))}  # noqa: E731
    assert flags() == {False}
    model, sync = wrap_for_ranks(net, 1, "ddp", torch.device("cpu"))  # one rank: no DDP
    assert model is net and sync is None and flags() == {True}
