"""``nas search CONFIG``: Optuna search of the trained supernet against each device's latency predictor.

A thin adapter over ``nas.search_stage.search_stage`` (what ``nas run`` calls too).
"""

from __future__ import annotations

import argparse
import json


def precision_counts(precisions) -> str:
    """`` (3 fp32, 2 int8)`` for a front holding quantised members; empty for an fp32-only front."""
    from collections import Counter

    counts = Counter(precisions)
    return "" if set(counts) <= {"fp32"} else " (" + ", ".join(f"{n} {p}" for p, n in sorted(counts.items())) + ")"


def run(args: argparse.Namespace) -> int:
    from ..config import load_config
    from ..rundir import RunDir
    from ..search_paths import search_paths
    from ..search_stage import search_stage

    config = load_config(args.config)
    run_dir = RunDir.for_config(config, args.run_dir)
    fronts = search_stage(config, run_dir, n_trials=args.n_trials, progress=args.progress, store=args.home)
    if args.json:
        print(json.dumps({d: [m.to_dict() for m in ms] for d, ms in fronts.items()}, indent=2, sort_keys=True),
              file=args.stdout)
        return 0
    for device, members in fronts.items():
        if not members:  # run_search refuses to store an empty front; kept so printing never fails
            print(f"{device}: no subnets on the front")
            continue
        lo, hi = members[0], members[-1]
        print(f"{device}: {len(members)} subnets on the front{precision_counts(m.precision for m in members)}, "
              f"{lo.latency_ms:.3f} ms ({100 * lo.val_accuracy:.2f}%) to {hi.latency_ms:.3f} ms "
              f"({100 * hi.val_accuracy:.2f}%)")
    print(f"fronts: {search_paths(run_dir).fronts}")
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "search", help="Optuna search -> per-device Pareto fronts",
        description="Search the trained supernet's subnets for accuracy against latency on every device of "
                    "the config (one Optuna study; NSGA-II by default). Running it again continues the study. "
                    "With search.storage a database, several processes (each with its own run folder) search "
                    "one study together; a second search of the same run folder is refused.")
    p.add_argument("config", metavar="CONFIG", help="experiment config (YAML)")
    p.add_argument("--run-dir", default=None, help="run folder (default: the config's, or runs/<name>)")
    p.add_argument("--n-trials", type=int, default=None, help="override search.n_trials (finished trials in total)")
    p.add_argument("--home", default=None, help="device data folder (default: $HWNAS_HOME or ~/.hwnas)")
    p.add_argument("--json", action="store_true",
                   help="print the fronts as JSON on stdout (device to its members); progress goes to stderr")
    p.set_defaults(handler=run)
