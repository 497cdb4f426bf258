"""Front stores: per device, the non-dominated subnets of a search with everything needed to use them.

``FrontStore`` is the contract; ``SQLiteFrontStore`` (a ``fronts.sqlite`` file in the run folder) and
``MemoryFrontStore`` implement it, and ``get_front_store`` picks one (as Optuna's ``get_storage``). The
contract tests in ``tests/search/test_fronts.py`` run against every implementation.

SQLite layout (``format`` 1 in table ``meta``)::

    members(device, arch_id, arch_json, arch_string, val_accuracy, test_accuracy, predicted_latency_ms,
            measured_latency_ms, macs, params, checkpoint, trial_number)   primary key (device, arch_id)
    reference_points(device, name, arch_json, accuracy, latency_ms)       primary key (device, name)
    measurements(device, arch_id, predicted_latency_ms, measured_latency_ms) primary key (device, arch_id)
    meta(key, value_json)

Accuracies are fractions in [0, 1]; latencies in milliseconds.
"""

from __future__ import annotations

import abc
import contextlib
import json
import os
import sqlite3
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from search_spaces import Arch

from .pareto import non_dominated_mask

__all__ = ["FrontMember", "FrontStore", "Measurement", "MemoryFrontStore", "ReferencePoint",
           "SQLiteFrontStore", "get_front_store", "non_dominated"]

FORMAT_VERSION = 1


@dataclass(frozen=True, slots=True)
class FrontMember:
    """One subnet of a device's front."""

    device: str
    arch: Arch
    arch_string: str
    arch_id: str
    # Validation accuracy (what the front is built on) and test accuracy (for reporting; None if not run).
    val_accuracy: float
    test_accuracy: float | None
    # Latency from the device's predictor, and re-measured on the device (None until measured).
    predicted_latency_ms: float
    measured_latency_ms: float | None
    macs: int
    params: int
    # The supernet checkpoint the weights come from.
    checkpoint: str | None = None
    trial_number: int | None = None

    @property
    def latency_ms(self) -> float:
        """Measured latency where known, else predicted: what the front is built on."""
        return self.predicted_latency_ms if self.measured_latency_ms is None else self.measured_latency_ms

    def to_dict(self) -> dict[str, Any]:
        return {
            "device": self.device, "arch": self.arch.to_dict(), "arch_string": self.arch_string,
            "arch_id": self.arch_id, "val_accuracy": self.val_accuracy, "test_accuracy": self.test_accuracy,
            "predicted_latency_ms": self.predicted_latency_ms, "measured_latency_ms": self.measured_latency_ms,
            "latency_ms": self.latency_ms, "macs": self.macs, "params": self.params,
            "checkpoint": self.checkpoint, "trial_number": self.trial_number,
        }


@dataclass(frozen=True, slots=True)
class ReferencePoint:
    """A fixed subnet drawn for orientation (the space's largest and smallest)."""

    device: str
    name: str
    arch: Arch
    accuracy: float
    latency_ms: float


@dataclass(frozen=True, slots=True)
class Measurement:
    """Predicted against measured latency of one subnet on one device (hardware in the loop)."""

    device: str
    arch_id: str
    predicted_latency_ms: float
    measured_latency_ms: float


def non_dominated(members: Sequence[FrontMember]) -> list[FrontMember]:
    """Distinct (by arch id) non-dominated members on (val accuracy, latency), latency ascending."""
    distinct = list({m.arch_id: m for m in members}.values())
    if not distinct:
        return []
    acc = np.array([m.val_accuracy for m in distinct])
    lat = np.array([m.latency_ms for m in distinct])
    mask = non_dominated_mask(acc, lat)
    kept = [m for m, k in zip(distinct, mask) if k]
    return sorted(kept, key=lambda m: (m.latency_ms, -m.val_accuracy))


class FrontStore(abc.ABC):
    """Per-device fronts of one run.

    Contract:

    - ``write_front(device, members)`` replaces the device's front with the non-dominated subset of
      ``members`` (by validation accuracy and ``latency_ms``, duplicates by arch id dropped); it is atomic:
      readers see the old front or the new one.
    - ``front(device)`` returns the stored members sorted by latency ascending (so accuracy ascending too);
      an unknown device gives an empty list. ``devices()`` lists devices with a stored front.
    - ``write_references`` / ``references`` keep the reference subnets drawn beside a front.
    - ``write_measurements`` / ``measurements`` keep hardware-in-the-loop results (upserts by arch id).
    - ``set_meta`` / ``get_meta`` keep small JSON values.
    - ``transaction()`` groups several writes into one atomic unit (nesting joins the outer one).
    """

    @abc.abstractmethod
    def write_front(self, device: str, members: Sequence[FrontMember]) -> None: ...

    @abc.abstractmethod
    def front(self, device: str) -> list[FrontMember]: ...

    @abc.abstractmethod
    def devices(self) -> list[str]: ...

    @abc.abstractmethod
    def write_references(self, device: str, points: Sequence[ReferencePoint]) -> None: ...

    @abc.abstractmethod
    def references(self, device: str) -> list[ReferencePoint]: ...

    @abc.abstractmethod
    def write_measurements(self, measurements: Sequence[Measurement]) -> None: ...

    @abc.abstractmethod
    def measurements(self, device: str) -> list[Measurement]: ...

    @abc.abstractmethod
    def set_meta(self, key: str, value: Any) -> None: ...

    @abc.abstractmethod
    def get_meta(self, key: str, default: Any = None) -> Any: ...

    @abc.abstractmethod
    def transaction(self) -> contextlib.AbstractContextManager[None]: ...


