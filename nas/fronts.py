"""Front stores: per device, the non-dominated subnets of a search with everything needed to use them.

``FrontStore`` is the contract; ``SQLiteFrontStore`` (a ``fronts.sqlite`` file in the run folder) and
``MemoryFrontStore`` implement it, and ``get_front_store`` picks one (as Optuna's ``get_storage``). The
contract tests in ``tests/search/test_fronts.py`` run against every implementation.

A front member is a subnet at a precision: its arch and its precision policy (``policy``: the canonical
policy string of ``search_spaces.policy_to_string``, ``p:f,i,...``; None for fp32 throughout). Members and
measurements are told apart by their member id (``member_id``: the arch id for fp32, ``<arch id>+<policy>``
otherwise), so one arch can sit on a front both in fp32 and in int8.

SQLite layout (``format`` 2 in table ``meta``)::

    members(device, member_id, arch_id, policy, arch_json, arch_string, val_accuracy, test_accuracy,
            predicted_latency_ms, measured_latency_ms, macs, params, checkpoint, trial_number)
                                                                       primary key (device, member_id)
    reference_points(device, name, arch_json, accuracy, latency_ms)       primary key (device, name)
    measurements(device, member_id, arch_id, policy, predicted_latency_ms, measured_latency_ms)
                                                                       primary key (device, member_id)
    meta(key, value_json)

``policy`` is NULL for fp32 members. A format-1 file (no ``member_id`` or ``policy``: every member fp32,
keyed by arch id) is migrated in place when opened, in one transaction; a newer format is a ``UsageError``.
A damaged file (not a database, truncated, a row whose values are not what was written) is a
``DamagedFileError`` naming it when it is opened or read; opening a store that should exist (``create=False``)
never writes into such a file.

Accuracies are fractions in [0, 1]; latencies in milliseconds.
"""

from __future__ import annotations

import abc
import contextlib
import json
import math
import os
import sqlite3
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from search_spaces import (
    READ_ERRORS,
    Arch,
    DamagedFileError,
    UnknownSpaceError,
    get_space,
    policy_from_string,
    policy_to_string,
    precision_label,
    reading,
)

from .errors import BusyError, UsageError
from .pareto import non_dominated_mask

__all__ = ["FORMAT_VERSION", "FRONTS_REMEDY", "FrontMember", "FrontStore", "Measurement", "MemoryFrontStore",
           "ReferencePoint", "SQLiteFrontStore", "check_front_store", "get_front_store", "member_id", "non_dominated"]

FORMAT_VERSION = 2
# Formats this version opens: older ones are migrated in place.
_MIGRATED_FORMATS = (1,)
_POLICY_PREFIX = "p:"
# What to do about a damaged store: its members are derived data, the run's study still holds the trials.
FRONTS_REMEDY = ("move it away; the run's search journal still holds the trials, so `nas search CONFIG` writes the "
                 "fronts again")
# What SQLite and the rows it returns raise for a damaged store: not a database, a malformed image, a row whose
# arch or numbers do not parse.
_FRONT_READ_ERRORS = (*READ_ERRORS, sqlite3.DatabaseError)


def member_id(arch_id: str, policy: str | None) -> str:
    """The id of a subnet at a precision: ``arch_id`` for fp32 throughout (``policy`` None), else
    ``<arch_id>+<policy>`` (``policy`` the canonical policy string)."""
    return arch_id if policy is None else f"{arch_id}+{policy}"


def _checked_policy(policy: str | None, what: str) -> str | None:
    """``policy`` as stored: None for fp32 throughout (a policy string whose groups are all fp32 included)."""
    if policy is None:
        return None
    if not isinstance(policy, str) or not policy.startswith(_POLICY_PREFIX):
        raise ValueError(f"{what} policy {policy!r} is not a precision policy string ({_POLICY_PREFIX}...; None "
                         f"for fp32 throughout)")
    return None if precision_label(policy) == "fp32" else policy


