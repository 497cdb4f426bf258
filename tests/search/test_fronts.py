"""Contract tests run against every front store implementation."""

from __future__ import annotations

import json
import sqlite3
from dataclasses import replace

import numpy as np
import pytest

from nas import fronts
from nas.errors import UsageError
from nas.fronts import (
    FORMAT_VERSION,
    FrontMember,
    Measurement,
    MemoryFrontStore,
    ReferencePoint,
    SQLiteFrontStore,
    get_front_store,
    member_id,
    non_dominated,
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


# --- precision policies: one arch at several precisions -----------------------------------------------------

INT8 = "p:i,i,i,i,i,i,i"
MIXED = "p:f,i,i,i,i,i,f"


def test_member_ids_and_precisions():
    fp32 = members(1)[0]
    int8 = replace(fp32, policy=INT8)
    assert fp32.member_id == fp32.arch_id == member_id(fp32.arch_id, None) and fp32.precision == "fp32"
    assert int8.member_id == f"{fp32.arch_id}+{INT8}" == member_id(fp32.arch_id, INT8) and int8.precision == "int8"
    assert replace(fp32, policy=MIXED).precision == "mixed"
    # A policy that keeps every group in fp32 is no policy: the same subnet, the same member.
    assert replace(fp32, policy="p:f,f,f,f,f,f,f").policy is None
    assert {k: int8.to_dict()[k] for k in ("policy", "precision", "member_id")} == \
        {"policy": INT8, "precision": "int8", "member_id": int8.member_id}
    assert fp32.to_dict()["policy"] is None and fp32.to_dict()["precision"] == "fp32"
    with pytest.raises(ValueError, match="precision policy string"):
        replace(fp32, policy="int8")
    assert Measurement("dev", "a", 1.0, 1.1, INT8).member_id == f"a+{INT8}"


def _fp32_and_int8(fp32: FrontMember) -> list[FrontMember]:
    """The member and its int8 version: faster and a little less accurate, so both are non-dominated."""
    return [fp32, replace(fp32, policy=INT8, val_accuracy=fp32.val_accuracy - 0.01,
                          predicted_latency_ms=fp32.predicted_latency_ms / 2)]


def test_one_arch_sits_on_a_front_in_fp32_and_int8(store):
    fp32 = replace(members(1)[0], val_accuracy=0.9, predicted_latency_ms=4.0)
    pair = _fp32_and_int8(fp32)
    store.write_front("dev", pair + pair[1:])  # a duplicate by member id is dropped
    front = store.front("dev")
    assert [(m.arch_id, m.policy, m.precision) for m in front] == \
        [(fp32.arch_id, INT8, "int8"), (fp32.arch_id, None, "fp32")]
    assert front == sorted(pair, key=lambda m: m.latency_ms)
    # Dominated by its own int8 version (as fast, less accurate), the fp32 member drops off.
    store.write_front("dev", [replace(pair[0], val_accuracy=0.5, predicted_latency_ms=2.0), pair[1]])
    assert [m.policy for m in store.front("dev")] == [INT8]


def test_measurements_are_kept_per_member_with_their_policy(store):
    store.write_measurements([Measurement("dev", "a", 1.0, 1.2), Measurement("dev", "a", 0.5, 0.6, INT8),
                              Measurement("dev", "a", 0.5, 0.7, INT8)])
    assert store.measurements("dev") == [Measurement("dev", "a", 1.0, 1.2), Measurement("dev", "a", 0.5, 0.7, INT8)]
    assert [m.member_id for m in store.measurements("dev")] == ["a", f"a+{INT8}"]


def test_sqlite_round_trips_policies_across_reopen(tmp_path):
    path = tmp_path / "fronts.sqlite"
    first = SQLiteFrontStore(path)
    first.write_front("dev", _fp32_and_int8(members(1)[0]) + [replace(members(2)[1], policy=MIXED)])
    first.write_measurements([Measurement("dev", "a", 0.5, 0.7, MIXED)])
    expected, measured = first.front("dev"), first.measurements("dev")
    first.close()
    again = SQLiteFrontStore(path, create=False)
    assert again.front("dev") == expected and {m.policy for m in expected} == {None, INT8, MIXED}
    assert again.measurements("dev") == measured and again.get_meta("format") == FORMAT_VERSION == 2


# --- format 1 files ----------------------------------------------------------------------------------------

# The schema of format 1 as it was written (members and measurements keyed by arch id, no policy).
FORMAT1_SCHEMA = """
CREATE TABLE members (
    device TEXT NOT NULL, arch_id TEXT NOT NULL, arch_json TEXT NOT NULL, arch_string TEXT NOT NULL,
    val_accuracy REAL NOT NULL, test_accuracy REAL, predicted_latency_ms REAL NOT NULL,
    measured_latency_ms REAL, macs INTEGER NOT NULL, params INTEGER NOT NULL, checkpoint TEXT,
    trial_number INTEGER, PRIMARY KEY (device, arch_id));
CREATE TABLE reference_points (
    device TEXT NOT NULL, name TEXT NOT NULL, arch_json TEXT NOT NULL, accuracy REAL, latency_ms REAL NOT NULL,
    PRIMARY KEY (device, name));
CREATE TABLE measurements (
    device TEXT NOT NULL, arch_id TEXT NOT NULL, predicted_latency_ms REAL NOT NULL,
    measured_latency_ms REAL NOT NULL, PRIMARY KEY (device, arch_id));
CREATE TABLE meta (key TEXT PRIMARY KEY, value_json TEXT NOT NULL);
"""


def _format1_file(path, ms: list[FrontMember]) -> None:
    """A front store as format 1 wrote it: the members, one measurement, a reference point and meta."""
    conn = sqlite3.connect(str(path))
    conn.executescript(FORMAT1_SCHEMA)
    conn.executemany("INSERT INTO members VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                     [(m.device, m.arch_id, json.dumps(m.arch.to_dict(), sort_keys=True), m.arch_string,
                       m.val_accuracy, m.test_accuracy, m.predicted_latency_ms, m.measured_latency_ms, m.macs,
                       m.params, m.checkpoint, m.trial_number) for m in ms])
    conn.execute("INSERT INTO measurements VALUES (?, ?, ?, ?)", ("dev", ms[0].arch_id, 1.0, 1.5))
    conn.execute("INSERT INTO reference_points VALUES (?, ?, ?, ?, ?)",
                 ("dev", "largest", json.dumps(ms[0].arch.to_dict(), sort_keys=True), 0.9, 5.0))
    conn.executemany("INSERT INTO meta VALUES (?, ?)", [("format", "1"), ("space", json.dumps(SPACE.name))])
    conn.commit()
    conn.close()