class MemoryFrontStore(FrontStore):
    """In-process store (tests, benchmarks)."""

    def __init__(self) -> None:
        self._fronts: dict[str, list[FrontMember]] = {}
        self._refs: dict[str, list[ReferencePoint]] = {}
        self._meas: dict[str, dict[str, Measurement]] = {}
        self._meta: dict[str, Any] = {}
        self._depth = 0
        self._snapshot: tuple | None = None

    def write_front(self, device: str, members: Sequence[FrontMember]) -> None:
        self._fronts[device] = non_dominated(members)

    def front(self, device: str) -> list[FrontMember]:
        return list(self._fronts.get(device, []))

    def devices(self) -> list[str]:
        return sorted(d for d, m in self._fronts.items() if m)

    def write_references(self, device: str, points: Sequence[ReferencePoint]) -> None:
        self._refs[device] = sorted(points, key=lambda p: p.name)

    def references(self, device: str) -> list[ReferencePoint]:
        return list(self._refs.get(device, []))

    def write_measurements(self, measurements: Sequence[Measurement]) -> None:
        for m in measurements:
            self._meas.setdefault(m.device, {})[m.arch_id] = m

    def measurements(self, device: str) -> list[Measurement]:
        return sorted(self._meas.get(device, {}).values(), key=lambda m: m.arch_id)

    def set_meta(self, key: str, value: Any) -> None:
        self._meta[key] = json.loads(json.dumps(value))

    def get_meta(self, key: str, default: Any = None) -> Any:
        return self._meta.get(key, default)

    @contextlib.contextmanager
    def transaction(self) -> Iterator[None]:
        if self._depth == 0:
            self._snapshot = ({k: list(v) for k, v in self._fronts.items()}, dict(self._refs),
                              {k: dict(v) for k, v in self._meas.items()}, dict(self._meta))
        self._depth += 1
        try:
            yield
        except BaseException:
            if self._depth == 1 and self._snapshot is not None:
                self._fronts, self._refs, self._meas, self._meta = self._snapshot
            raise
        finally:
            self._depth -= 1


_SCHEMA = """
CREATE TABLE IF NOT EXISTS members (
    device TEXT NOT NULL, arch_id TEXT NOT NULL, arch_json TEXT NOT NULL, arch_string TEXT NOT NULL,
    val_accuracy REAL NOT NULL, test_accuracy REAL, predicted_latency_ms REAL NOT NULL,
    measured_latency_ms REAL, macs INTEGER NOT NULL, params INTEGER NOT NULL, checkpoint TEXT,
    trial_number INTEGER, PRIMARY KEY (device, arch_id));
CREATE TABLE IF NOT EXISTS reference_points (
    device TEXT NOT NULL, name TEXT NOT NULL, arch_json TEXT NOT NULL, accuracy REAL, latency_ms REAL NOT NULL,
    PRIMARY KEY (device, name));
CREATE TABLE IF NOT EXISTS measurements (
    device TEXT NOT NULL, arch_id TEXT NOT NULL, predicted_latency_ms REAL NOT NULL,
    measured_latency_ms REAL NOT NULL, PRIMARY KEY (device, arch_id));
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value_json TEXT NOT NULL);
"""

_MEMBER_COLUMNS = ("device", "arch_id", "arch_json", "arch_string", "val_accuracy", "test_accuracy",
                   "predicted_latency_ms", "measured_latency_ms", "macs", "params", "checkpoint", "trial_number")


def _nan_to_none(value: float | None) -> float | None:
    return None if value is None or (isinstance(value, float) and np.isnan(value)) else float(value)


