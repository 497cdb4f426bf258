"""The stages behind ``nas latency fit`` and ``nas latency eval``, as library functions.

Fitting chooses ``n`` subnets (``choose_archs``: spread over the prior's latency range and over the choices,
seeded), measures them end to end and fits every predictor kind the data allows; with a source device
(``--from``) it also fits a ``transfer`` predictor on top of that device's predictor or table. It reports the
cross-validated learning curve of the few-sample predictor and the predicted gain of measuring more.

Evaluation measures fresh subnets (seed ``EVAL_SEED``, disjoint from the fitting set) twice and reports each
saved predictor's accuracy on them, the accuracy against the number of training samples (cross-validated on
everything measured) and the measurement's own repeatability floor.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from search_spaces import Arch, SearchSpace, as_generator, encode_many, progress_bar, random_arch, reading

from .devices import Device, DeviceStore, LatencyError, atomic_write_json, staged_folder, swap_folder
from .layers import LayerBuilder, network_gmacs, network_macs
from .learned import PREDICTOR_KINDS, Predictor, TransferPredictor, load_predictor, make_predictor
from .lut import LookupTable
from .measure import MeasureConfig, device_lock
from .metrics import accuracy, accuracy_curve, learning_curve, scatter_plot, write_csv
from .remote import MeasurementLog

FIT_SEED = 0
EVAL_SEED = 1_000_003
CURVE_SIZES = (5, 10, 20, 50, 100)
CHOICES = ("active", "random")
# How a transfer predictor's fitted mode reads (ResidualPredictor's candidates).
TRANSFER_MODES = {"scale": "scaled", "power": "to a power", "curve": "through a smooth curve",
                  "affine": "scaled plus a constant", "blend": "scaled plus a share of the MACs",
                  "blend_affine": "scaled plus a share of the MACs and a constant",
                  "ridge": "to a power with a ridge correction on the arch features"}
# A source device's predictor to transfer from, when its eval report does not rank them.
SOURCE_PREFERENCE = ("residual", "table_linear", "transfer", "ridge", "mlp", "table")


def sample_archs(space: SearchSpace, n: int, seed: int, resolutions: Sequence[int] | None = None) -> list[Arch]:
    """``n`` distinct random archs; with ``resolutions``, the resolution is drawn from those only."""
    rng = as_generator(seed)
    allowed = tuple(resolutions) if resolutions else None
    archs: dict[str, Arch] = {}
    for _ in range(50 * n + 100):
        if len(archs) >= n:
            break
        arch = random_arch(space, rng)
        if allowed:
            arch = replace(arch, resolution=int(allowed[int(rng.integers(len(allowed)))]))
        archs.setdefault(arch.arch_id, arch)
    return list(archs.values())


def _spread_order(n: int) -> list[int]:
    """0 .. n-1 ordered ends first, then by bisection (0, n-1, n/2, n/4, 3n/4, ...)."""
    order = [0] + ([n - 1] if n > 1 else [])
    intervals = [(0, n - 1)]
    while intervals:
        nxt = []
        for lo, hi in intervals:
            if hi - lo > 1:
                mid = (lo + hi) // 2
                order.append(mid)
                nxt += [(lo, mid), (mid, hi)]
        intervals = nxt
    return order


def macs_prior(space: SearchSpace) -> Callable[[Sequence[Arch]], np.ndarray]:
    return lambda archs: network_gmacs(space, archs)


def choose_archs(space: SearchSpace, n: int, seed: int, resolutions: Sequence[int] | None = None,
                 prior: Callable[[Sequence[Arch]], np.ndarray] | None = None, keep: Sequence[Arch] = (),
                 pool_size: int | None = None) -> list[Arch]:
    """The ``n`` subnets that teach a predictor most: spread over the prior's latency range and the choices.

    A seeded pool of random subnets (``pool_size``, default ``max(20 n, 500)`` up to 4,000) is cut into ``n``
    strata of equal size by the prior latency (``prior(archs)``, default MACs); one subnet is taken from each
    stratum (ends first, then by bisection), the one that keeps the share of every choice (each column of the
    one-hot encoding) among the subnets taken closest to its share in the pool. So the set covers the latency
    range evenly and every choice in proportion, without the bias of picking odd corners of the space (which on
    synthetic devices made the fitted scale worse than random picks did). ``keep`` (an earlier fit's subnets)
    are taken first and their strata are not drawn again, so fitting again on more adds to the earlier set.
    Deterministic given the seed and ``keep``.
    """
    keep = list({a.arch_id: a for a in keep}.values())
    if len(keep) >= n:
        return keep[:n]
    kept_ids = {a.arch_id for a in keep}
    size = pool_size or min(max(20 * n, 500), 4000)
    pool = [a for a in sample_archs(space, size, seed, resolutions) if a.arch_id not in kept_ids]
    if len(pool) + len(keep) <= n:
        return keep + pool
    everything = pool + keep
    values = np.asarray((prior or macs_prior(space))(everything), dtype=float)
    lp = np.log(np.maximum(values, 1e-12))
    edges = np.quantile(lp[:len(pool)], np.linspace(0.0, 1.0, n + 1))
    strata = np.clip(np.searchsorted(edges, lp, side="right") - 1, 0, n - 1)
    onehot = encode_many(space, everything).astype(float)
    share = onehot[:len(pool)].mean(axis=0)
    counts = onehot[len(pool):].sum(axis=0)
    taken = np.zeros(len(pool), dtype=bool)
    occupied = set(strata[len(pool):].tolist())
    picks: list[int] = []

    def take(candidates: np.ndarray) -> None:
        nonlocal counts
        k = len(keep) + len(picks) + 1
        deviation = (((counts[None, :] + onehot[candidates]) - k * share[None, :]) ** 2).sum(axis=1)
        i = int(candidates[np.argmin(deviation)])
        taken[i] = True
        counts = counts + onehot[i]
        picks.append(i)

    for s in _spread_order(n):
        if len(keep) + len(picks) >= n:
            break
        members = np.flatnonzero((strata[:len(pool)] == s) & ~taken)
        if s not in occupied and len(members):
            take(members)
    while len(keep) + len(picks) < n:  # strata left empty (ties in the prior): balance over the rest
        take(np.flatnonzero(~taken))
    return keep + [pool[i] for i in picks]


def load_table(store: DeviceStore, device: Device, space: SearchSpace) -> LookupTable | None:
    """The device's table of ``space`` (None when it has none); a file there that holds the table of another
    space or device (copied or renamed into place) is a ``LatencyError``: its numbers are not this device's."""
    return _tables_of(store, space)(device.id)


def _tables_of(store: DeviceStore, space: SearchSpace) -> Callable[[str], LookupTable | None]:
    def table_of(device_id: str) -> LookupTable | None:
        path = store.table_path(device_id, space.name)
        if not path.is_file():
            return None
        table = LookupTable.load(path)
        if table.space != space.name or table.device.id != device_id:
            raise LatencyError(f"{path} holds the table of {table.space!r} on {table.device.id!r}, not of "
                               f"{space.name!r} on {device_id!r}; move it back where it belongs (or away) and "
                               f"build or import this device's table")
        return table

    return table_of


def source_predictors(store: DeviceStore, source_id: str, space: SearchSpace, kind: str | None = None,
                      target: str | None = None) -> dict[str, Predictor]:
    """Device ``source_id``'s predictors to transfer from, best first: ``kind`` alone, else every one but
    ``flops`` (the transfer blends MACs in itself) and a ``transfer`` that starts from ``target`` (it would carry
    the target's own measurements back), ranked by its ``nas latency eval`` report (most within +-10%, then
    Spearman), else in ``SOURCE_PREFERENCE`` order."""
    device = store.get(source_id)
    predictors = load_predictors(store, device, space)
    if not predictors:
        raise LatencyError(f"device {source_id!r} has no predictor or table of {space.name!r} to transfer "
                           f"from; run 'nas latency fit' or 'nas latency build' on it first")
    if kind is not None:
        if kind not in predictors:
            raise LatencyError(f"device {source_id!r} has no {kind!r} predictor of {space.name!r}; it has "
                               f"{', '.join(sorted(predictors))}")
        return {kind: predictors[kind]}
    usable = {k: p for k, p in predictors.items() if k != "flops" and not (
        target is not None and isinstance(p, TransferPredictor) and p.source_device == target)}
    report = store.eval_dir(source_id) / f"{space.name}.json"
    rows = read_report(report).get("predictors", {}) if report.is_file() else {}
    order = {k: i for i, k in enumerate(SOURCE_PREFERENCE)}
    ranked = sorted(usable, key=lambda k: (-rows.get(k, {}).get("within_10pct", -1),
                                           -rows.get(k, {}).get("spearman", -1), order.get(k, len(order))))
    if not ranked:
        raise LatencyError(f"device {source_id!r} has only a FLOPs predictor of {space.name!r}: nothing measured "
                           f"to transfer from")
    return {k: usable[k] for k in ranked}


def source_predictor(store: DeviceStore, source_id: str, space: SearchSpace, kind: str | None = None,
                     target: str | None = None) -> Predictor:
    """The first of ``source_predictors``: what spreads the subnets a transfer measures."""
    return next(iter(source_predictors(store, source_id, space, kind, target).values()))


def _table_prior(table: LookupTable | None, space: SearchSpace, resolutions: Sequence[int] | None
                 ) -> Callable[[Sequence[Arch]], np.ndarray] | None:
    """The table sum as a prior when it covers the subnets to choose from, else None."""
    if table is None:
        return None
    wanted = set(resolutions or space.resolutions)
    if not table.complete or not wanted <= set(table.resolutions):
        return None
    return lambda archs: np.asarray(table.predict(space, list(archs)), dtype=float)


@dataclass
class FitReport:
    """What ``fit_device`` did: the subnets (how they were chosen, what prior spread them), the predictors fitted,
    and the learning curve of the few-sample predictor (``curve_kind``) with the predicted gain of measuring more."""

    space: str
    device: str
    samples: int
    choose: str
    prior: str
    predictors: dict[str, Predictor]
    source: str | None = None
    curve_kind: str = "residual"
    curve: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"space": self.space, "device": self.device, "samples": self.samples, "choose": self.choose,
                "prior": self.prior, "predictors": list(self.predictors), "source": self.source,
                "curve_kind": self.curve_kind, "curve": self.curve}


