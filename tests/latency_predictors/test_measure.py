from __future__ import annotations

import threading
import time

import numpy as np
import pytest
import torch

from latency_predictors import (
    BACKENDS,
    MeasureConfig,
    NoisyMeasurementWarning,
    device_lock,
    get_backend,
    measure_module,
)
from latency_predictors.measure import SelfTimed, summarize, time_callable, time_interleaved

TINY = MeasureConfig(warmup=1, repeats=5, retries=0, noise_threshold=10.0)


def test_summarize_rejects_outliers_and_reports_spread():
    m = summarize([1.0, 1.0, 1.1, 0.9, 1.0, 50.0], quantile=0.5)
    assert m.rejected == 1 and m.kept == 5
    assert m.median_ms == pytest.approx(1.0)
    assert 0 <= m.spread < 0.2
    low = summarize(np.linspace(1, 2, 101), quantile=0.1)
    assert low.latency_ms == pytest.approx(1.1)


def test_noisy_series_is_remeasured_then_warns():
    calls = []
    rng = np.random.default_rng(0)

    def run():
        calls.append(1)
        time.sleep(float(rng.choice([0.0, 0.002])))

    with pytest.warns(NoisyMeasurementWarning):
        m = time_callable(run, MeasureConfig(warmup=0, repeats=6, noise_threshold=0.01, retries=1))
    assert m.noisy
    assert len(calls) == 12  # two series of six


def test_interleaved_measures_each_callable():
    counts = [0, 0]

    def make(i):
        def run():
            counts[i] += 1
        return run

    results = time_interleaved([make(0), make(1)], MeasureConfig(warmup=1, repeats=6, retries=0), rounds=3)
    assert len(results) == 2 and counts == [7, 7]


@pytest.mark.parametrize("name", [b for b in BACKENDS if b != "torch_compile"])
def test_backends_time_a_small_module(name):
    module = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.ReLU())
    m = measure_module(module, (1, 3, 8, 8), get_backend(name, 1), TINY)
    assert m.latency_ms > 0 and m.kept >= 1


def test_self_timed_runs_report_their_own_time():
    """A CUDA run times itself (CUDA events) and the protocol takes that time, not its clock's."""
    times = iter([9.0, 9.0] + [2.0, 2.0, 2.1, 1.9, 2.0, 40.0] * 3)
    m = time_callable(SelfTimed(lambda: next(times)), MeasureConfig(warmup=2, repeats=6, retries=0))
    assert m.median_ms == pytest.approx(2.0) and m.rejected == 1
    interleaved = time_interleaved([SelfTimed(lambda: 3.0)], MeasureConfig(warmup=1, repeats=4, retries=0), rounds=2)
    assert interleaved[0].latency_ms == 3.0


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("name", ["torch", "torch_compile"])
def test_cuda_backends_time_on_the_gpu(name):
    module = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.ReLU())
    m = measure_module(module, (4, 3, 32, 32), get_backend(name, 1, "cuda:0"), TINY)
    assert m.latency_ms > 0 and next(module.parameters()).is_cuda


def test_thread_clock_refuses_a_gpu():
    module = torch.nn.Conv2d(3, 8, 3)
    with pytest.raises(ValueError, match="cannot time a cuda:0 device"):
        measure_module(module, (1, 3, 8, 8), get_backend("torch", 1, "cuda:0"),
                       MeasureConfig(clock="thread_cpu"))


def test_unknown_backend():
    with pytest.raises(ValueError, match="allowed"):
        get_backend("tflite")


def test_device_lock_is_exclusive(tmp_path):
    lock = tmp_path / "dev" / "measure.lock"
    entered = threading.Event()
    release = threading.Event()

    def holder():
        with device_lock(lock):
            entered.set()
            release.wait(5)

    # fcntl locks are per open file description, so a second open in another thread conflicts.
    t = threading.Thread(target=holder)
    t.start()
    entered.wait(5)
    with pytest.raises(TimeoutError):
        with device_lock(lock, timeout_s=0.2):
            pass
    release.set()
    t.join()
    with device_lock(lock, timeout_s=1):
        pass


def test_thread_cpu_clock_leaves_out_waiting():
    def run():
        time.sleep(0.003)

    wall = time_callable(run, MeasureConfig(warmup=0, repeats=3, retries=0, noise_threshold=10.0))
    cpu = time_callable(run, MeasureConfig(warmup=0, repeats=3, retries=0, noise_threshold=10.0,
                                           clock="thread_cpu"))
    assert wall.latency_ms >= 2.5 and cpu.latency_ms < 1.0
    with pytest.raises(ValueError, match="allowed: wall, thread_cpu"):
        MeasureConfig(clock="cycles")
    with pytest.raises(ValueError, match="one-thread"):
        measure_module(torch.nn.ReLU(), (1, 4), get_backend("torch", 2), MeasureConfig(clock="thread_cpu"))