def _member_policy(policy: str | None, arch: Arch, what: str) -> str | None:
    """``_checked_policy``, and for an arch of a registered space the policy parsed against it (canonical form):
    a string such as ``p:zz`` is a ``ValueError`` naming the bad group, not a member of precision ``z``."""
    policy = _checked_policy(policy, what)
    if policy is None:
        return None
    try:
        space = get_space(arch.space)
    except UnknownSpaceError:  # a space registered elsewhere (tests): the prefix check above is what we can do
        return policy
    return policy_to_string(policy_from_string(space, policy, arch))


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
    # The precision policy (canonical string, ``p:f,i,...``); None: fp32 throughout.
    policy: str | None = None

    def __post_init__(self) -> None:  # a uniform fp32 policy is no policy: one subnet, one member id
        object.__setattr__(self, "policy", _member_policy(self.policy, self.arch, f"front member {self.arch_id}:"))

    @property
    def latency_ms(self) -> float:
        """Measured latency where known, else predicted: what the front is built on."""
        return self.predicted_latency_ms if self.measured_latency_ms is None else self.measured_latency_ms

    @property
    def precision(self) -> str:
        """``fp32``, ``int8`` or ``mixed`` (``search_spaces.precision_label`` of the policy)."""
        return precision_label(self.policy)

    @property
    def member_id(self) -> str:
        """What tells members apart: the arch id, with the policy unless fp32 throughout."""
        return member_id(self.arch_id, self.policy)

    def to_dict(self) -> dict[str, Any]:
        return {
            "device": self.device, "arch": self.arch.to_dict(), "arch_string": self.arch_string,
            "arch_id": self.arch_id, "member_id": self.member_id, "policy": self.policy,
            "precision": self.precision, "val_accuracy": self.val_accuracy, "test_accuracy": self.test_accuracy,
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
    # The precision policy the subnet was measured at (canonical string); None: fp32 throughout.
    policy: str | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "policy", _checked_policy(self.policy, f"measurement of {self.arch_id}:"))

    @property
    def member_id(self) -> str:
        """The id of the front member measured (``member_id(arch_id, policy)``)."""
        return member_id(self.arch_id, self.policy)


def non_dominated(members: Sequence[FrontMember]) -> list[FrontMember]:
    """Distinct (by member id) non-dominated members on (val accuracy, latency), latency ascending."""
    distinct = list({m.member_id: m for m in members}.values())
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
      ``members`` (by validation accuracy and ``latency_ms``, duplicates by member id dropped: one arch at
      two precisions is two members); it is atomic: readers see the old front or the new one.
    - ``front(device)`` returns the stored members sorted by latency ascending (so accuracy ascending too);
      an unknown device gives an empty list. ``devices()`` lists devices with a stored front.
    - ``write_references`` / ``references`` keep the reference subnets drawn beside a front.
    - ``write_measurements`` / ``measurements`` keep hardware-in-the-loop results (upserts by member id;
      ``measurements`` sorted by member id).
    - Members and measurements keep their ``policy`` (None stays None).
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
            self._meas.setdefault(m.device, {})[m.member_id] = m

    def measurements(self, device: str) -> list[Measurement]:
        return sorted(self._meas.get(device, {}).values(), key=lambda m: m.member_id)

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
    device TEXT NOT NULL, member_id TEXT NOT NULL, arch_id TEXT NOT NULL, policy TEXT, arch_json TEXT NOT NULL,
    arch_string TEXT NOT NULL, val_accuracy REAL NOT NULL, test_accuracy REAL, predicted_latency_ms REAL NOT NULL,
    measured_latency_ms REAL, macs INTEGER NOT NULL, params INTEGER NOT NULL, checkpoint TEXT,
    trial_number INTEGER, PRIMARY KEY (device, member_id));
CREATE TABLE IF NOT EXISTS reference_points (
    device TEXT NOT NULL, name TEXT NOT NULL, arch_json TEXT NOT NULL, accuracy REAL, latency_ms REAL NOT NULL,
    PRIMARY KEY (device, name));
