"""The stages behind ``nas latency fit`` and ``nas latency eval``, as library functions.

Fitting measures ``n`` random subnets (seed ``FIT_SEED``) end to end and fits every predictor kind the
data allows; evaluation measures fresh subnets (seed ``EVAL_SEED``, disjoint from the fitting set) twice,
and reports each saved predictor's accuracy, the FLOPs-proportional baseline and the measurement's own
repeatability (second run against the first).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from search_spaces import Arch, SearchSpace, as_generator, random_arch, reading

from .devices import Device, DeviceStore, LatencyError, atomic_write_json
from .layers import LayerBuilder, network_macs
from .learned import PREDICTOR_KINDS, Predictor, load_predictor, make_predictor
from .lut import LookupTable
from .measure import MeasureConfig
from .metrics import accuracy, scatter_plot, write_csv
from .remote import MeasurementLog

FIT_SEED = 0
EVAL_SEED = 1_000_003


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


def load_table(store: DeviceStore, device: Device, space: SearchSpace) -> LookupTable | None:
    path = store.table_path(device.id, space.name)
    return LookupTable.load(path) if path.is_file() else None


def fit_predictors(store: DeviceStore, device: Device, space: SearchSpace, builder: LayerBuilder | None,
                   n: int, config: MeasureConfig, *, resolutions: Sequence[int] | None = None,
                   kinds: Sequence[str] | None = None, use_ray: bool = True, progress: bool = True,
                   seed: int = FIT_SEED) -> dict[str, Predictor]:
    """Measure ``n`` random subnets (reusing earlier measurements) and fit and save the predictors."""
    archs = sample_archs(space, n, seed, resolutions)
    log = MeasurementLog(store.measurements_path(device.id, space.name), space.name, device.id, config)
    if builder is not None:
        log.ensure(space, archs, 1, builder, device, config, lock_path=store.lock_path(device.id),
                   use_ray=use_ray, progress=progress)
    measured = [a for a in archs if log.runs(a)]
    if len(measured) < 3:
        raise LatencyError(f"only {len(measured)} measured subnets of {space.name!r} on {device.id!r}; "
                           f"fitting needs at least 3")
    y = [log.latency_ms(a) for a in measured]
    atomic_write_json(_fit_set_path(store, device, space), {"seed": seed, "samples": n,
                                                            "arch_ids": [a.arch_id for a in measured]})
    table = load_table(store, device, space)
    if kinds is None:
        kinds = [k for k in PREDICTOR_KINDS if table is not None or not PREDICTOR_KINDS[k].needs_table]
    fitted: dict[str, Predictor] = {}
    folder = store.predictor_dir(device.id, space.name)
    for kind in kinds:
        predictor = make_predictor(kind, space, table).fit(measured, y)
        predictor.save(folder / f"{kind}.json")
        fitted[kind] = predictor
    return fitted


def _fit_set_path(store: DeviceStore, device: Device, space: SearchSpace) -> Path:
    return store.measurements_path(device.id, space.name).with_suffix(".fit.json")


def load_predictors(store: DeviceStore, device: Device, space: SearchSpace) -> dict[str, Predictor]:
    """Every saved predictor of ``space`` on ``device`` (a ``table`` one too when a table exists)."""
    table = load_table(store, device, space)
    folder = store.predictor_dir(device.id, space.name)
    predictors = {p.stem: load_predictor(p, space, table) for p in sorted(folder.glob("*.json"))}
    if table is not None and "table" not in predictors:
        predictors["table"] = make_predictor("table", space, table)
    return predictors


@dataclass
class EvalReport:
    space: str
    device: str
    n: int
    predictors: dict[str, dict[str, float]]
    repeatability: dict[str, float]
    files: dict[str, str]

    def to_dict(self) -> dict[str, Any]:
        return {"space": self.space, "device": self.device, "n": self.n, "predictors": self.predictors,
                "repeatability": self.repeatability, "files": self.files}

    def frame(self) -> Any:
        """The report as a pandas DataFrame: one row per predictor kind and one for the repeat measurement
        (``(repeat)``: the second run against the first, the bound on any predictor); the metrics as columns."""
        import pandas as pd

        rows = {**self.predictors, "(repeat)": self.repeatability}
        frame = pd.DataFrame.from_dict(rows, orient="index")
        frame.index.name = "predictor"
        return frame

    def best(self) -> str:
        candidates = {k: v for k, v in self.predictors.items() if k != "flops"}
        return max(candidates, key=lambda k: (candidates[k]["within_10pct"], candidates[k]["spearman"]))


def evaluate_predictors(store: DeviceStore, device: Device, space: SearchSpace, builder: LayerBuilder | None,
                        n: int, config: MeasureConfig, *, resolutions: Sequence[int] | None = None,
                        use_ray: bool = True, progress: bool = True, seed: int = EVAL_SEED,
                        fit_seed: int = FIT_SEED, fit_n: int | None = None) -> EvalReport:
    """Accuracy of the saved predictors on ``n`` fresh subnets, each measured twice."""
    predictors = load_predictors(store, device, space)
    if not predictors:
        raise LatencyError(f"no predictors or table for {space.name!r} on {device.id!r}; run "
                           f"'nas latency fit' or 'nas latency build' first")
    log = MeasurementLog(store.measurements_path(device.id, space.name), space.name, device.id, config)
    fit_ids = {a.arch_id for a in sample_archs(space, fit_n, fit_seed, resolutions)} if fit_n else set()
    fit_set = _fit_set_path(store, device, space)
    if fit_set.is_file():  # never evaluate on a subnet the predictors were fitted on
        with reading(fit_set, "latency fit record", "move it away and run 'nas latency fit' again"):
            fit_ids |= {str(i) for i in json.loads(fit_set.read_text(encoding="utf-8"))["arch_ids"]}
    archs = [a for a in sample_archs(space, n + len(fit_ids), seed, resolutions) if a.arch_id not in fit_ids][:n]
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
    out = store.eval_dir(device.id)
    rows = [{"arch_id": a.arch_id, "resolution": a.resolution, "macs_m": network_macs(space, a) / 1e6,
             "measured_ms": m, "measured_again_ms": m2, **{f"pred_{k}_ms": float(v[i]) for k, v in
                                                            predictions.items()}}
            for i, (a, m, m2) in enumerate(zip(archs, measured, again))]
    files = {"csv": str(out / f"{space.name}.csv"), "plot": str(out / f"{space.name}.png"),
             "json": str(out / f"{space.name}.json")}
    write_csv(files["csv"], rows)
    scatter_plot(files["plot"], measured, predictions, f"{space.name} on {device.id} (n={len(archs)})")
    report = EvalReport(space.name, device.id, len(archs), results, accuracy(again, measured), files)
    atomic_write_json(files["json"], report.to_dict())
    return report


def format_report(report: EvalReport) -> str:
    lines = [f"{report.space} on {report.device}: {report.n} fresh subnets",
             f"{'predictor':<14}{'MAPE %':>8}{'RMSE ms':>9}{'<=5%':>7}{'<=10%':>7}{'Spearman':>10}{'Kendall':>9}"]
    rows = [*report.predictors.items(), ("(repeat)", report.repeatability)]
    for name, r in rows:
        lines.append(f"{name:<14}{r['mape_pct']:>8.2f}{r['rmse_ms']:>9.3f}{r['within_5pct']:>7.0%}"
                     f"{r['within_10pct']:>7.0%}{r['spearman']:>10.3f}{r['kendall']:>9.3f}")
    lines.append(f"csv: {report.files['csv']}  plot: {report.files['plot']}")
    return "\n".join(lines)


def read_report(path: str | Path) -> dict[str, Any]:
    with reading(path, "latency evaluation report", "move it away and run 'nas latency eval' again"):
        data = json.loads(Path(path).read_text(encoding="utf-8"))
        if not isinstance(data, dict):
            raise TypeError(f"expected a JSON object, got {type(data).__name__}")
        return data
