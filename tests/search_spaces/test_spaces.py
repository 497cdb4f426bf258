"""Behaviour of every registered space: validation, strings, encodings, sampling, plans."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

import search_spaces as ss

SPACES = ss.list_spaces()


def _archs(space: ss.SearchSpace, n: int = 30) -> list[ss.Arch]:
    return [ss.largest(space), ss.smallest(space), *ss.sample(space, n, seed=0)]


def test_registry_has_the_issue_spaces():
    assert {"ofa_mbv3_w1.0", "ofa_mbv3_w1.2", "ofa_mbv3_cifar", "mnasnet"} <= set(SPACES)


def test_unknown_space_names_the_registered_ones():
    with pytest.raises(ss.UnknownSpaceError, match="registered: .*ofa_mbv3_w1.0"):
        ss.get_space("nope")


def test_register_twice_is_refused():
    with pytest.raises(ValueError, match="already registered"):
        ss.register_space(lambda: ss.get_space("mnasnet"))


@pytest.mark.parametrize("name", SPACES)
def test_string_round_trip(name):
    space = ss.get_space(name)
    for arch in _archs(space):
        text = ss.arch_to_string(space, arch)
        assert ss.arch_from_string(space, text) == arch


@pytest.mark.parametrize("name", SPACES)
def test_encode_decode_round_trip(name):
    space = ss.get_space(name)
    length = ss.encoding_length(space)
    assert len(ss.encoding_names(space)) == length
    for arch in _archs(space):
        vector = ss.encode(space, arch)
        assert vector.shape == (length,)
        assert ss.decode(space, vector) == arch
    assert ss.encode_many(space, _archs(space, 3)).shape == (5, length)


@pytest.mark.parametrize("name", SPACES)
def test_dict_round_trip_and_stable_id(name):
    space = ss.get_space(name)
    for arch in _archs(space, 5):
        assert ss.Arch.from_dict(arch.to_dict()) == arch
        assert ss.Arch.from_dict(arch.to_dict()).arch_id == arch.arch_id
    ids = {a.arch_id for a in ss.sample(space, 50, seed=1)}
    assert len(ids) == 50


@pytest.mark.parametrize("name", SPACES)
def test_sampling_is_seeded_and_valid(name):
    space = ss.get_space(name)
    assert ss.sample(space, 10, seed=7) == ss.sample(space, 10, seed=7)
    assert ss.sample(space, 10, seed=7) != ss.sample(space, 10, seed=8)
    rng = np.random.default_rng(3)
    for arch in ss.sample(space, 30, seed=rng):
        ss.validate(space, arch)
        mutated = ss.mutate(space, arch, prob=0.5, seed=rng)
        ss.validate(space, mutated)
        ss.validate(space, ss.crossover(space, arch, mutated, seed=rng))
    arch = ss.random_arch(space, 0)
    assert ss.mutate(space, arch, prob=0.0, seed=1) == arch


@pytest.mark.parametrize("name", SPACES)
def test_largest_and_smallest_bound_the_space(name):
    space = ss.get_space(name)
    big, small = ss.largest(space), ss.smallest(space)
    assert big.depths == tuple(max(s.depths) for s in space.stages)
    assert small.depths == tuple(min(s.depths) for s in space.stages)
    assert big.resolution == max(space.resolutions) and small.resolution == min(space.resolutions)


@pytest.mark.parametrize("name", SPACES)
def test_plan_chains_shapes(name):
    space = ss.get_space(name)
    for arch in _archs(space, 10):
        net = ss.plan(space, arch)
        channels, size = net.stem_channels, net.stem_output_size
        for block in net.blocks:
            assert block.in_channels == channels and block.input_size == size
            channels, size = block.out_channels, block.output_size
            assert not block.residual or (block.stride == 1 and block.in_channels == block.out_channels)
        assert len(net.blocks) == arch.num_blocks + (1 if space.first_block_channels else 0)


def _bad_block(space: ss.SearchSpace, **change) -> ss.Arch:
    arch = ss.largest(space)
    stage = arch.stages[1]
    blocks = (dataclasses.replace(stage.blocks[0], **change),) * stage.depth
    return dataclasses.replace(arch, stages=(arch.stages[0], dataclasses.replace(stage, blocks=blocks),
                                             *arch.stages[2:]))


@pytest.mark.parametrize("name", SPACES)
def test_validation_names_field_value_and_allowed(name):
    space = ss.get_space(name)
    with pytest.raises(ss.ArchError, match=r"stage 1 .*kernel_size=9 is not allowed; allowed: "):
        ss.validate(space, _bad_block(space, kernel_size=9))
    with pytest.raises(ss.ArchError, match=r"resolution=17 is not allowed; allowed: "):
        ss.validate(space, dataclasses.replace(ss.largest(space), resolution=17))
    with pytest.raises(ss.ArchError, match="depth=9"):
        arch = ss.largest(space)
        stage = dataclasses.replace(arch.stages[0], blocks=arch.stages[0].blocks[:1] * 9)
        ss.validate(space, dataclasses.replace(arch, stages=(stage, *arch.stages[1:])))
    with pytest.raises(ss.ArchError, match="belongs to space"):
        ss.validate(space, dataclasses.replace(ss.largest(space), space="other"))


def test_mnasnet_blocks_must_be_identical_and_expand_follows_op():
    space = ss.get_space("mnasnet")
    arch = ss.largest(space)
    stage = arch.stages[2]
    mixed = (stage.blocks[0], dataclasses.replace(stage.blocks[0], kernel_size=3), *stage.blocks[2:])
    with pytest.raises(ss.ArchError, match="identical"):
        ss.validate(space, dataclasses.replace(arch, stages=(*arch.stages[:2], dataclasses.replace(stage, blocks=mixed),
                                                             *arch.stages[3:])))
    with pytest.raises(ss.ArchError, match="expand_ratio=6.0 is not allowed; allowed: 1"):
        ss.validate(space, _bad_block(space, op_type="sepconv", expand_ratio=6.0))


def test_ofa_w10_matches_the_paper():
    space = ss.get_space("ofa_mbv3_w1.0")
    assert [s.width for s in space.stages] == [24, 40, 80, 112, 160]
    assert [s.stride for s in space.stages] == [2, 2, 2, 1, 2]
    assert space.resolutions == tuple(range(128, 225, 4))
    assert (space.stem_channels, space.first_block_channels) == (16, 16)
    assert (space.final_expand_channels, space.feature_channels, space.num_classes) == (960, 1280, 1000)
    assert [s.se_ratios[0] > 0 for s in space.stages] == [False, True, False, True, True]
    assert [s.activation for s in space.stages] == ["relu", "relu", "hswish", "hswish", "hswish"]
    w12 = ss.get_space("ofa_mbv3_w1.2")
    assert (w12.stem_channels, w12.final_expand_channels, w12.feature_channels) == (24, 1152, 1536)


def test_mnasnet_space_matches_the_paper():
    space = ss.get_space("mnasnet")
    assert len(space.stages) == 7
    assert [s.width for s in space.stages] == [16, 24, 32, 64, 96, 160, 320]
    assert space.stages[3].depths == (3, 4, 5) and space.stages[0].depths == (1, 2)
    assert set(space.stages[0].op_types) == {"conv", "sepconv", "mbconv"}
    assert space.stages[0].width_mults == (0.75, 1.0, 1.25)


@pytest.mark.parametrize("name", ["ofa_mbv3_w1.0", "ofa_mbv3_w1.2", "ofa_mbv3_cifar"])
def test_ofa_config_round_trip(name):
    space = ss.get_space(name)
    for arch in _archs(space, 10):
        config = ss.to_ofa_config(space, arch)
        assert len(config["ks"]) == len(config["e"]) == 20 and len(config["d"]) == 5
        assert ss.from_ofa_config(space, config) == arch


def test_ofa_config_rejections_give_the_reason():
    space = ss.get_space("ofa_mbv3_w1.0")
    good = ss.to_ofa_config(space, ss.largest(space))
    with pytest.raises(ss.ArchError, match="lacks d"):
        ss.from_ofa_config(space, {"ks": good["ks"], "e": good["e"]})
    with pytest.raises(ss.ArchError, match="'ks' has 19 entries"):
        ss.from_ofa_config(space, {**good, "ks": good["ks"][:19]})
    with pytest.raises(ss.ArchError, match=r"d\[0\]=5 is not allowed"):
        ss.from_ofa_config(space, {**good, "d": [5, 4, 4, 4, 4]})
    with pytest.raises(ss.ArchError, match="kernel_size=4"):
        ss.from_ofa_config(space, {**good, "ks": [4] * 20})
    with pytest.raises(ss.ArchError, match="resolution=100"):
        ss.from_ofa_config(space, {**good, "r": [100]})
    with pytest.raises(ss.ArchError, match="only describe ofa_mbv3"):
        ss.from_ofa_config(ss.get_space("mnasnet"), good)
    # OFA's published configs carry no resolution: the caller's, else the largest.
    plain = {k: good[k] for k in ("ks", "e", "d")}
    assert ss.from_ofa_config(space, plain).resolution == 224
    assert ss.from_ofa_config(space, plain, resolution=160).resolution == 160


@pytest.mark.parametrize("text, message", [
    ("224/k3_e6", "must start with r"),
    ("rX/k3_e6", "cannot read the resolution"),
    ("r224/k3_e6", "has 1 stages"),
    ("r224/k3_e6,k3_q6/k3_e6,k3_e6/k3_e6,k3_e6/k3_e6,k3_e6/k3_e6,k3_e6", "unknown token 'q6'"),
    ("r224/k3,k3_e6/k3_e6,k3_e6/k3_e6,k3_e6/k3_e6,k3_e6/k3_e6,k3_e6", "does not give its expand ratio"),
])
def test_string_errors(text, message):
    with pytest.raises(ss.ArchError, match=message):
        ss.arch_from_string(ss.get_space("ofa_mbv3_w1.0"), text)


@pytest.mark.parametrize("name, first_stage, message", [
    ("ofa_mbv3_w1.0", "k7_e6_k5,k3_e6", "block 'k7_e6_k5' gives its kernel size twice \\('k7' and 'k5'\\)"),
    ("ofa_mbv3_w1.0", "k3_e6,k3_e4_e6", "gives its expand ratio twice"),
    ("mnasnet", "w1.25:d2:conv_k5_se0.25_id_noid", "gives its shortcut twice \\('id' and 'noid'\\)"),
    ("mnasnet", "w1.25:d2:conv_sep_k5_se0.25_id", "gives its operator twice"),
    ("mnasnet", "w1.25:d2:conv_k5_se0.25_se0_id", "gives its se ratio twice"),
    ("mnasnet", "d2:conv_k5_se0.25_id", "does not give its width multiplier.*allowed: 0.75, 1, 1.25"),
])
def test_string_refuses_repeated_and_missing_fields(name, first_stage, message):
    """A field given twice is refused (not: the last wins), and so is a width left out where it varies."""
    space = ss.get_space(name)
    parts = ss.arch_to_string(space, ss.largest(space)).split("/")
    with pytest.raises(ss.ArchError, match=message):
        ss.arch_from_string(space, "/".join([parts[0], first_stage, *parts[2:]]))


def test_space_size_matches_ofa():
    # OFA: about 2 x 10^19 subnets per resolution ((3^2+3^3+3^4)... with 9 choices per block).
    space = ss.get_space("ofa_mbv3_w1.0")
    per_resolution = ss.space_size(space) // len(space.resolutions)
    assert per_resolution == (9**2 + 9**3 + 9**4) ** 5


def test_make_divisible():
    assert ss.make_divisible(16 * 1.2) == 24
    assert ss.make_divisible(112 * 1.2) == 136
    assert ss.make_divisible(30) == 32
