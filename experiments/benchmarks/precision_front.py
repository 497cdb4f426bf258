"""The front with precision against the fp32-only front, side by side in one searched run (issue 15 targets).

A run searched with ``search.precisions: [fp32, int8]`` holds, in one study, the fp32 trials of the search and the
quantised subnets its precision search measured (``nas.precision_search``). For each device this script draws
both fronts from that one study, on the search's own objectives (validation accuracy, the device's predicted
latency):

- ``fp32``: the non-dominated fp32 trials (what ``search.precisions: [fp32]`` stores);
- ``with precision``: the non-dominated trials of every precision the config lists;

and reports their hypervolumes against one reference point (the worst accuracy and latency of every trial of the
device, 5% margin, ``nas.pareto.reference_point``), the ratio, and at the fp32 front's knee (``knee_point``) the
fastest member of the precision front within ``--within`` points of its accuracy, with the speed-up. Then the stored
front (what ``nas query`` answers from, after hardware in the loop when it ran): each member's precision, test top-1
and latency (measured where re-measured).

Run::

    .venv/bin/nas run experiments/quickstart.yaml           # trains, builds the int8 entries, searches
    .venv/bin/python experiments/benchmarks/precision_front.py experiments/quickstart.yaml [--run-dir DIR]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from nas.config import load_config  # noqa: E402
from nas.pareto import hypervolume_2d, knee_point, reference_point  # noqa: E402
from nas.query import open_fronts  # noqa: E402
from nas.rundir import RunDir  # noqa: E402
from nas.search import front_members  # noqa: E402
from nas.study import load_study, study_trials  # noqa: E402
from search_spaces import precision_label  # noqa: E402


def compare(table, k: int, budget: float | None, within_points: float) -> dict:
    """Both fronts of device ``k`` from the trial table, their hypervolumes and the knee speed-up."""
    keys = table.keys()
    everything = np.arange(len(table.archs))
    fp32 = np.array([i for i in everything if table.policy(i) is None], dtype=int)
    acc, lat = table.accuracy, table.latency_ms[:, k]
    ref_acc, ref_lat = reference_point(acc, lat)
    out = {"reference": {"accuracy": ref_acc, "latency_ms": ref_lat}}
    fronts = {}
    for name, idx in (("fp32", fp32), ("with precision", everything)):
        chosen = front_members([table.archs[i] for i in idx], acc[idx], lat[idx], budget, [keys[i] for i in idx])
        members = idx[chosen]
        fronts[name] = members
        out[name] = {"members": len(members),
                     "hypervolume": hypervolume_2d(acc[members], lat[members], ref_acc, ref_lat),
                     "precisions": sorted({precision_label(table.policy(i)) for i in members})}
    out["hypervolume_ratio"] = out["with precision"]["hypervolume"] / out["fp32"]["hypervolume"]
    base = fronts["fp32"]
    knee = base[knee_point(acc[base], lat[base])]
    mixed = fronts["with precision"]
    ok = mixed[acc[mixed] >= acc[knee] - within_points / 100.0]
    fastest = ok[np.argmin(lat[ok])]
    out["knee"] = {"fp32": {"accuracy": float(acc[knee]), "latency_ms": float(lat[knee])},
                   "fastest_within": {"accuracy": float(acc[fastest]), "latency_ms": float(lat[fastest]),
                                      "precision": precision_label(table.policy(fastest)),
                                      "policy": str(table.policy(fastest) or "fp32")},
                   "speedup": float(lat[knee] / lat[fastest])}
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("config", help="experiment config of a run searched with search.precisions [fp32, int8]")
    parser.add_argument("--run-dir", default=None)
    parser.add_argument("--within", type=float, default=0.5, help="accuracy points allowed below the fp32 knee")
    parser.add_argument("--json", default=None, help="also write the figures to this file")
    args = parser.parse_args()
    config = load_config(args.config)
    run = RunDir.for_config(config, args.run_dir)
    search = config.search
    space = search.restrict(config.get_space())
    table = study_trials(load_study(run, search), space)
    if all(p is None for p in (table.policy(i) for i in range(len(table.archs)))):
        print(f"{run.root}: the study has no quantised trials; search with search.precisions: [fp32, int8]",
              file=sys.stderr)
        return 2
    results = {}
    print(f"run {run.root}: {len(table.archs)} trials, {sum(p is not None for p in table.policies)} quantised")
    for k, device in enumerate(search.devices):
        r = compare(table, k, search.budgets.get(device), args.within)
        results[device] = r
        knee = r["knee"]
        print(f"\n## {device}\n")
        print("| front | members | precisions | hypervolume |\n| --- | --- | --- | --- |")
        for name in ("fp32", "with precision"):
            print(f"| {name} | {r[name]['members']} | {', '.join(r[name]['precisions'])} | "
                  f"{r[name]['hypervolume']:.5f} |")
        print(f"\nhypervolume with precision / fp32: {r['hypervolume_ratio']:.3f} (reference: accuracy "
              f"{r['reference']['accuracy']:.4f}, {r['reference']['latency_ms']:.3f} ms)")
        print(f"fp32 knee: {100 * knee['fp32']['accuracy']:.2f}% at {knee['fp32']['latency_ms']:.3f} ms; "
              f"fastest within {args.within:g} point: {100 * knee['fastest_within']['accuracy']:.2f}% at "
              f"{knee['fastest_within']['latency_ms']:.3f} ms ({knee['fastest_within']['precision']}, "
              f"{knee['fastest_within']['policy']}): {knee['speedup']:.2f}x faster")
        members = open_fronts(run).front(device)
        print("\nstored front (nas query answers from it):\n")
        print("| precision | policy | val % | test % | latency ms | measured |\n| --- | --- | --- | --- | --- | --- |")
        for m in members:
            test = "-" if m.test_accuracy is None else f"{100 * m.test_accuracy:.2f}"
            print(f"| {m.precision} | {m.policy or '-'} | {100 * m.val_accuracy:.2f} | {test} | {m.latency_ms:.3f} | "
                  f"{'yes' if m.measured_latency_ms is not None else 'no'} |")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2, sort_keys=True))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
