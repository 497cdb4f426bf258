"""The search section of an experiment config, parsed once into a frozen value.

``nas.config.parse_config`` turns the config's ``search`` mapping and ``devices`` list into this value when the
file is read (``SearchConfig.parse``), with a one-line ``UsageError`` naming any bad key or value.

Example (YAML)::

    devices: [local-cpu-1t-ort, {id: pixel7-tflite, max_latency_ms: 20}]
    # or: devices: {local-cpu-1t-ort: null, pixel7-tflite: {max_latency_ms: 20}}
    search:
      sampler: nsga2            # nsga2 | tpe | random
      n_trials: 500             # finished proposals in total, across restarts (refinements and precision trials aside)
      seed: 0
      accuracy: predictor       # direct | predictor
      latency_budgets_ms: {local-cpu-1t-ort: 8.0}
      budgets_ms: [15, 20, 25, 30, 40]   # budgets users will query: each refined after the front (nas.refine)
      precisions: [fp32, int8]           # subnets quantised to int8 join the fronts (nas.precision_search)
      mixed_precision: false             # also per-stage mixes, in sensitivity order
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields
from typing import Any

from search_spaces import PRECISIONS

from .errors import UsageError

SAMPLERS = ("nsga2", "tpe", "random")
# Calibration methods of quantised subnets by the names hwnas uses (ONNX Runtime's ``CalibrationMethod`` members;
# nas.quantize reads them from here, so parsing a config does not import it).
QUANTIZATION_METHODS = ("minmax", "entropy", "percentile")
# What the search calibrates quantised subnets with unless search.quantization_method says otherwise (and what a
# front store written before the method was recorded was calibrated with).
DEFAULT_QUANTIZATION_METHOD = "minmax"
ACCURACY_OBJECTIVES = ("direct", "predictor")
# Smallest allowed value of each integer setting.
INT_MINIMUMS = {"n_trials": 1, "batch_size": 1, "population_size": 2, "predictor_samples": 1, "eval_workers": 1,
                "precision_candidates": 1}
# Largest allowed value of each: far beyond any real search, so that a slip (2**63) is refused at load instead of
# starting work that never ends, or asking Ray for more actors (eval_workers) than it can place.
INT_MAXIMUMS = {"n_trials": 10**7, "batch_size": 10**5, "population_size": 10**5, "predictor_samples": 10**6,
                "eval_workers": 10**4, "precision_candidates": 10**5}
# Largest search.refine_evaluations (the default with the predictor is 1,000,000; about 10^5 are scored a second).
MAX_REFINE_EVALUATIONS = 10**8
# Samplers seed numpy, which takes seeds in [0, 2**32 - 1].
MAX_SEED = 2**32 - 1


@dataclass(frozen=True, slots=True)
class SearchConfig:
    """How to search; every field has a default so an empty mapping is a valid config."""

    # Optuna sampler: NSGA-II (default), multivariate TPE or uniform random.
    sampler: str = "nsga2"
    # Finished trials in total; a resumed study only runs the missing ones.
    n_trials: int = 500
    # Seed of the sampler (and of the accuracy predictor's training subnets).
    seed: int = 0
    # Optuna storage URL (sqlite:///..., postgresql://...); None means a journal file in the run folder.
    storage: str | None = None
    # Study name inside the storage; None: the run's name (its folder's name).
    study_name: str | None = None
    # Accuracy objective: direct evaluation of each subnet, or an MLP predictor fitted on evaluated subnets.
    accuracy: str = "direct"
    # Target device ids, in order; each gets its own latency objective and front.
    devices: tuple[str, ...] = ()
    # Latency budgets (device id, max latency in ms) turned into Optuna constraints.
    latency_budgets_ms: tuple[tuple[str, float], ...] = ()
    # Trials asked before they are told (ask/tell batching; direct accuracy is evaluated in parallel).
    batch_size: int = 16
    # NSGA-II population size.
    population_size: int = 50
    # Directly evaluated random subnets used to fit the accuracy predictor (objective ``predictor``).
    predictor_samples: int = 200
    # Share of ``predictor_samples`` held out to report the predictor's RMSE and rank correlation.
    predictor_holdout: float = 0.2
    # Ray actors evaluating accuracy in parallel (each holds the supernet once).
    eval_workers: int = 2
    # Input resolutions the search may choose (empty: all of the space's); e.g. those a lookup table covers.
    resolutions: tuple[int, ...] = ()
    # Latency budgets (ms) users will ask for, on every device: after the front is found, each budget (and each
    # device's max_latency_ms) gets a refinement that looks for the most accurate subnet within it (nas.refine).
    budgets_ms: tuple[float, ...] = ()
    # Accuracy evaluations per refined budget at most; None: 1,000,000 with the predictor (scored in batches,
    # nas.scoring; a refinement stops by itself when it stops improving, typically after 100,000-200,000),
    # 0 (no refinement) with direct accuracy, whose evaluations cost seconds each.
    refine_evaluations: int | None = None
    # Precisions the fronts may hold: fp32 (the supernet's own), int8 (post-training quantised through ONNX Runtime,
    # nas.quantize). With int8, the fp32 search is followed by a precision search (nas.precision_search): subnets
    # whose int8 version the device's table says could join a front are quantised and measured, and join as trials.
    precisions: tuple[str, ...] = ("fp32",)
    # Also per-stage mixes of fp32 and int8 (the least sensitive stages int8 first) for each quantised subnet.
    mixed_precision: bool = False
    # Subnets per device and round whose quantised versions are measured (2 rounds).
    precision_candidates: int = 16
    # Calibration method of quantised subnets (activation ranges on training images).
    quantization_method: str = DEFAULT_QUANTIZATION_METHOD

    def restrict(self, space: Any) -> Any:
        """``space`` limited to ``resolutions`` (same name, so its archs stay archs of the full space)."""
        if not self.resolutions:
            return space
        bad = [r for r in self.resolutions if r not in space.resolutions]
        if bad:
            raise UsageError(f"search.resolutions {bad} are not in space {space.name!r}; allowed: "
                             f"{', '.join(map(str, space.resolutions))}")
        import dataclasses

        return dataclasses.replace(space, resolutions=tuple(sorted(set(self.resolutions))))

    @property
    def quantized(self) -> bool:
        """Whether the fronts may hold quantised subnets (a precision other than fp32 is listed)."""
        return any(p != "fp32" for p in self.precisions)

    @property
    def budgets(self) -> dict[str, float]:
        return dict(self.latency_budgets_ms)

    @property
    def evaluations_per_refinement(self) -> int:
        if self.refine_evaluations is not None:
            return self.refine_evaluations
        return 1_000_000 if self.accuracy == "predictor" else 0

    def refinement_targets(self) -> list[tuple[str, float]]:
        """``(device, budget ms)`` pairs to refine: each device's ``max_latency_ms`` and every ``budgets_ms`` up to
        it (a device's front holds nothing slower than its own budget)."""
        targets = []
        for d in self.devices:
            cap = self.budgets.get(d)
            wanted = {b for b in self.budgets_ms if cap is None or b <= cap} | ({cap} if cap is not None else set())
            targets += [(d, b) for b in sorted(wanted)]
        return targets

    def with_n_trials(self, n_trials: int | None) -> SearchConfig:
        """This config with ``--n-trials`` applied (checked as ``search.n_trials``); None: unchanged."""
        if n_trials is None:
            return self
        import dataclasses

        return dataclasses.replace(self, n_trials=_int_in_range("--n-trials", n_trials, INT_MINIMUMS["n_trials"],
                                                                INT_MAXIMUMS["n_trials"]))

    def to_dict(self) -> dict[str, Any]:
        """``{"devices": [...], "search": {...}}``: the config sections this value parses back from."""
        budgets = self.budgets
        devices = [{"id": d, "max_latency_ms": budgets[d]} if d in budgets else d for d in self.devices]
        search = {f.name: getattr(self, f.name) for f in fields(self)
                  if f.name not in ("devices", "latency_budgets_ms")}
        search["resolutions"] = list(self.resolutions)
        search["budgets_ms"] = list(self.budgets_ms)
        search["precisions"] = list(self.precisions)
        if not self.budgets_ms:  # the parser takes no empty list
            del search["budgets_ms"]
        return {"devices": devices, "search": search}

    @classmethod
    def parse(cls, search: Mapping[str, Any] | None,
              devices: Sequence[Any] | Mapping[str, Any] | None = (), *,
              n_trials: int | None = None) -> SearchConfig:
        """Parse the raw ``search`` mapping and ``devices`` section of an experiment config: a list of
        device ids or ``{id, max_latency_ms}`` mappings, or a mapping of device id to
        ``{max_latency_ms}`` (or null).

        Every number is checked finite and in range here, before any work starts: a bad one is a one-line
        ``UsageError`` naming the key and the allowed range (integers: ``INT_MINIMUMS`` to ``INT_MAXIMUMS``).
        ``n_trials`` is the ``--n-trials`` flag (overrides ``search.n_trials``; checked the same way).
        """
        from .config import _shown  # the config module's (it imports this one at load)

        if search is not None and not isinstance(search, Mapping):
            raise UsageError(f"search must be a mapping of settings; got {search!r}")
        if devices is not None and not isinstance(devices, (Mapping, list, tuple)):
            raise UsageError(f"devices must be a list of device ids or {{id, max_latency_ms}} mappings; "
                             f"got {devices!r}")
        search = dict(search or {})
        allowed = {f.name for f in fields(cls)} - {"devices"}
        unknown = sorted(set(search) - allowed)
        if unknown:
            raise UsageError(f"search: unknown key(s) {', '.join(unknown)}; allowed: {', '.join(sorted(allowed))}")
        device_ids: list[str] = []
        budgets: dict[str, float] = {}
        if isinstance(devices, Mapping):  # {device id: {max_latency_ms: ...} or None}
            for k, v in devices.items():
                if v is not None and not isinstance(v, Mapping):
                    raise UsageError(f"devices.{k}: {_shown(v)} is not allowed; expected null or "
                                     f"{{max_latency_ms: MS}}")
            devices = [{"id": str(k), **(v or {})} for k, v in devices.items()]
        for entry in devices or ():
            if isinstance(entry, str):
                device_ids.append(entry)
            elif isinstance(entry, Mapping) and isinstance(entry.get("id"), str):
                extra = sorted(set(entry) - {"id", "max_latency_ms"})
                if extra:
                    raise UsageError(f"devices[{entry['id']}]: unknown key(s) {', '.join(map(str, extra))}; "
                                     f"allowed: id, max_latency_ms")
                device_ids.append(entry["id"])
                if entry.get("max_latency_ms") is not None:
                    budgets[entry["id"]] = _positive_float(f"devices[{entry['id']}].max_latency_ms",
                                                           entry["max_latency_ms"])
            else:
                raise UsageError(f"devices: each entry must be a device id or a mapping with 'id'; got {entry!r}")
        if len(set(device_ids)) != len(device_ids):
            raise UsageError(f"devices: duplicate device ids in {device_ids}")
        raw_budgets = search.pop("latency_budgets_ms", None)
        if raw_budgets is None:
            raw_budgets = {}
        if not isinstance(raw_budgets, Mapping):
            raise UsageError(f"search.latency_budgets_ms must map device ids to milliseconds (or be null); "
                             f"got {_shown(raw_budgets)}")
        for device, value in raw_budgets.items():
            if device_ids and device not in device_ids:
                raise UsageError(f"search.latency_budgets_ms: unknown device {device!r}; devices: "
                                 f"{', '.join(device_ids)}")
            budgets[str(device)] = _positive_float(f"search.latency_budgets_ms.{device}", value)
        values: dict[str, Any] = {}
        if "sampler" in search:
            values["sampler"] = _choice("search.sampler", search["sampler"], SAMPLERS)
        if "accuracy" in search:
            values["accuracy"] = _choice("search.accuracy", search["accuracy"], ACCURACY_OBJECTIVES)
        for name, low in INT_MINIMUMS.items():
            if name in search:
                values[name] = _int_in_range(f"search.{name}", search[name], low, INT_MAXIMUMS[name])
        if n_trials is not None:
            values["n_trials"] = _int_in_range("--n-trials", n_trials, INT_MINIMUMS["n_trials"],
                                               INT_MAXIMUMS["n_trials"])
        if "seed" in search:
            values["seed"] = _int_in_range("search.seed", search["seed"], 0, MAX_SEED)
        if "predictor_holdout" in search:
            holdout = search["predictor_holdout"]
            if (isinstance(holdout, bool) or not isinstance(holdout, (int, float)) or not math.isfinite(holdout)
                    or not 0.0 < float(holdout) < 0.9):
                raise UsageError(f"search.predictor_holdout must be a number in (0, 0.9); got {holdout!r}")
            values["predictor_holdout"] = float(holdout)
        for name in ("storage", "study_name"):
            if name in search and search[name] is not None:
                if not isinstance(search[name], str) or not search[name]:
                    raise UsageError(f"search.{name} must be a non-empty string; got {search[name]!r}")
                values[name] = search[name]
        if "resolutions" in search:
            raw = search["resolutions"]
            if not isinstance(raw, (list, tuple)) or not all(isinstance(r, int) and not isinstance(r, bool)
                                                             and r > 0 for r in raw):
                raise UsageError(f"search.resolutions must be a list of positive integers; got {raw!r}")
            values["resolutions"] = tuple(raw)
        if "budgets_ms" in search:
            raw = search["budgets_ms"]
            if not isinstance(raw, (list, tuple)) or not raw:
                raise UsageError(f"search.budgets_ms must be a non-empty list of milliseconds; got {raw!r}")
            values["budgets_ms"] = tuple(sorted({_positive_float("search.budgets_ms", v) for v in raw}))
        if "precisions" in search:
            raw = search["precisions"]
            if not isinstance(raw, (list, tuple)) or not raw or any(p not in PRECISIONS for p in raw) \
                    or len(set(raw)) != len(raw):
                raise UsageError(f"search.precisions must be a non-empty list of distinct precisions from "
                                 f"{', '.join(PRECISIONS)}; got {raw!r}")
            values["precisions"] = tuple(p for p in PRECISIONS if p in raw)
        if "mixed_precision" in search:
            if not isinstance(search["mixed_precision"], bool):
                raise UsageError(f"search.mixed_precision must be true or false; got {search['mixed_precision']!r}")
            values["mixed_precision"] = search["mixed_precision"]
        if "quantization_method" in search:
            values["quantization_method"] = _choice("search.quantization_method", search["quantization_method"],
                                                    QUANTIZATION_METHODS)
        if values.get("mixed_precision") and "int8" not in values.get("precisions", ()):
            raise UsageError("search.mixed_precision mixes fp32 and int8: list both in search.precisions "
                             "(e.g. precisions: [fp32, int8])")
        if search.get("refine_evaluations") is not None:
            values["refine_evaluations"] = _int_in_range("search.refine_evaluations", search["refine_evaluations"], 0,
                                                         MAX_REFINE_EVALUATIONS)
        return cls(devices=tuple(device_ids), latency_budgets_ms=tuple(sorted(budgets.items())), **values)


def _choice(name: str, value: Any, allowed: tuple[str, ...]) -> str:
    if value not in allowed:
        raise UsageError(f"{name}={value!r} is not allowed; allowed: {', '.join(allowed)}")
    return str(value)


def _int_in_range(name: str, value: Any, low: int, high: int | None = None) -> int:
    from .config import _shown  # the config module's (it imports this one at load)

    if not isinstance(value, int) or isinstance(value, bool) or value < low or (high is not None and value > high):
        side = f"<= {high}" if isinstance(value, int) and not isinstance(value, bool) and value > low else f">= {low}"
        allowed = "" if high is None else f" (allowed: {low} to {high})"
        raise UsageError(f"{name} must be an integer {side}; got {_shown(value)}{allowed}")
    return value


def _positive_float(name: str, value: Any) -> float:
    """``value`` as milliseconds of a latency budget: a finite number > 0 (the config's budgets and ``nas query
    --max-latency-ms``)."""
    from .config import _shown

    try:
        ok = not isinstance(value, bool) and isinstance(value, (int, float)) and math.isfinite(value) and value > 0
    except OverflowError:  # an integer beyond float's range
        ok = False
    if not ok:
        raise UsageError(f"{name} must be a finite number of milliseconds > 0; got {_shown(value)}")
    return float(value)