def fit_device(store: DeviceStore, device: Device, space: SearchSpace, builder: LayerBuilder | None,
               n: int, config: MeasureConfig, *, resolutions: Sequence[int] | None = None,
               kinds: Sequence[str] | None = None, use_ray: bool = True, progress: bool = True,
               seed: int = FIT_SEED, choose: str = "active", source: str | None = None,
               source_kind: str | None = None) -> FitReport:
    """Choose ``n`` subnets (``choose``: ``active``, see ``choose_archs``, or ``random``), measure them (reusing
    earlier measurements), fit and save every predictor kind the data allows, and, with ``source`` (another
    device's id), a ``transfer`` predictor started from that device's predictor (``source_kind``, default its
    best) or table."""
    if choose not in CHOICES:
        raise LatencyError(f"unknown way to choose subnets {choose!r}; allowed: {', '.join(CHOICES)}")
    if source is not None and source == device.id:
        raise LatencyError(f"--from names the device being fitted ({device.id!r}); name another device")
    table = load_table(store, device, space)
    candidates = source_predictors(store, source, space, source_kind, device.id) if source is not None else {}
    origin = next(iter(candidates.values()), None)
    log = MeasurementLog(store.measurements_path(device.id, space.name), space.name, device.id, config)
    prior_fn, prior_name = _table_prior(table, space, resolutions), "table"
    if origin is not None:
        prior_fn, prior_name = origin.predict, f"{source}:{origin.kind}"
    elif prior_fn is None:
        prior_fn, prior_name = macs_prior(space), "macs"
    if choose == "active":
        archs = choose_archs(space, n, seed, resolutions, prior_fn, keep=_earlier_fit(store, device, space, log,
                                                                                       seed, resolutions))
    else:
        archs, prior_name = sample_archs(space, n, seed, resolutions), "none"
    if builder is not None:
        log.ensure(space, archs, 1, builder, device, config, lock_path=store.lock_path(device.id),
                   use_ray=use_ray, progress=progress)
    measured = [a for a in archs if log.runs(a)]
    if len(measured) < 3:
        raise LatencyError(f"only {len(measured)} measured subnets of {space.name!r} on {device.id!r}; "
                           f"fitting needs at least 3")
    y = np.array([log.latency_ms(a) for a in measured])
    if kinds is None:
        kinds = [k for k in PREDICTOR_KINDS if k != "transfer" and (table is not None or not
                                                                    PREDICTOR_KINDS[k].needs_table)]
        if origin is not None:
            kinds = [*kinds, "transfer"]
    fitted: dict[str, Predictor] = {}
    for kind in kinds:
        predictor = make_predictor(kind, space, table, source=origin, source_device=source or "",
                                   candidates=candidates)
        predictor.fit(measured, y)
        fitted[kind] = predictor
    curve_kind = "transfer" if "transfer" in fitted else "residual" if "residual" in fitted else next(iter(fitted))
    curve = learning_curve(fitted[curve_kind].fresh, measured, y, seed=seed)
    report = FitReport(space.name, device.id, len(measured), choose, prior_name, fitted, source, curve_kind, curve)
    _commit_fit(store, device.id, space.name, fitted, {"seed": seed, "samples": n,
                                                       "arch_ids": [a.arch_id for a in measured],
                                                       **{k: v for k, v in report.to_dict().items()
                                                          if k not in ("space", "device", "samples")}})
    return report


