"""Plots of a run: accuracy-latency fronts per device and hypervolume against trials.

Front members are marked by precision (``PRECISION_MARKERS``: circle fp32, triangle int8, square mixed) with a
legend entry per precision present; a front of fp32 members only is drawn as one series, as before.

``plot_data`` computes what to draw (a small named tuple, plain numpy); ``draw`` imports matplotlib lazily
(Agg backend) and writes the figure atomically; ``plot_run`` chains the two.
"""

from __future__ import annotations

import io
import json
import math
import os
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from .errors import UsageError
from .pareto import hypervolume_2d, reference_point

__all__ = ["PLOT_SUFFIX", "PRECISION_MARKERS", "DevicePanel", "PlotData", "check_plot_path", "draw", "plot_data",
           "plot_run"]

# The marker of a front member by its precision (``FrontMember.precision``), in legend order.
PRECISION_MARKERS = {"fp32": "o", "int8": "^", "mixed": "s"}
# What ``draw`` writes: PNG only, so a file's name says what it holds.
PLOT_SUFFIX = ".png"


def check_plot_path(out: str | os.PathLike[str], option: str = "out") -> Path:
    """``UsageError`` unless ``out`` names a PNG file (ends in ``.png``): a plot is written as PNG bytes only."""
    path = Path(out)
    if path.suffix.lower() != PLOT_SUFFIX:
        raise UsageError(f"{option} {str(out)!r}: a plot is written as PNG; the file name must end in {PLOT_SUFFIX}")
    return path


class DevicePanel(NamedTuple):
    device: str
    # Every evaluated subnet (accuracy fraction, predicted latency ms), in trial order.
    all_accuracy: np.ndarray
    all_latency_ms: np.ndarray
    # The stored front (validation accuracy, latency ms: measured where measured), latency ascending.
    front_accuracy: np.ndarray
    front_latency_ms: np.ndarray
    front_measured: bool
    # Each front member's precision (``fp32``, ``int8`` or ``mixed``), in the same order.
    front_precision: tuple[str, ...]
    # (name, accuracy, latency ms) of the reference subnets (largest, smallest), in fp32: latency measured
    # where hardware in the loop measured that subnet in fp32, else predicted (as the evaluated subnets').
    references: tuple[tuple[str, float, float], ...]
    budget_ms: float | None
    # Hypervolume (as a fraction of the final one) after each of ``hv_trials`` trials.
    hv_trials: np.ndarray
    hv_fraction: np.ndarray


class PlotData(NamedTuple):
    space: str
    n_trials: int
    panels: tuple[DevicePanel, ...]


def _hv_curve(acc: np.ndarray, lat: np.ndarray, points: int = 60) -> tuple[np.ndarray, np.ndarray]:
    if acc.size == 0:
        return np.zeros(0, dtype=int), np.zeros(0)
    ref_acc, ref_lat = reference_point(acc, lat)
    ns = np.unique(np.linspace(1, acc.size, min(points, acc.size)).round().astype(int))
    hv = np.array([hypervolume_2d(acc[:n], lat[:n], ref_acc, ref_lat) for n in ns])
    final = hv[-1] if hv[-1] > 0 else 1.0
    return ns, hv / final


def plot_data(run_dir: Any, config: Any = None, space: Any = None) -> PlotData:
    """What to draw for a run: its study's trials and its stored fronts (``config``: a ``SearchConfig`` when
    the study is not in the default journal file; ``space``: the space when it is not registered). Unless
    ``config`` names one, the study is the one the stored fronts were written from (a journal may hold several)."""
    from search_spaces import get_space

    from .query import open_fronts
    from .study import load_study, study_trials

    store = open_fronts(run_dir)
    space_name = store.get_meta("space")
    if space_name is None:
        raise UsageError("the run's front store names no space; run `nas search` again")
    space = get_space(space if space is not None else space_name)
    study = load_study(run_dir, _fronts_study(store, run_dir, config))
    table = study_trials(study, space)
    devices = list(study.user_attrs.get("devices", store.devices()))
    budgets = _budgets(store)
    panels = []
    for k, device in enumerate(devices):
        front = store.front(device)
        lat = table.latency_ms[:, k] if table.latency_ms.size else np.zeros(0)
        ns, hv = _hv_curve(table.accuracy, lat)
        panels.append(DevicePanel(
            device=device, all_accuracy=table.accuracy, all_latency_ms=lat,
            front_accuracy=np.array([m.val_accuracy for m in front]),
            front_latency_ms=np.array([m.latency_ms for m in front]),
            front_measured=any(m.measured_latency_ms is not None for m in front),
            front_precision=tuple(m.precision for m in front),
            references=_references(store, device),
            budget_ms=budgets.get(device), hv_trials=ns, hv_fraction=hv,
        ))
    return PlotData(space=space.name, n_trials=len(table.archs), panels=tuple(panels))


def _budgets(store: Any) -> dict[str, float]:
    """Device id to the latency budget its front was capped at (meta ``budgets_ms``); a value no search writes
    is a ``DamagedFileError`` naming the store."""
    from search_spaces import reading

    from .fronts import FRONTS_REMEDY

    budgets = store.get_meta("budgets_ms", {}) or {}
    with reading(getattr(store, "path", "of the run"), "front store", FRONTS_REMEDY):
        if not isinstance(budgets, dict) or not all(
                isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and v > 0
                for v in budgets.values()):
            raise ValueError(f"meta 'budgets_ms' is {json.dumps(budgets)[:60]}, not device ids to budgets in ms > 0")
    return {str(device): float(ms) for device, ms in budgets.items()}


