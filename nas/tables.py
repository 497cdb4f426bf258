"""A run's fronts and trials as pandas DataFrames: for people (``nas fronts``) and programs (CSV, JSON).

One row per front member (``fronts_frame``) or per finished trial (``trials_frame``); accuracies are
fractions in [0, 1], latencies milliseconds; a value not known (a test accuracy not run, a latency not
measured) is missing (NaN, ``<NA>`` for integers; ``None`` in ``front_records``).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any

from .errors import UsageError

if TYPE_CHECKING:
    import pandas as pd

    from .fronts import FrontMember, FrontStore

__all__ = ["FRONT_COLUMNS", "front_members", "front_records", "fronts_frame", "members_frame", "trials_frame"]

# The columns of a front table, in order.
FRONT_COLUMNS = ("device", "arch_string", "arch_id", "policy", "precision", "resolution", "val_accuracy",
                 "test_accuracy", "latency_ms", "predicted_latency_ms", "measured_latency_ms", "macs", "params",
                 "trial_number")
_INTEGER_COLUMNS = ("resolution", "macs", "params", "trial_number")
_FLOAT_COLUMNS = ("val_accuracy", "test_accuracy", "latency_ms", "predicted_latency_ms", "measured_latency_ms")


def front_records(members: Iterable[FrontMember]) -> list[dict[str, Any]]:
    """One plain dict per member with the ``FRONT_COLUMNS`` (JSON-able: unknown values are None; ``policy``
    None for fp32 members)."""
    return [{"device": m.device, "arch_string": m.arch_string, "arch_id": m.arch_id, "policy": m.policy,
             "precision": m.precision, "resolution": int(m.arch.resolution), "val_accuracy": float(m.val_accuracy),
             "test_accuracy": None if m.test_accuracy is None else float(m.test_accuracy),
             "latency_ms": float(m.latency_ms), "predicted_latency_ms": float(m.predicted_latency_ms),
             "measured_latency_ms": None if m.measured_latency_ms is None else float(m.measured_latency_ms),
             "macs": int(m.macs), "params": int(m.params),
             "trial_number": None if m.trial_number is None else int(m.trial_number)}
            for m in members]


def members_frame(members: Iterable[FrontMember]) -> pd.DataFrame:
    """Front members as a DataFrame with the ``FRONT_COLUMNS`` (integers as nullable ``Int64``)."""
    import pandas as pd

    frame = pd.DataFrame(front_records(members), columns=list(FRONT_COLUMNS))
    frame = frame.astype({c: "Int64" for c in _INTEGER_COLUMNS})
    return frame.astype({c: "float64" for c in _FLOAT_COLUMNS})


def _check_devices(store: FrontStore, devices: Sequence[str] | None) -> list[str]:
    known = store.devices()
    if devices is None:
        return known
    unknown = [d for d in devices if d not in known]
    if unknown:
        raise UsageError(f"unknown device {unknown[0]!r} for this run; devices with a front: "
                         f"{', '.join(known) or 'none'}")
    return list(devices)


def front_members(store: FrontStore, devices: Sequence[str] | None = None) -> list[FrontMember]:
    """Every front member of ``devices`` (default: all devices with a front): by device, then latency
    ascending, as ``FrontStore.front`` returns them. An unknown device is a ``UsageError`` naming the
    devices that have a front."""
    return [m for d in _check_devices(store, devices) for m in store.front(d)]


def fronts_frame(store: FrontStore, devices: Sequence[str] | None = None) -> pd.DataFrame:
    """``front_members(store, devices)`` as a DataFrame, one row per member (see ``members_frame``)."""
    return members_frame(front_members(store, devices))


def trials_frame(run_dir: Any) -> pd.DataFrame:
    """The run's finished search trials, one row each in trial order: ``trial_number``, ``arch_string``,
    ``arch_id``, ``resolution``, ``accuracy`` (the search's accuracy objective: measured or predicted) and
    ``latency_ms:<device>`` per device searched (predicted). ``UsageError`` when the run has no study."""
    import pandas as pd

    from search_spaces import arch_to_string, get_space

    from .study import load_study, study_trials

    study = load_study(run_dir)
    space_name = study.user_attrs.get("space")
    devices = list(study.user_attrs.get("devices", []))
    if not space_name:
        raise UsageError(f"the search study of run {str(run_dir)!r} does not record its space")
    space = get_space(space_name)
    try:
        table = study_trials(study, space)
    except KeyError as exc:  # a parameter the study never suggested (a search limited to one resolution)
        raise UsageError(f"the trials of run {str(run_dir)!r} do not name parameter {exc}; they cannot be "
                         f"decoded without the search's config") from exc
    frame = pd.DataFrame({
        "trial_number": pd.array(table.numbers, dtype="Int64"),
        "arch_string": [arch_to_string(space, a) for a in table.archs],
        "arch_id": [a.arch_id for a in table.archs],
        "resolution": pd.array([a.resolution for a in table.archs], dtype="Int64"),
        "accuracy": table.accuracy.astype("float64"),
    })
    for i, device in enumerate(devices):
        frame[f"latency_ms:{device}"] = table.latency_ms[:, i] if table.latency_ms.shape[1] > i else float("nan")
    return frame