def _commit_fit(store: DeviceStore, device_id: str, space_name: str, fitted: dict[str, Predictor],
                record: dict[str, Any]) -> None:
    """Save a fit all at once: the predictors into a new folder that then takes the old one's place whole (a
    refit never leaves a mix of old and new predictors, nor old kinds the new fit did not make), and the fit
    record last, the mark that the fit finished (``fit_is_complete``). The old record goes before the swap, so
    an interruption in between leaves no record and the fit counts as not done."""
    folder = store.predictor_dir(device_id, space_name)
    record_path = _fit_record_path(store, device_id, space_name)
    with staged_folder(folder) as new:
        for kind, predictor in fitted.items():
            predictor.save(new / f"{kind}.json")
        # Two fits of one space on one device may finish together: their swaps and records take turns.
        with device_lock(folder.with_name(f".{folder.name}.lock"), what="predictor folder"):
            try:
                record_path.unlink(missing_ok=True)
            except OSError as exc:
                raise LatencyError(f"cannot replace {str(record_path)!r} ({exc.strerror or exc}); the device "
                                   f"data folder (--home or $HWNAS_HOME) must be a folder you can write to") from exc
            swap_folder(new, folder)
            atomic_write_json(record_path, record)


def fit_is_complete(store: DeviceStore, device_id: str, space_name: str, samples: int,
                    source: str | None = None) -> bool:
    """Whether a fit of ``space_name`` on ``device_id`` finished on at least ``samples`` subnets (with ``source``,
    one that fitted a ``transfer`` predictor from that device): its fit record exists (``fit_device`` writes it
    last, after the predictors) and every predictor it lists is saved. Ask this, not whether some predictor file
    exists: an interrupted fit leaves no record, or the previous finished fit's with that fit's predictors.
    A damaged record is a ``DamagedFileError`` naming it."""
    path = _fit_record_path(store, device_id, space_name)
    if not path.is_file():
        return False
    with reading(path, "latency fit record", "move it away and run 'nas latency fit' again"):
        record = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(record, dict):
            raise TypeError(f"expected a JSON object, got {type(record).__name__}")
        fitted_on = int(record.get("samples", 0))
        kinds = [str(k) for k in record.get("predictors", [])]
        fitted_from = record.get("source")
    if fitted_on < samples or not kinds or (source is not None and (fitted_from != source or "transfer" not in kinds)):
        return False
    folder = store.predictor_dir(device_id, space_name)
    return all((folder / f"{kind}.json").is_file() for kind in kinds)