def _fronts_study(store: Any, run_dir: Any, config: Any) -> Any:
    """``config`` (default: the journal's) with its study, unless it names one, the study the store's fronts
    were written from (``written_from``; a journal may hold several). ``UsageError`` when no config is given
    and the run has fronts but no journal: its study is in a ``search.storage`` database only a config names."""
    import dataclasses

    from .search import WRITTEN_FROM_KEY
    from .search_config import SearchConfig
    from .search_paths import run_path, search_paths

    written = store.get_meta(WRITTEN_FROM_KEY)
    name = written.get("study") if isinstance(written, dict) else None
    if not isinstance(name, str) or not name or (config is not None and config.study_name):
        return config
    if config is None and not search_paths(run_dir).journal.exists():
        raise UsageError(f"run {str(run_path(run_dir))!r}: its fronts come from search study {name!r}, which is not "
                         f"in the run's journal (search/study.journal): a search.storage database? give the "
                         f"experiment config that names it: nas plot RUN --config CONFIG")
    return dataclasses.replace(config if config is not None else SearchConfig(), study_name=name)


def _references(store: Any, device: str) -> tuple[tuple[str, float, float], ...]:
    """The reference subnets, each at its fp32 latency measured on ``device`` when there is one: the same
    subnet on the front must not be drawn at two latencies."""
    measured = {m.arch_id: m.measured_latency_ms for m in store.measurements(device) if m.policy is None}
    return tuple((r.name, r.accuracy, measured.get(r.arch.arch_id, r.latency_ms)) for r in store.references(device))


def draw(data: PlotData, out: str | os.PathLike[str]) -> Path:
    """Draw ``data`` into a PNG at ``out`` (atomic write; ``out`` must end in ``.png``)."""
    check_plot_path(out)
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    from .io import atomic_write_bytes

    n = len(data.panels)
    fig, axes = plt.subplots(1, n + 1, figsize=(4.8 * (n + 1), 4.2), squeeze=False)
    colours = plt.get_cmap("tab10").colors
    for k, panel in enumerate(data.panels):
        ax = axes[0, k]
        colour = colours[k % len(colours)]
        ax.scatter(panel.all_latency_ms, 100 * panel.all_accuracy, s=6, color="0.6", alpha=0.25, linewidths=0,
                   label=f"evaluated subnets ({panel.all_accuracy.size}, predicted latency)")
        if panel.front_accuracy.size:
            kind = "measured" if panel.front_measured else "predicted"
            ax.step(panel.front_latency_ms, 100 * panel.front_accuracy, where="post", color=colour, lw=1.5)
            precision = np.array(panel.front_precision)
            if set(precision) <= {"fp32"}:
                ax.scatter(panel.front_latency_ms, 100 * panel.front_accuracy, s=22, color=colour, zorder=3,
                           label=f"Pareto front ({panel.front_accuracy.size}, {kind} latency)")
            else:  # a marker per precision, each with its legend entry
                ax.plot([], [], color=colour, lw=1.5,
                        label=f"Pareto front ({panel.front_accuracy.size}, {kind} latency)")
                for name, marker in PRECISION_MARKERS.items():
                    on = precision == name
                    if on.any():
                        ax.scatter(panel.front_latency_ms[on], 100 * panel.front_accuracy[on], s=30, marker=marker,
                                   color=colour, edgecolors="black", linewidths=0.4, zorder=3,
                                   label=f"{name} ({int(on.sum())})")
        for (name, acc, lat), marker in zip(panel.references, ("*", "D", "s")):
            if np.isfinite(acc):
                # hollow: a front member at the same point stays visible inside it
                ax.scatter([lat], [100 * acc], marker=marker, s=90, facecolors="none", edgecolors="black",
                           linewidths=1.3, zorder=4, label=f"{name} subnet")
        if panel.budget_ms is not None:
            ax.axvline(panel.budget_ms, color=colour, ls="--", lw=1, label=f"budget {panel.budget_ms:g} ms")
        ax.set_title(f"{panel.device}")
        ax.set_xlabel("latency (ms)")
        ax.set_ylabel("validation accuracy (%)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="lower right")
    ax = axes[0, n]
    for k, panel in enumerate(data.panels):
        ax.plot(panel.hv_trials, 100 * panel.hv_fraction, color=colours[k % len(colours)], label=panel.device)
    ax.set_title("search progress")
    ax.set_xlabel("finished trials")
    ax.set_ylabel("hypervolume (% of final)")
    ax.set_ylim(0, 105)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="lower right")
    fig.suptitle(f"{data.space}: accuracy-latency fronts after {data.n_trials} trials")
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110)
    plt.close(fig)
    return atomic_write_bytes(out, buffer.getvalue())


def plot_run(run_dir: Any, out: str | os.PathLike[str] | None = None, config: Any = None,
             space: Any = None) -> Path:
    """Plot a run's fronts into ``out`` (default ``plots/fronts.png`` in the run folder)."""
    from .search_paths import search_paths

    return draw(plot_data(run_dir, config, space), out if out is not None else search_paths(run_dir).plot)
