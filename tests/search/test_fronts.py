"""Contract tests run against every front store implementation."""

from __future__ import annotations

import numpy as np
import pytest

from nas.fronts import (
    FrontMember,
    Measurement,
    MemoryFrontStore,
    ReferencePoint,
    SQLiteFrontStore,
    get_front_store,
    with_measured,
)
from nas.pareto import non_dominated_mask
from search_spaces import arch_to_string, get_space, sample

SPACE = get_space("ofa_mbv3_cifar")


def members(n: int = 12, seed: int = 0) -> list[FrontMember]:
    rng = np.random.default_rng(seed)
    out = []
    for i, arch in enumerate(sample(SPACE, n, seed)):
        out.append(FrontMember(device="dev", arch=arch, arch_string=arch_to_string(SPACE, arch), arch_id=arch.arch_id,
                               val_accuracy=float(rng.random()), test_accuracy=None,
                               predicted_latency_ms=float(rng.random() * 10), measured_latency_ms=None,
                               macs=1000 + i, params=10 + i, checkpoint="runs/x/supernet.pt", trial_number=i))
    return out


@pytest.fixture(params=["memory", "sqlite"])
def store(request, tmp_path):
    if request.param == "memory":
        return MemoryFrontStore()
    return get_front_store(tmp_path / "fronts.sqlite")


def test_front_keeps_only_non_dominated_sorted(store):
    ms = members()
    store.write_front("dev", ms + ms[:3])  # duplicates by arch id are dropped
    front = store.front("dev")
    mask = non_dominated_mask([m.val_accuracy for m in ms], [m.latency_ms for m in ms])
    assert {m.arch_id for m in front} == {m.arch_id for m, k in zip(ms, mask) if k}
    lats = [m.latency_ms for m in front]
    assert lats == sorted(lats)
    assert [m.val_accuracy for m in front] == sorted(m.val_accuracy for m in front)
    assert front[0].arch in [m.arch for m in ms] and front[0].checkpoint == "runs/x/supernet.pt"
    assert store.devices() == ["dev"] and store.front("other") == []


def test_write_replaces_and_measured_latency_rebuilds_front(store):
    ms = members()
    store.write_front("dev", ms)
    front = store.front("dev")
    # Measuring the fastest member as very slow makes it dominated.
    slow = [with_measured(m, 100.0) if i == 0 else m for i, m in enumerate(front)]
    store.write_front("dev", slow)
    after = store.front("dev")
    assert front[0].arch_id not in {m.arch_id for m in after} or len(front) == 1
    assert all(m.measured_latency_ms is None for m in after)


def test_transaction_rolls_back(store):
    store.write_front("dev", members())
    before = store.front("dev")
    with pytest.raises(RuntimeError):
        with store.transaction():
            store.write_front("dev", members(seed=1))
            store.set_meta("k", 1)
            raise RuntimeError("boom")
    assert [m.arch_id for m in store.front("dev")] == [m.arch_id for m in before]
    assert store.get_meta("k") is None


def test_references_measurements_meta(store):
    arch = members(1)[0].arch
    store.write_references("dev", [ReferencePoint("dev", "largest", arch, 0.9, 5.0)])
    assert store.references("dev")[0].arch == arch and store.references("dev")[0].latency_ms == 5.0
    store.write_measurements([Measurement("dev", "a", 1.0, 1.2), Measurement("dev", "a", 1.0, 1.3)])
    assert store.measurements("dev") == [Measurement("dev", "a", 1.0, 1.3)]
    store.set_meta("budgets_ms", {"dev": 4.0})
    assert store.get_meta("budgets_ms") == {"dev": 4.0} and store.get_meta("missing", 3) == 3


def test_sqlite_persists_across_reopen(tmp_path):
    path = tmp_path / "fronts.sqlite"
    first = SQLiteFrontStore(path)
    first.write_front("dev", members())
    expected = first.front("dev")
    first.close()
    assert SQLiteFrontStore(path, create=False).front("dev") == expected
    with pytest.raises(FileNotFoundError):
        SQLiteFrontStore(tmp_path / "none.sqlite", create=False)