def fit_predictors(store: DeviceStore, device: Device, space: SearchSpace, builder: LayerBuilder | None,
                   n: int, config: MeasureConfig, **kwargs: Any) -> dict[str, Predictor]:
    """``fit_device``'s fitted predictors, by kind."""
    return fit_device(store, device, space, builder, n, config, **kwargs).predictors


def _earlier_fit(store: DeviceStore, device: Device, space: SearchSpace, log: MeasurementLog, seed: int,
                 resolutions: Sequence[int] | None) -> list[Arch]:
    """The measured subnets of the last fit with the same seed (kept when fitting again on more)."""
    path = _fit_set_path(store, device, space)
    if not path.is_file():
        return []
    with reading(path, "latency fit record", "move it away and run 'nas latency fit' again"):
        record = json.loads(path.read_text(encoding="utf-8"))
        same = int(record.get("seed", -1)) == seed and record.get("choose", "active") == "active"
        ids = [str(i) for i in record["arch_ids"]] if same else []
    allowed = set(resolutions or ())
    archs = []
    for arch_id in ids:
        data = log.records.get(arch_id)
        if data and data.get("runs"):
            arch = Arch.from_dict(data["arch"])
            if not allowed or arch.resolution in allowed:
                archs.append(arch)
    return archs


def format_fit(report: FitReport) -> str:
    lines = [f"fitted {', '.join(report.predictors)} for {report.space} on {report.device} from "
             f"{report.samples} measured subnets (chosen: {report.choose}"
             + (f", spread by the {report.prior} prior" if report.choose == "active" else "") + ")"]
    transfer = report.predictors.get("transfer")
    if isinstance(transfer, TransferPredictor):
        members = transfer.members or [(1.0, transfer)]
        lines.append(f"transfer from {transfer.source_device}: " + "; ".join(
            f"its {t.source.kind} predictor {TRANSFER_MODES.get(t.mode, t.mode)}"
            + (f" (weight {w:.2f})" if len(members) > 1 else "") for w, t in members))
    curve = report.curve
    if curve.get("points"):
        pts = ", ".join(f"{p['samples']:.0f}: {p['mape_pct']:.1f}%" for p in curve["points"])
        lines.append(f"{report.curve_kind} cross-validated MAPE by training samples: {pts}")
    if curve.get("slope") is not None:
        n = report.samples
        if curve["gain_pct"] > 0:
            lines.append(f"measuring {n} more is predicted to take MAPE from {curve['mape_pct_at_n']:.1f}% to "
                         f"{curve['mape_pct_at_2n']:.1f}% (-{curve['gain_pct']:.1f} points; slope "
                         f"{curve['slope']:.2f} in log-log)")
        else:
            lines.append(f"measuring more is not predicted to help: the cross-validated error does not fall "
                         f"with the samples (slope {curve['slope']:.2f} in log-log)")
    else:
        lines.append("too few samples for a learning curve")
    return "\n".join(lines)


def _fit_set_path(store: DeviceStore, device: Device, space: SearchSpace) -> Path:
    return _fit_record_path(store, device.id, space.name)


def _fit_record_path(store: DeviceStore, device_id: str, space_name: str) -> Path:
    return store.measurements_path(device_id, space_name).with_suffix(".fit.json")


def load_predictors(store: DeviceStore, device: Device, space: SearchSpace) -> dict[str, Predictor]:
    """Every saved predictor of ``space`` on ``device`` (a ``table`` one too when a table exists)."""
    table = load_table(store, device, space)
    folder = store.predictor_dir(device.id, space.name)
    tables_of = _tables_of(store, space)
    predictors = {p.stem: load_predictor(p, space, table, tables_of) for p in sorted(folder.glob("*.json"))}
    if table is not None and "table" not in predictors:
        predictors["table"] = make_predictor("table", space, table)
    return predictors


@dataclass
class EvalReport:
    """``predictors``: each saved predictor on the fresh subnets; ``repeatability``: their second measurement
    against the first. ``curve``: per kind, accuracy against the number of training samples (rows with
    ``samples``, ``spearman``, ``kendall``, ``within_5pct``, ``within_10pct``, ``mape_pct``), cross-validated on
    all ``curve_pool`` measured subnets; ``floor``: the measurement's own repeatability over every subnet
    measured twice, with the median spread within one timed series."""

    space: str
    device: str
    n: int
    predictors: dict[str, dict[str, float]]
    repeatability: dict[str, float]
    files: dict[str, str]
    curve: dict[str, list[dict[str, float]]] = field(default_factory=dict)
    curve_pool: int = 0
    floor: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"space": self.space, "device": self.device, "n": self.n, "predictors": self.predictors,
                "repeatability": self.repeatability, "curve": self.curve, "curve_pool": self.curve_pool,
                "floor": self.floor, "files": self.files}

    def frame(self) -> Any:
        """The report as a pandas DataFrame: one row per predictor kind and one for the repeat measurement
        (``(repeat)``: the second run against the first, the bound on any predictor); the metrics as columns."""
        import pandas as pd

        rows = {**self.predictors, "(repeat)": self.repeatability}
        frame = pd.DataFrame.from_dict(rows, orient="index")
        frame.index.name = "predictor"
        return frame

    def curve_frame(self) -> Any:
        """The curve as a pandas DataFrame indexed by (predictor, samples)."""
        import pandas as pd

        rows = [{"predictor": k, **r} for k, rs in self.curve.items() for r in rs]
        return pd.DataFrame(rows).set_index(["predictor", "samples"]) if rows else pd.DataFrame()

    def at(self, kind: str, samples: int) -> dict[str, float] | None:
        """The curve's row of ``kind`` at ``samples`` training subnets, or None."""
        return next((r for r in self.curve.get(kind, []) if r["samples"] == samples), None)

    def best(self) -> str:
        candidates = {k: v for k, v in self.predictors.items() if k != "flops"}
        return max(candidates, key=lambda k: (candidates[k]["within_10pct"], candidates[k]["spearman"]))


