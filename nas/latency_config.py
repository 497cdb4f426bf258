"""The ``latency`` section of an experiment config: how ``nas run`` gets each device's latency model.

Example (YAML)::

    latency:
      table: true             # measure a lookup table of the space on every local device
      resolutions: [32]       # restrict the table (default: all of the space's resolutions)
      fit_samples: 0          # also measure N subnets end to end and fit learned predictors
      fit_from: null          # a device whose predictor (or table) the others' start from (transfer)
      warmup: 5               # defaults: latency_predictors.MeasureConfig's (the CLI's too)
      repeats: 30
      quantile: 0.5           # quantile of the timed runs reported (0.5 = median)
      clock: wall             # wall | thread_cpu (one-thread devices on a busy machine)
      load_reference: false   # time a fixed reference beside each measurement and report in its units (steadies
                              # a drifting machine: with thread_cpu, eager PyTorch repeated 100% within +-10%)
"""

from __future__ import annotations

import re
from dataclasses import dataclass, fields
from typing import Any

from latency_predictors import MeasureConfig

from .errors import UsageError

CLOCKS = ("wall", "thread_cpu")
_DEVICE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
_PROTOCOL = MeasureConfig()  # the one place the measurement defaults live
# The allowed range of each integer setting: far beyond any useful measurement (a table times every layer of the
# space repeats times), so that a slip (10**19) is refused at load instead of starting work that never ends.
INT_RANGES = {"fit_samples": (0, 100_000), "warmup": (0, 1_000), "repeats": (1, 10_000)}


@dataclass(frozen=True, slots=True)
class LatencySettings:
    """How the pipeline measures latency on the config's local devices."""

    # Build a lookup table of the space on each local device (imported devices bring their own).
    table: bool = True
    # Resolutions the table covers; empty means every resolution of the space.
    resolutions: tuple[int, ...] = ()
    # Subnets measured end to end to fit learned predictors (0: the table alone).
    fit_samples: int = 0
    # A device (stored, or earlier in the config's devices) whose predictor or table every other local device's
    # fit starts from: a ``transfer`` predictor besides the others (``nas latency fit --from``).
    fit_from: str | None = None
    # Measurement protocol (defaults: ``MeasureConfig``'s, as ``nas latency build``).
    warmup: int = _PROTOCOL.warmup
    repeats: int = _PROTOCOL.repeats
    quantile: float = _PROTOCOL.quantile
    clock: str = _PROTOCOL.clock
    load_reference: bool = _PROTOCOL.load_reference

    @classmethod
    def parse(cls, raw: Any) -> LatencySettings:
        """The section as written (None: every default); ``UsageError`` naming the key and what is allowed."""
        from .config import _mapping, _shown  # the config module's checks (it imports this one at load)

        raw = _mapping(raw, "latency")
        allowed = {f.name for f in fields(cls)}
        unknown = sorted(str(k) for k in set(raw) - allowed)  # keys may be numbers in YAML
        if unknown:
            raise UsageError(f"latency: unknown key(s) {', '.join(unknown)}; allowed: {', '.join(sorted(allowed))}")
        values: dict[str, Any] = {}
        for key, value in raw.items():
            ok = True
            if key in ("table", "load_reference"):
                ok = isinstance(value, bool)
            elif key == "resolutions":
                ok = isinstance(value, (list, tuple)) and all(_is_int(r) and r > 0 for r in value)
                value = tuple(value) if ok else value
            elif key in INT_RANGES:
                low, high = INT_RANGES[key]
                ok = _is_int(value) and low <= value <= high
            elif key == "quantile":
                # The range test first: it also refuses nan and inf, and compares an integer too large for a
                # float exactly (``math.isfinite(10**400)`` raises OverflowError).
                ok = isinstance(value, (int, float)) and not isinstance(value, bool) and 0 < value <= 0.5
                value = float(value) if ok else value
            elif key == "clock":
                ok = value in CLOCKS
            elif key == "fit_from":
                ok = value is None or (isinstance(value, str) and _DEVICE_ID.match(value) is not None)
            if not ok:
                hint = {"table": "true or false", "load_reference": "true or false",
                        "resolutions": "a list of the space's resolutions",
                        "quantile": "a number in (0, 0.5]", "clock": " or ".join(CLOCKS),
                        "fit_from": "a device id (letters, digits, '.', '_', '-')",
                        **{k: f"an integer >= {low} and <= {high}" for k, (low, high) in INT_RANGES.items()}}[key]
                raise UsageError(f"latency.{key}: {_shown(value)} is not allowed; {hint}")
            values[key] = value
        settings = cls(**values)
        if settings.fit_from is not None and settings.fit_samples < 3:
            raise UsageError("latency.fit_from needs fit_samples >= 3 (subnets timed on each device to transfer to)")
        if not settings.table and settings.fit_samples < 3:
            raise UsageError("latency: with table: false, fit_samples must be >= 3 (a device needs a predictor)")
        return settings

    def measure_config(self) -> MeasureConfig:
        return MeasureConfig(warmup=self.warmup, repeats=self.repeats, quantile=self.quantile, clock=self.clock,
                             load_reference=self.load_reference)

    def to_dict(self) -> dict[str, Any]:
        return {f.name: list(v) if isinstance(v := getattr(self, f.name), tuple) else v for f in fields(self)}


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)