CREATE TABLE IF NOT EXISTS measurements (
    device TEXT NOT NULL, member_id TEXT NOT NULL, arch_id TEXT NOT NULL, policy TEXT,
    predicted_latency_ms REAL NOT NULL, measured_latency_ms REAL NOT NULL, PRIMARY KEY (device, member_id));
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value_json TEXT NOT NULL);
"""

_MEMBER_COLUMNS = ("device", "member_id", "arch_id", "policy", "arch_json", "arch_string", "val_accuracy",
                   "test_accuracy", "predicted_latency_ms", "measured_latency_ms", "macs", "params", "checkpoint",
                   "trial_number")
_MEASUREMENT_COLUMNS = ("device", "member_id", "arch_id", "policy", "predicted_latency_ms", "measured_latency_ms")
# Format 1's columns, copied into format 2's tables by the migration (member id = arch id, policy NULL).
_FORMAT1_MEMBER_COLUMNS = ("device", "arch_id", "arch_json", "arch_string", "val_accuracy", "test_accuracy",
                           "predicted_latency_ms", "measured_latency_ms", "macs", "params", "checkpoint",
                           "trial_number")
_FORMAT1_MEASUREMENT_COLUMNS = ("device", "arch_id", "predicted_latency_ms", "measured_latency_ms")


def _nan_to_none(value: float | None) -> float | None:
    return None if value is None or (isinstance(value, float) and np.isnan(value)) else float(value)


def _number(value: Any, what: str, low: float = -math.inf, high: float = math.inf, *, integer: bool = False,
            positive: bool = False, optional: bool = False, missing: Any = None) -> Any:
    """A stored number as written: finite, in [low, high], above 0 where ``positive``, an int where ``integer``;
    None (returned as ``missing``) only where ``optional``. Anything else is a ``ValueError`` naming it, which
    the reads turn into ``DamagedFileError``: a row edited or corrupted by hand, such as ``macs = 'x'``."""
    if value is None and optional:
        return missing
    kinds = (int,) if integer else (int, float)
    if not (isinstance(value, kinds) and not isinstance(value, bool) and math.isfinite(value)
            and low <= value <= high and (value > 0 or not positive)):
        expected = ("an integer" if integer else "a positive number" if positive else "a finite number") + \
            (f" in [{low:g}, {high:g}]" if math.isfinite(low) and math.isfinite(high) else
             f" >= {low:g}" if math.isfinite(low) else "")
        raise ValueError(f"{what} is {value!r}; expected {expected}")
    return value


def _text(value: Any, what: str, optional: bool = False) -> Any:
    if (value is None and optional) or isinstance(value, str):
        return value
    raise ValueError(f"{what} is {value!r}; expected text")


def _member_from_row(r: Sequence[Any]) -> FrontMember:
    """A ``members`` row (``_MEMBER_COLUMNS``) as a member, every column checked (``_number``, ``_text``)."""
    what = f"member {r[1]!r} of {r[0]!r}:"
    return FrontMember(
        device=_text(r[0], "member device"), arch_id=_text(r[2], f"{what} arch_id"), policy=r[3],
        arch=Arch.from_dict(json.loads(r[4])), arch_string=_text(r[5], f"{what} arch_string"),
        val_accuracy=_number(r[6], f"{what} val_accuracy", 0.0, 1.0),
        test_accuracy=_number(r[7], f"{what} test_accuracy", 0.0, 1.0, optional=True),
        predicted_latency_ms=_number(r[8], f"{what} predicted_latency_ms", positive=r[9] is None),
        measured_latency_ms=_number(r[9], f"{what} measured_latency_ms", positive=True, optional=True),
        macs=_number(r[10], f"{what} macs", 0, integer=True), params=_number(r[11], f"{what} params", 0, integer=True),
        checkpoint=_text(r[12], f"{what} checkpoint", optional=True),
        trial_number=_number(r[13], f"{what} trial_number", 0, integer=True, optional=True))


class SQLiteFrontStore(FrontStore):
    """A SQLite file; every write runs inside one transaction (``BEGIN IMMEDIATE`` ... ``COMMIT``).

    Opening a format-1 file migrates it to format 2 in place, in one transaction (its members and
    measurements become fp32 ones); a file of a newer format is a ``UsageError``. A damaged file (not a
    database, malformed, a bad row) is a ``DamagedFileError`` naming it, when opened or read. ``create=False``
    opens a store that should exist: a missing file is ``FileNotFoundError``, and an empty file or one without
    a front store's ``format`` is damaged; nothing is written into it (no schema).
    """

    def __init__(self, path: str | os.PathLike[str], create: bool = True) -> None:
        self.path = Path(path)
        if not create and not self.path.exists():
            raise FileNotFoundError(str(self.path))
        if not create and self.path.is_file() and self.path.stat().st_size == 0:
            raise DamagedFileError(self.path, "front store", "an empty file", FRONTS_REMEDY)
        if create:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        existed = self.path.is_file() and self.path.stat().st_size > 0
        self._lock = threading.RLock()
        self._depth = 0
        with self._reading():
            self._conn = sqlite3.connect(str(self.path), isolation_level=None, timeout=30.0,
                                         check_same_thread=False)
        try:
            if existed:  # every page read once: a truncated or overwritten file fails here, not mid-write
                with self._reading():
                    check = self._conn.execute("PRAGMA quick_check").fetchone()
                    if check is None or check[0] != "ok":
                        raise sqlite3.DatabaseError(f"integrity check: {check[0] if check else 'no answer'}")
            self._open(create)
        except BaseException:
            self._conn.close()
            raise

    @contextlib.contextmanager
    def _reading(self) -> Iterator[None]:
        """Reads of the file: what a damaged one raises becomes ``DamagedFileError`` naming it; a database still
        locked by another process after the timeout is not damage (``BusyError``)."""
        with reading(self.path, "front store", FRONTS_REMEDY, _FRONT_READ_ERRORS):
            try:
                yield
            except sqlite3.OperationalError as exc:
                if "locked" in str(exc) or "busy" in str(exc):
                    raise BusyError(f"front store {self.path} is locked by another process ({exc}); run the "
                                    f"command again when it has finished") from exc
                raise

    def _open(self, create: bool) -> None:
        """Check the stored format (migrating format 1); with ``create``, write the schema of a new file."""
        with self.transaction():
            readable = ", ".join(map(str, (*_MIGRATED_FORMATS, FORMAT_VERSION)))
            with self._reading():  # the migration's and schema's failures below are writes, not damage
                version = self._stored_format()
                if version is None and not create:
                    raise ValueError("no front store format in table meta")
                if version is not None and version not in _MIGRATED_FORMATS and version != FORMAT_VERSION and \
                        not (isinstance(version, int) and version > FORMAT_VERSION):
                    raise ValueError(f"front store format {version!r}; this version reads formats {readable}")
            if version in _MIGRATED_FORMATS:
                self._migrate_from_1()
            elif isinstance(version, int) and version > FORMAT_VERSION:
                raise UsageError(f"front store {self.path} is format {version}, written by a newer hwnas; this "
                                 f"version reads formats {readable}: upgrade hwnas to read it")
            if create:
                for statement in _SCHEMA.split(";"):
                    if statement.strip():
                        self._conn.execute(statement)
            if version is None:
                self._conn.execute("INSERT OR REPLACE INTO meta VALUES ('format', ?)",
                                   (json.dumps(FORMAT_VERSION),))

    def _stored_format(self) -> Any:
        """The ``format`` in ``meta``; None for a new file (no ``meta`` table or no ``format`` row)."""
        if self._conn.execute("SELECT name FROM sqlite_master WHERE type='table' AND name='meta'").fetchone() is None:
            return None
        row = self._conn.execute("SELECT value_json FROM meta WHERE key='format'").fetchone()
        return None if row is None else json.loads(row[0])

    def _migrate_from_1(self) -> None:
        """Format 1 to 2 (inside the caller's transaction): member id and policy columns, keyed by member id;
        every stored member and measurement is fp32 (member id = arch id, policy NULL)."""
        for table in ("members", "measurements"):
            self._conn.execute(f"ALTER TABLE {table} RENAME TO {table}_format1")
        for statement in _SCHEMA.split(";"):
            if statement.strip():
                self._conn.execute(statement)
        for table, old_columns in (("members", _FORMAT1_MEMBER_COLUMNS),
                                   ("measurements", _FORMAT1_MEASUREMENT_COLUMNS)):
            columns = ", ".join(old_columns)
            self._conn.execute(f"INSERT INTO {table} (member_id, policy, {columns}) "
                               f"SELECT arch_id, NULL, {columns} FROM {table}_format1")
            self._conn.execute(f"DROP TABLE {table}_format1")
        self._conn.execute("UPDATE meta SET value_json = ? WHERE key = 'format'", (json.dumps(FORMAT_VERSION),))

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
        rows = [(device, m.member_id, m.arch_id, m.policy, json.dumps(m.arch.to_dict(), sort_keys=True),
                 m.arch_string, float(m.val_accuracy), _nan_to_none(m.test_accuracy),
                 float(m.predicted_latency_ms), _nan_to_none(m.measured_latency_ms), int(m.macs), int(m.params),
                 m.checkpoint, m.trial_number)
                for m in non_dominated(members)]
        with self.transaction():
            self._conn.execute("DELETE FROM members WHERE device = ?", (device,))
            self._conn.executemany(f"INSERT INTO members ({', '.join(_MEMBER_COLUMNS)}) VALUES "
                                   f"({', '.join('?' * len(_MEMBER_COLUMNS))})", rows)

    def front(self, device: str) -> list[FrontMember]:
        with self._lock, self._reading():
            rows = self._conn.execute(f"SELECT {', '.join(_MEMBER_COLUMNS)} FROM members WHERE device = ?",
                                      (device,)).fetchall()
            members = [_member_from_row(r) for r in rows]
        return sorted(members, key=lambda m: (m.latency_ms, -m.val_accuracy))

    def devices(self) -> list[str]:
        with self._lock, self._reading():
            return [r[0] for r in self._conn.execute("SELECT DISTINCT device FROM members ORDER BY device")]

    def write_references(self, device: str, points: Sequence[ReferencePoint]) -> None:
        with self.transaction():
            self._conn.execute("DELETE FROM reference_points WHERE device = ?", (device,))
            self._conn.executemany("INSERT INTO reference_points VALUES (?, ?, ?, ?, ?)",
                                   [(device, p.name, json.dumps(p.arch.to_dict(), sort_keys=True),
                                     _nan_to_none(p.accuracy), float(p.latency_ms)) for p in points])

    def references(self, device: str) -> list[ReferencePoint]:
        with self._lock, self._reading():
            rows = self._conn.execute("SELECT device, name, arch_json, accuracy, latency_ms FROM reference_points "
                                      "WHERE device = ? ORDER BY name", (device,)).fetchall()
            return [ReferencePoint(device=r[0], name=r[1], arch=Arch.from_dict(json.loads(r[2])),
                                   accuracy=_number(r[3], f"reference {r[1]!r} of {device!r}: accuracy",
                                                    optional=True, missing=float("nan")),
                                   latency_ms=_number(r[4], f"reference {r[1]!r} of {device!r}: latency_ms"))
                    for r in rows]

    def write_measurements(self, measurements: Sequence[Measurement]) -> None:
        with self.transaction():
            self._conn.executemany(f"INSERT OR REPLACE INTO measurements ({', '.join(_MEASUREMENT_COLUMNS)}) "
                                   f"VALUES ({', '.join('?' * len(_MEASUREMENT_COLUMNS))})",
                                   [(m.device, m.member_id, m.arch_id, m.policy, float(m.predicted_latency_ms),
                                     float(m.measured_latency_ms)) for m in measurements])

    def measurements(self, device: str) -> list[Measurement]:
        with self._lock, self._reading():
            rows = self._conn.execute("SELECT device, arch_id, predicted_latency_ms, measured_latency_ms, policy "
                                      "FROM measurements WHERE device = ? ORDER BY member_id", (device,)).fetchall()
            return [Measurement(r[0], _text(r[1], "measurement arch_id"),
                                _number(r[2], f"measurement of {r[1]} on {device!r}: predicted_latency_ms"),
                                _number(r[3], f"measurement of {r[1]} on {device!r}: measured_latency_ms",
                                        positive=True),
                                r[4]) for r in rows]

    def set_meta(self, key: str, value: Any) -> None:
        with self.transaction():
            self._conn.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (key, json.dumps(value, sort_keys=True)))

    def get_meta(self, key: str, default: Any = None) -> Any:
        with self._lock, self._reading():
            row = self._conn.execute("SELECT value_json FROM meta WHERE key = ?", (key,)).fetchone()
            return default if row is None else json.loads(row[0])


def get_front_store(store: FrontStore | str | os.PathLike[str] | None = None, create: bool = True) -> FrontStore:
    """A store from ``None`` (in memory), a path (SQLite file) or a store (passed through)."""
    if store is None:
        return MemoryFrontStore()
    if isinstance(store, FrontStore):
        return store
    return SQLiteFrontStore(store, create=create)


def check_front_store(path: str | os.PathLike[str]) -> None:
    """Read the whole front store at ``path`` when there is one, writing nothing: a damaged file is a
    ``DamagedFileError`` naming it (what a search checks before its trials, not when it writes its fronts);
    no file, or an empty one (a store opened but never written), is fine: the search writes it, unless a file
    stands where its folder would be (a ``UsageError`` naming it)."""
    path = Path(path)
    if not path.exists():
        blocking = next((folder for folder in path.parents if folder.exists()), None)
        if blocking is not None and not blocking.is_dir():
            raise UsageError(f"front store {path} cannot be written: {blocking} is a file, not a folder; move it "
                             f"away so the search can write its fronts there")
        return
    if path.is_file() and path.stat().st_size == 0:
        return
    store = SQLiteFrontStore(path, create=False)
    try:
        for device in store.devices():
            store.front(device)
            store.references(device)
            store.measurements(device)
    finally:
        store.close()


def with_measured(member: FrontMember, measured_ms: float) -> FrontMember:
    """The member with its measured latency set."""
    return replace(member, measured_latency_ms=float(measured_ms))