def measured_pool(log: MeasurementLog, resolutions: Sequence[int] | None = None) -> list[Arch]:
    """Every subnet in the log with at least one run (at ``resolutions`` when given), in a stable order."""
    allowed = set(resolutions or ())
    archs = []
    for arch_id in sorted(log.records):
        record = log.records[arch_id]
        if record.get("runs"):
            arch = Arch.from_dict(record["arch"])
            if not allowed or arch.resolution in allowed:
                archs.append(arch)
    return archs


def repeatability_floor(log: MeasurementLog, archs: Sequence[Arch]) -> dict[str, float]:
    """The measurement's own accuracy: every subnet of ``archs`` measured at least twice, its second run
    against the first (``n`` pairs), and ``median_spread``, the median IQR / median within one timed series."""
    twice = [a for a in archs if len(log.runs(a)) >= 2]
    spreads = [float(r["spread"]) for a in archs for r in log.runs(a) if "spread" in r]
    floor: dict[str, float] = {}
    if len(twice) >= 2:
        first = np.array([log.latency_ms(a, 0) for a in twice])
        again = np.array([log.latency_ms(a, 1) for a in twice])
        floor.update(accuracy(again, first))
    floor["median_spread"] = float(np.median(spreads)) if spreads else float("nan")
    return floor


def evaluate_predictors(store: DeviceStore, device: Device, space: SearchSpace, builder: LayerBuilder | None,
                        n: int, config: MeasureConfig, *, resolutions: Sequence[int] | None = None,
                        use_ray: bool = True, progress: bool = True, seed: int = EVAL_SEED,
                        fit_seed: int = FIT_SEED, fit_n: int | None = None,
                        curve_sizes: Sequence[int] = CURVE_SIZES, curve_draws: int = 5) -> EvalReport:
    """Accuracy of the saved predictors on ``n`` fresh subnets, each measured twice; their accuracy against the
    number of training samples (``curve_sizes``, ``curve_draws`` random draws each, cross-validated on every
    measured subnet); the repeatability floor."""
    predictors = load_predictors(store, device, space)
    if not predictors:
        raise LatencyError(f"no predictors or table for {space.name!r} on {device.id!r}; run "
                           f"'nas latency fit' or 'nas latency build' first")
    log = MeasurementLog(store.measurements_path(device.id, space.name), space.name, device.id, config)
    fit_ids = {a.arch_id for a in sample_archs(space, fit_n, fit_seed, resolutions)} if fit_n else set()
    fit_ids |= fit_set_ids(store, device, space)  # never evaluate on a subnet the predictors were fitted on
    archs = eval_archs(space, n, fit_ids, seed, resolutions)
    if builder is not None:
        log.ensure(space, archs, 2, builder, device, config, lock_path=store.lock_path(device.id),
                   use_ray=use_ray, progress=progress)
    archs = [a for a in archs if len(log.runs(a)) >= 2]
    if len(archs) < 3:
        raise LatencyError(f"only {len(archs)} subnets measured twice; evaluation needs at least 3")
    measured = np.array([log.latency_ms(a, 0) for a in archs])
    again = np.array([log.latency_ms(a, 1) for a in archs])
    predictions = {name: p.predict(archs) for name, p in predictors.items()}
    results = {name: accuracy(p, measured) for name, p in predictions.items()}
    pool = measured_pool(log, resolutions)
    pool_y = np.array([log.latency_ms(a, 0) for a in pool])
    curve = {name: accuracy_curve(_refit_as_fitted(store, device, space, p), pool, pool_y, curve_sizes,
                                  draws=curve_draws, seed=seed)
             for name, p in predictors.items()}
    out = store.eval_dir(device.id)
    rows = [{"arch_id": a.arch_id, "resolution": a.resolution, "macs_m": network_macs(space, a) / 1e6,
             "measured_ms": m, "measured_again_ms": m2, **{f"pred_{k}_ms": float(v[i]) for k, v in
                                                            predictions.items()}}
            for i, (a, m, m2) in enumerate(zip(archs, measured, again))]
    files = {"csv": str(out / f"{space.name}.csv"), "plot": str(out / f"{space.name}.png"),
             "json": str(out / f"{space.name}.json")}
    write_csv(files["csv"], rows)
    scatter_plot(files["plot"], measured, predictions, f"{space.name} on {device.id} (n={len(archs)})")
    report = EvalReport(space.name, device.id, len(archs), results, accuracy(again, measured), files,
                        {k: v for k, v in curve.items() if v}, len(pool), repeatability_floor(log, pool))
    atomic_write_json(files["json"], report.to_dict())
    return report


