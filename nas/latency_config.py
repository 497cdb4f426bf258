"""The ``latency`` section of an experiment config: how ``nas run`` gets each device's latency model.

Example (YAML)::

    latency:
      table: true             # measure a lookup table of the space on every local device
      resolutions: [32]       # restrict the table (default: all of the space's resolutions)
      fit_samples: 0          # also measure N random subnets end to end and fit learned predictors
      warmup: 3
      repeats: 10
      quantile: 0.5           # quantile of the timed runs reported (0.5 = median)
      clock: wall             # wall | thread_cpu (one-thread devices on a busy machine)
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any

from .errors import UsageError

CLOCKS = ("wall", "thread_cpu")


@dataclass(frozen=True, slots=True)
class LatencySettings:
    """How the pipeline measures latency on the config's local devices."""

    # Build a lookup table of the space on each local device (imported devices bring their own).
    table: bool = True
    # Resolutions the table covers; empty means every resolution of the space.
    resolutions: tuple[int, ...] = ()
    # Subnets measured end to end to fit learned predictors (0: the table alone).
    fit_samples: int = 0
    # Measurement protocol.
    warmup: int = 3
    repeats: int = 10
    quantile: float = 0.5
    clock: str = "wall"

    @classmethod
    def parse(cls, raw: Mapping[str, Any] | None) -> LatencySettings:
        raw = dict(raw or {})
        allowed = {f.name for f in fields(cls)}
        unknown = sorted(set(raw) - allowed)
        if unknown:
            raise UsageError(f"latency: unknown key(s) {', '.join(unknown)}; allowed: {', '.join(sorted(allowed))}")
        values: dict[str, Any] = {}
        for key, value in raw.items():
            try:
                if key == "table":
                    if not isinstance(value, bool):
                        raise ValueError
                    values[key] = value
                elif key == "resolutions":
                    values[key] = tuple(int(r) for r in (value or ()))
                elif key in ("fit_samples", "warmup", "repeats"):
                    values[key] = int(value)
                    if values[key] < (1 if key == "repeats" else 0):
                        raise ValueError
                elif key == "quantile":
                    values[key] = float(value)
                    if not 0 < values[key] <= 0.5:
                        raise ValueError
                elif key == "clock":
                    if value not in CLOCKS:
                        raise ValueError
                    values[key] = value
            except (TypeError, ValueError):
                hint = {"table": "true or false", "resolutions": "a list of the space's resolutions",
                        "quantile": "a number in (0, 0.5]", "clock": " or ".join(CLOCKS),
                        "repeats": "an integer >= 1"}.get(key, "an integer >= 0")
                raise UsageError(f"latency.{key}: {value!r} is not allowed; {hint}") from None
        settings = cls(**values)
        if not settings.table and settings.fit_samples < 3:
            raise UsageError("latency: with table: false, fit_samples must be >= 3 (a device needs a predictor)")
        return settings

    def measure_config(self) -> Any:
        from latency_predictors import MeasureConfig

        return MeasureConfig(warmup=self.warmup, repeats=self.repeats, quantile=self.quantile, clock=self.clock)
