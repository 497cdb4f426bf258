"""Cheap, deterministic objectives on real archs for the search tests."""

from __future__ import annotations

import numpy as np
import pytest

from search_spaces import encode_many, encoding_length, get_space

SPACE_NAME = "ofa_mbv3_cifar"


class ToyObjectives:
    """Accuracy and per-device latency as fixed positive linear functions of the arch encoding."""

    def __init__(self, space_name: str = SPACE_NAME, seed: int = 0) -> None:
        self.space = get_space(space_name)
        rng = np.random.default_rng(seed)
        n = encoding_length(self.space)
        self.w_acc = rng.random(n)
        self.w_lat = 0.5 * self.w_acc + 0.5 * rng.random(n)
        self.calls = 0

    def accuracy(self, archs):
        self.calls += 1
        x = encode_many(self.space, archs)
        return 0.5 + 0.4 * (x @ self.w_acc) / self.w_acc.sum()

    def latency(self, scale: float = 1.0):
        def predict(archs):
            return scale * (1.0 + encode_many(self.space, archs) @ self.w_lat)
        return predict


class StubCounts:
    params = 1000
    macs = 2000


def stub_counts(space, arch):
    return StubCounts()


@pytest.fixture
def toy():
    return ToyObjectives()