def _refit_as_fitted(store: DeviceStore, device: Device, space: SearchSpace, predictor: Predictor
                     ) -> Callable[[], Predictor]:
    """What makes an unfitted ``predictor`` for the accuracy curve: ``fresh``, except that a transfer chooses
    among its source device's predictors again in every draw, as ``fit`` does (a saved transfer keeps only the
    sources it chose on all its samples)."""
    if isinstance(predictor, TransferPredictor) and len(predictor.candidate_kinds) > 1:
        try:
            found = source_predictors(store, predictor.source_device, space, target=device.id)
        except LatencyError:  # the source device or its predictors are gone: the saved sources
            return predictor.fresh
        candidates = {k: found[k] for k in predictor.candidate_kinds if k in found}
        return lambda: make_predictor("transfer", space, source_device=predictor.source_device,
                                      candidates=candidates)
    return predictor.fresh


def fit_set_ids(store: DeviceStore, device: Device, space: SearchSpace) -> set[str]:
    """The subnets the saved predictors were fitted on (empty before any fit)."""
    path = _fit_set_path(store, device, space)
    if not path.is_file():
        return set()
    with reading(path, "latency fit record", "move it away and run 'nas latency fit' again"):
        return {str(i) for i in json.loads(path.read_text(encoding="utf-8"))["arch_ids"]}


def eval_archs(space: SearchSpace, n: int, exclude: set[str], seed: int = EVAL_SEED,
               resolutions: Sequence[int] | None = None) -> list[Arch]:
    """The ``n`` fresh subnets evaluation measures: seeded random ones outside ``exclude``."""
    return [a for a in sample_archs(space, n + len(exclude), seed, resolutions) if a.arch_id not in exclude][:n]


def _fmt(value: float, spec: str) -> str:
    return "-" if value is None or (isinstance(value, float) and math.isnan(value)) else format(value, spec)


def format_report(report: EvalReport) -> str:
    head = (f"{'predictor':<14}{'MAPE %':>8}{'RMSE ms':>9}{'<=5%':>7}{'<=10%':>7}{'Spearman':>10}"
            f"{'Kendall':>9}")
    lines = [f"{report.space} on {report.device}: {report.n} fresh subnets", head]
    rows = [*report.predictors.items(), ("(repeat)", report.repeatability)]
    for name, r in rows:
        lines.append(f"{name:<14}{r['mape_pct']:>8.2f}{r['rmse_ms']:>9.3f}{r['within_5pct']:>7.0%}"
                     f"{r['within_10pct']:>7.0%}{_fmt(r['spearman'], '.3f'):>10}{_fmt(r['kendall'], '.3f'):>9}")
    if report.curve:
        draws = next(iter(report.curve.values()))[0]["draws"]
        lines += ["", f"against training samples (cross-validated on {report.curve_pool} measured subnets: "
                      f"{draws} random draws of the training subnets, tested on the rest)",
                  f"{'predictor':<14}{'samples':>8}{'Spearman':>10}{'Kendall':>9}{'<=5%':>7}{'<=10%':>7}"
                  f"{'MAPE %':>8}"]
        for name, curve_rows in report.curve.items():
            for i, r in enumerate(curve_rows):
                lines.append(f"{name if i == 0 else '':<14}{r['samples']:>8}{_fmt(r['spearman'], '.3f'):>10}"
                             f"{_fmt(r['kendall'], '.3f'):>9}{r['within_5pct']:>7.0%}{r['within_10pct']:>7.0%}"
                             f"{r['mape_pct']:>8.2f}")
    f = report.floor
    if "n" in f:
        lines.append(f"{'(floor)':<14}{'':>8}{_fmt(f['spearman'], '.3f'):>10}{_fmt(f['kendall'], '.3f'):>9}"
                     f"{f['within_5pct']:>7.0%}{f['within_10pct']:>7.0%}{f['mape_pct']:>8.2f}"
                     f"   repeat of {f['n']} subnets measured twice; median spread in a series "
                     f"{_fmt(100 * f['median_spread'], '.1f')}%")
    elif f:
        lines.append(f"(floor) no subnet measured twice; median spread in a series "
                     f"{_fmt(100 * f['median_spread'], '.1f')}%")
    lines.append(f"csv: {report.files['csv']}  plot: {report.files['plot']}")
    return "\n".join(lines)


def read_report(path: str | Path) -> dict[str, Any]:
    with reading(path, "latency evaluation report", "move it away and run 'nas latency eval' again"):
        data = json.loads(Path(path).read_text(encoding="utf-8"))
        if not isinstance(data, dict):
            raise TypeError(f"expected a JSON object, got {type(data).__name__}")
        return data


# --- quantised and mixed-precision subnets (``nas latency eval --precision int8|mixed``) ---------------------

QUANTIZED_EVAL = ("int8", "mixed")
QUANTIZED_FORMAT = "hwnas-quantized-measurements"
QUANTIZED_FIT = 20
# (space, arch, policy) -> the ONNX model of the subnet quantised under the policy (``nas.quantize``'s
# ``quantized_subnet_model``: the caller hands it in, as it hands in the ``LayerBuilder``).
SubnetModelFn = Callable[[SearchSpace, Arch, Any], bytes]


