"""Parameters and MACs from the plan (``search_spaces.arch_counts``, no module built) equal those of the built
static network, for every registered space: what fronts, `nas arch info` and the search report."""

from __future__ import annotations

import pytest

from search_spaces import arch_counts, get_space, largest, list_spaces, sample, smallest
from supernets import built_counts


@pytest.mark.parametrize("name", list_spaces())
def test_plan_counts_equal_the_built_network(name):
    space = get_space(name)
    archs = [largest(space), smallest(space), *sample(space, 6, seed=11)]
    for arch in archs:
        assert arch_counts(space, arch) == built_counts(space, arch), arch.arch_id
    # Another number of classes changes the classifier the same way in both.
    assert arch_counts(space, archs[2], num_classes=7) == built_counts(space, archs[2], num_classes=7)