class SQLiteFrontStore(FrontStore):
    """A SQLite file; every write runs inside one transaction (``BEGIN IMMEDIATE`` ... ``COMMIT``)."""

    def __init__(self, path: str | os.PathLike[str], create: bool = True) -> None:
        self.path = Path(path)
        if not create and not self.path.exists():
            raise FileNotFoundError(str(self.path))
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._conn = sqlite3.connect(str(self.path), isolation_level=None, timeout=30.0, check_same_thread=False)
        self._lock = threading.RLock()
        self._depth = 0
        with self.transaction():
            for statement in _SCHEMA.split(";"):
                if statement.strip():
                    self._conn.execute(statement)
            row = self._conn.execute("SELECT value_json FROM meta WHERE key='format'").fetchone()
            if row is None:
                self._conn.execute("INSERT INTO meta VALUES ('format', ?)", (json.dumps(FORMAT_VERSION),))
            elif json.loads(row[0]) != FORMAT_VERSION:
                raise ValueError(f"{self.path}: front store format {row[0]}, this version reads {FORMAT_VERSION}")

    def close(self) -> None:
        self._conn.close()

    @contextlib.contextmanager
    def transaction(self) -> Iterator[None]:
        with self._lock:
            if self._depth:
                self._depth += 1
                try:
                    yield
                finally:
                    self._depth -= 1
                return
            self._conn.execute("BEGIN IMMEDIATE")
            self._depth = 1
            try:
                yield
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise
            else:
                self._conn.execute("COMMIT")
            finally:
                self._depth = 0

    def write_front(self, device: str, members: Sequence[FrontMember]) -> None:
        rows = [(m.device if m.device == device else device, m.arch_id, json.dumps(m.arch.to_dict(), sort_keys=True),
                 m.arch_string, float(m.val_accuracy), _nan_to_none(m.test_accuracy),
                 float(m.predicted_latency_ms), _nan_to_none(m.measured_latency_ms), int(m.macs), int(m.params),
                 m.checkpoint, m.trial_number)
                for m in non_dominated(members)]
        with self.transaction():
            self._conn.execute("DELETE FROM members WHERE device = ?", (device,))
            self._conn.executemany(f"INSERT INTO members ({', '.join(_MEMBER_COLUMNS)}) VALUES "
                                   f"({', '.join('?' * len(_MEMBER_COLUMNS))})", rows)

    def front(self, device: str) -> list[FrontMember]:
        with self._lock:
            rows = self._conn.execute(f"SELECT {', '.join(_MEMBER_COLUMNS)} FROM members WHERE device = ?",
                                      (device,)).fetchall()
        members = [FrontMember(device=r[0], arch_id=r[1], arch=Arch.from_dict(json.loads(r[2])), arch_string=r[3],
                               val_accuracy=r[4], test_accuracy=r[5], predicted_latency_ms=r[6],
                               measured_latency_ms=r[7], macs=r[8], params=r[9], checkpoint=r[10],
                               trial_number=r[11])
                   for r in rows]
        return sorted(members, key=lambda m: (m.latency_ms, -m.val_accuracy))

    def devices(self) -> list[str]:
        with self._lock:
            return [r[0] for r in self._conn.execute("SELECT DISTINCT device FROM members ORDER BY device")]

    def write_references(self, device: str, points: Sequence[ReferencePoint]) -> None:
        with self.transaction():
            self._conn.execute("DELETE FROM reference_points WHERE device = ?", (device,))
            self._conn.executemany("INSERT INTO reference_points VALUES (?, ?, ?, ?, ?)",
                                   [(device, p.name, json.dumps(p.arch.to_dict(), sort_keys=True),
                                     _nan_to_none(p.accuracy), float(p.latency_ms)) for p in points])

    def references(self, device: str) -> list[ReferencePoint]:
        with self._lock:
            rows = self._conn.execute("SELECT device, name, arch_json, accuracy, latency_ms FROM reference_points "
                                      "WHERE device = ? ORDER BY name", (device,)).fetchall()
        return [ReferencePoint(device=r[0], name=r[1], arch=Arch.from_dict(json.loads(r[2])),
                               accuracy=float("nan") if r[3] is None else r[3], latency_ms=r[4]) for r in rows]

    def write_measurements(self, measurements: Sequence[Measurement]) -> None:
        with self.transaction():
            self._conn.executemany("INSERT OR REPLACE INTO measurements VALUES (?, ?, ?, ?)",
                                   [(m.device, m.arch_id, float(m.predicted_latency_ms), float(m.measured_latency_ms))
                                    for m in measurements])

    def measurements(self, device: str) -> list[Measurement]:
        with self._lock:
            rows = self._conn.execute("SELECT * FROM measurements WHERE device = ? ORDER BY arch_id",
                                      (device,)).fetchall()
        return [Measurement(*r) for r in rows]

    def set_meta(self, key: str, value: Any) -> None:
        with self.transaction():
            self._conn.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (key, json.dumps(value, sort_keys=True)))

    def get_meta(self, key: str, default: Any = None) -> Any:
        with self._lock:
            row = self._conn.execute("SELECT value_json FROM meta WHERE key = ?", (key,)).fetchone()
        return default if row is None else json.loads(row[0])


def get_front_store(store: FrontStore | str | os.PathLike[str] | None = None, create: bool = True) -> FrontStore:
    """A store from ``None`` (in memory), a path (SQLite file) or a store (passed through)."""
    if store is None:
        return MemoryFrontStore()
    if isinstance(store, FrontStore):
        return store
    return SQLiteFrontStore(store, create=create)


def with_measured(member: FrontMember, measured_ms: float) -> FrontMember:
    """The member with its measured latency set."""
    return replace(member, measured_latency_ms=float(measured_ms))