def quantized_policies(space: SearchSpace, archs: Sequence[Arch], precision: str, seed: int) -> list[Any]:
    """One policy per arch: uniform int8 (``int8``), or (``mixed``) each group (stem, every stage, head) fp32 or
    int8 at random (seeded), never all fp32 nor all int8."""
    from search_spaces import PrecisionPolicy

    if precision not in QUANTIZED_EVAL:
        raise LatencyError(f"unknown precision to evaluate {precision!r}; allowed: {', '.join(QUANTIZED_EVAL)}")
    if precision == "int8":
        return [PrecisionPolicy.uniform(space, "int8") for _ in archs]
    rng = as_generator(seed)
    out = []
    for _ in archs:
        while True:
            letters = ["int8" if b else "fp32" for b in rng.integers(0, 2, size=len(space.stages) + 2)]
            if len(set(letters)) == 2:
                break
        out.append(PrecisionPolicy(letters[0], tuple((p,) for p in letters[1:-1]), letters[-1]))
    return out


def _quantized_key(arch: Arch, policy: Any, quantizer: str = "") -> str:
    return f"{arch.arch_id}|{policy}" + (f"|{quantizer}" if quantizer else "")


def _read_quantized(path: Path) -> dict[str, Any]:
    """The records of the quantised measurements at ``path`` (none when it does not exist)."""
    if not path.is_file():
        return {}
    with reading(path, "quantised latency measurements", "move it away and measure again"):
        data = json.loads(path.read_text(encoding="utf-8"))
        if data.get("format") != QUANTIZED_FORMAT:
            raise ValueError(f"not a {QUANTIZED_FORMAT} file")
        return dict(data["records"])


def measure_quantized(store: DeviceStore, device: Device, space: SearchSpace, archs: Sequence[Arch],
                      policies: Sequence[Any], model_fn: SubnetModelFn, config: MeasureConfig, *, runs: int = 2,
                      chunk: int = 8, progress: bool = True, quantizer: str = "") -> list[list[float]]:
    """Each subnet quantised under its policy (``model_fn``) and timed end to end ``runs`` times by ONNX Runtime on
    the CPU under the protocol, in this process; ``chunk`` subnets at a time, interleaved. Kept in
    ``measurements/<space>.quantized.json`` (reused, resumable) under ``quantizer``, the id of what ``model_fn``
    builds (``nas.quantize.QUANTIZER_ID``): a timing of another quantiser's model is not reused. Returns each
    subnet's runs (ms)."""
    from .measure import check_clock, configure_allocator, onnx_model_run, time_interleaved

    if not device.times_quantized:
        raise LatencyError(f"quantised subnets are timed by ONNX Runtime on the CPU; device {device.id!r} runs "
                           f"{device.backend} on {device.accelerator} (use a local-...-ort device)")
    try:
        check_clock(config, device.threads, device.accelerator)
    except ValueError as exc:
        raise LatencyError(str(exc)) from None
    path = store.measurements_path(device.id, space.name).with_name(f"{space.name}.quantized.json")
    keys = [_quantized_key(a, p, quantizer) for a, p in zip(archs, policies)]
    configure_allocator()
    plain = replace(config, load_reference=False)
    records: dict[str, Any] = _read_quantized(path)

    def save(measured: dict[str, Any]) -> None:
        # The file as it is now plus this chunk: every writer holds the device lock, and re-reading keeps
        # whatever another process wrote all the same.
        records.update(_read_quantized(path))
        records.update(measured)
        atomic_write_json(path, {"format": QUANTIZED_FORMAT, "version": 1, "space": space.name,
                                 "device": device.id, "protocol": asdict(plain), "records": records})

    bar = progress_bar(progress, total=len(archs), desc=f"quantised {space.name} on {device.id}", unit="net",
                       leave=False)
    try:
        with device_lock(store.lock_path(device.id)):
            # Planned inside the lock: a second measurement of the same subnets waits, then finds them done.
            records.update(_read_quantized(path))
            todo = [i for i, k in enumerate(keys) if len(records.get(k, {}).get("runs", [])) < runs]
            bar.update(len(archs) - len(todo))
            for start in range(0, len(todo), chunk):
                idx = todo[start:start + chunk]
                run_fns = [onnx_model_run(model_fn(space, archs[i], policies[i]),
                                          (device.batch_size, 3, archs[i].resolution, archs[i].resolution),
                                          device.threads) for i in idx]
                timed = [time_interleaved(run_fns, plain) for _ in range(runs)]
                save({keys[i]: {"arch": archs[i].to_dict(), "policy": str(policies[i]), "quantizer": quantizer,
                                "runs": [m[j].latency_ms for m in timed], "spread": [m[j].spread for m in timed]}
                      for j, i in enumerate(idx)})
                bar.update(len(idx))
    finally:
        bar.close()
    return [list(records[k]["runs"]) for k in keys]