def test_a_format1_file_is_migrated_in_place_keeping_everything(tmp_path):
    path = tmp_path / "fronts.sqlite"
    front = non_dominated(members())
    _format1_file(path, front)
    store = SQLiteFrontStore(path, create=False)
    assert store.front("dev") == front and all(m.policy is None for m in store.front("dev"))
    assert store.measurements("dev") == [Measurement("dev", front[0].arch_id, 1.0, 1.5)]
    assert store.references("dev")[0].arch == front[0].arch and store.get_meta("space") == SPACE.name
    assert store.get_meta("format") == 2
    # Now a format-2 file: an int8 member of a stored arch sits beside its fp32 one.
    store.write_front("dev", [*store.front("dev"), *_fp32_and_int8(front[0])[1:]])
    assert {(front[0].arch_id, None), (front[0].arch_id, INT8)} <= {(m.arch_id, m.policy) for m in store.front("dev")}
    store.close()
    tables = {r[0] for r in sqlite3.connect(str(path)).execute("SELECT name FROM sqlite_master WHERE type='table'")}
    assert tables == {"members", "reference_points", "measurements", "meta"}
    assert len(SQLiteFrontStore(path).front("dev")) == len(front) + 1


def test_a_failed_migration_leaves_the_format1_file_as_it_was(tmp_path, monkeypatch):
    path = tmp_path / "fronts.sqlite"
    _format1_file(path, non_dominated(members()))
    before = path.read_bytes()
    # Copying the measurements fails after the members were copied: the whole migration rolls back.
    monkeypatch.setattr(fronts, "_FORMAT1_MEASUREMENT_COLUMNS", ("device", "arch_id", "no_such_column"))
    with pytest.raises(sqlite3.OperationalError):
        SQLiteFrontStore(path)
    assert path.read_bytes() == before
    monkeypatch.undo()
    assert len(SQLiteFrontStore(path).front("dev")) == len(non_dominated(members()))


def test_a_newer_format_is_a_clear_error(tmp_path):
    path = tmp_path / "fronts.sqlite"
    SQLiteFrontStore(path).set_meta("format", FORMAT_VERSION + 1)
    before = path.read_bytes()
    with pytest.raises(UsageError, match=r"format 3, written by a newer hwnas.*reads formats 1, 2"):
        SQLiteFrontStore(path)
    assert path.read_bytes() == before
