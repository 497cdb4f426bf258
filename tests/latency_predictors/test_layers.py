from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from latency_predictors import arch_features, enumerate_layers, layer_keys, network_macs
from search_spaces import ArchError, get_space, largest, list_spaces, sample, smallest


def _resolutions(space):
    return space.resolutions if len(space.resolutions) <= 5 else space.resolutions[::12]


@pytest.mark.parametrize("name", list_spaces())
def test_table_covers_every_layer_of_random_archs(name):
    space = get_space(name)
    resolutions = _resolutions(space)
    layers = enumerate_layers(space, resolutions)
    rng = np.random.default_rng(0)
    archs = [replace(a, resolution=int(rng.choice(resolutions))) for a in sample(space, 60, seed=1)]
    archs += [replace(largest(space), resolution=resolutions[-1]),
              replace(smallest(space), resolution=resolutions[0])]
    for arch in archs:
        missing = [k for k in layer_keys(space, arch) if k not in layers]
        assert not missing, missing
    kinds = {layer.kind for layer in layers.values()}
    assert kinds == {"stem", "block", "head"}


def test_enumeration_rejects_unknown_resolution():
    with pytest.raises(ArchError, match="allowed"):
        enumerate_layers(get_space("ofa_mbv3_cifar"), [33])


@pytest.mark.parametrize("name", ["ofa_mbv3_cifar", "mnasnet"])
def test_analytic_macs_match_supernets_counts(name):
    from supernets import built_counts as arch_counts

    space = get_space(name)
    for arch in sample(space, 2, seed=3):
        assert network_macs(space, arch) == arch_counts(space, arch).macs


def test_arch_features_fixed_width():
    space = get_space("ofa_mbv3_w1.0")
    x = arch_features(space, sample(space, 4, seed=0))
    assert x.shape[0] == 4 and np.isfinite(x).all()