@dataclass
class QuantizedEvalReport:
    """Predictor accuracy on quantised subnets measured end to end: ``predictors`` on the ``n`` fresh subnets
    (``table``: the mixed table sum; ``table_linear`` / ``residual``: fitted on ``fit_n`` other quantised
    subnets; ``table_linear_fp32``: the device's saved fp32 fit applied to the mixed sum), ``repeatability``: the
    second measurement against the first."""

    space: str
    device: str
    precision: str
    n: int
    fit_n: int
    predictors: dict[str, dict[str, float]]
    repeatability: dict[str, float]
    files: dict[str, str]
    params: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"space": self.space, "device": self.device, "precision": self.precision, "n": self.n,
                "fit_n": self.fit_n, "predictors": self.predictors, "repeatability": self.repeatability,
                "files": self.files, "params": self.params}


def evaluate_quantized(store: DeviceStore, device: Device, space: SearchSpace, model_fn: SubnetModelFn, n: int,
                       config: MeasureConfig, *, precision: str = "int8", resolutions: Sequence[int] | None = None,
                       fit_n: int = QUANTIZED_FIT, progress: bool = True, quantizer: str = "") -> QuantizedEvalReport:
    """The table's (and its fitted corrections') accuracy on ``n`` fresh subnets quantised under ``precision``
    (``int8``: uniform; ``mixed``: random per-group policies), each measured twice end to end; ``table_linear``
    and ``residual`` are fitted on ``fit_n`` other quantised subnets (another seed)."""
    from .learned import ResidualPredictor, TableLinearPredictor, TableSumPredictor

    table = load_table(store, device, space)
    if table is None:
        raise LatencyError(f"no lookup table of {space.name!r} on {device.id!r}; run 'nas latency build "
                           f"--precisions fp32 int8' first")
    if "int8" not in table.precisions:
        raise LatencyError(f"the lookup table of {space.name!r} on {device.id!r} has no int8 entries; run "
                           f"'nas latency build --precisions fp32 int8' first")
    if fit_n < 3:
        raise LatencyError("fitting the corrections needs at least 3 quantised subnets")
    fit_archs = sample_archs(space, fit_n, FIT_SEED, resolutions)
    archs = eval_archs(space, n, {a.arch_id for a in fit_archs}, EVAL_SEED, resolutions)
    fit_policies = quantized_policies(space, fit_archs, precision, FIT_SEED)
    policies = quantized_policies(space, archs, precision, EVAL_SEED)
    # Check the table covers every subnet before anything is measured.
    table.predict(space, [*fit_archs, *archs], [*fit_policies, *policies])
    runs = measure_quantized(store, device, space, [*fit_archs, *archs], [*fit_policies, *policies], model_fn,
                             config, progress=progress, quantizer=quantizer)
    fit_y = np.array([r[0] for r in runs[:len(fit_archs)]])
    measured = np.array([r[0] for r in runs[len(fit_archs):]])
    again = np.array([r[1] for r in runs[len(fit_archs):]])
    predictors: dict[str, Any] = {"table": TableSumPredictor(space, table),
                                  "table_linear": TableLinearPredictor(space, table).fit(fit_archs, fit_y,
                                                                                       fit_policies),
                                  "residual": ResidualPredictor(space, table).fit(fit_archs, fit_y, fit_policies)}
    saved = store.predictor_dir(device.id, space.name) / "table_linear.json"
    if saved.is_file():
        predictors["table_linear_fp32"] = load_predictor(saved, space, table)
    predictions = {k: p.predict_mixed(archs, policies) for k, p in predictors.items()}
    results = {k: accuracy(v, measured) for k, v in predictions.items()}
    out = store.eval_dir(device.id)
    stem = f"{space.name}.{precision}"
    files = {"csv": str(out / f"{stem}.csv"), "plot": str(out / f"{stem}.png"), "json": str(out / f"{stem}.json")}
    rows = [{"arch_id": a.arch_id, "policy": str(p), "resolution": a.resolution,
             "macs_m": network_macs(space, a) / 1e6, "measured_ms": m, "measured_again_ms": m2,
             **{f"pred_{k}_ms": float(v[i]) for k, v in predictions.items()}}
            for i, (a, p, m, m2) in enumerate(zip(archs, policies, measured, again))]
    write_csv(files["csv"], rows)
    scatter_plot(files["plot"], measured, predictions, f"{space.name} {precision} on {device.id} (n={len(archs)})")
    report = QuantizedEvalReport(space.name, device.id, precision, len(archs), len(fit_archs), results,
                                 accuracy(again, measured), files,
                                 {k: p.params() for k, p in predictors.items() if k != "table"})
    atomic_write_json(files["json"], report.to_dict())
    return report


def format_quantized_report(report: QuantizedEvalReport) -> str:
    head = f"{'predictor':<18}{'MAPE %':>8}{'RMSE ms':>9}{'<=5%':>7}{'<=10%':>7}{'Spearman':>10}{'Kendall':>9}"
    lines = [f"{report.space} on {report.device}: {report.n} fresh {report.precision} subnets measured end to end "
             f"(corrections fitted on {report.fit_n} others)", head]
    for name, r in [*report.predictors.items(), ("(repeat)", report.repeatability)]:
        lines.append(f"{name:<18}{r['mape_pct']:>8.2f}{r['rmse_ms']:>9.3f}{r['within_5pct']:>7.0%}"
                     f"{r['within_10pct']:>7.0%}{_fmt(r['spearman'], '.3f'):>10}{_fmt(r['kendall'], '.3f'):>9}")
    lines.append(f"csv: {report.files['csv']}  plot: {report.files['plot']}")
    return "\n".join(lines)
