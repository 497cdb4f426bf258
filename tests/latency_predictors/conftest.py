from __future__ import annotations

import os
from pathlib import Path

import pytest

from latency_predictors import Device, LayerSpec, Measurement

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def builder():
    from nas.latency_builders import StaticBuilder

    return StaticBuilder()


@pytest.fixture
def ofa_lut_dir() -> Path:
    path = Path(os.environ.get("HWNAS_OFA_LUT_DIR", REPO.parent / "shared" / "data" / "ofa_note10_lut"))
    if not path.is_dir():
        pytest.skip(f"OFA lookup tables not found at {path} (set HWNAS_OFA_LUT_DIR)")
    return path


@pytest.fixture
def device() -> Device:
    return Device(id="local-cpu-1t-torch", backend="torch", threads=1)


def fake_latency(layer: LayerSpec) -> float:
    """A deterministic stand-in for a timing: grows with the layer's input size and channels."""
    c, h, w = layer.input_shape
    return 0.01 + 1e-6 * c * h * w + 0.001 * len(layer.key) / 100


class CountingMeasure:
    """A measure callback that counts calls per key and can fail after ``fail_after`` calls."""

    def __init__(self, fail_after: int | None = None) -> None:
        self.calls: dict[str, int] = {}
        self.fail_after = fail_after

    def __call__(self, layer: LayerSpec) -> Measurement:
        if self.fail_after is not None and sum(self.calls.values()) >= self.fail_after:
            raise KeyboardInterrupt("simulated interruption")
        self.calls[layer.key] = self.calls.get(layer.key, 0) + 1
        ms = fake_latency(layer)
        return Measurement(latency_ms=ms, median_ms=ms, spread=0.0, kept=1, rejected=0)
