"""``nas run CONFIG``: the whole pipeline, each finished stage skipped."""

from __future__ import annotations

import argparse
import json


def run(args: argparse.Namespace) -> int:
    from ..config import load_config
    from ..pipeline import Pipeline
    from ..query import open_fronts
    from ..rundir import RunDir
    from .search import precision_counts

    config = load_config(args.config, epochs_scale=args.epochs_scale)
    run_dir = RunDir.for_config(config, args.run_dir)
    pipeline = Pipeline(config, run_dir, home=args.home, progress=args.progress, verbose=args.verbose,
                        quiet=args.quiet)
    result = pipeline.run_all()
    store = open_fronts(run_dir)
    fronts = {d: [m.to_dict() for m in store.front(d)] for d in store.devices()}
    if args.json:
        print(json.dumps({"run_dir": str(result.run_dir), "ran": list(result.ran), "skipped": list(result.skipped),
                          "fronts_file": str(result.fronts), "plot": str(result.plot),
                          "export": str(result.export), "fronts": fronts}, indent=2, sort_keys=True),
              file=args.stdout)
        return 0
    print(f"run folder   {result.run_dir}")
    for device, members in fronts.items():
        fast, best = members[0], members[-1]
        mix = precision_counts(m.get("precision", "fp32") for m in members)
        print(f"front        {device}: {len(members)} subnets{mix}, {fast['latency_ms']:.3f} ms "
              f"({100 * fast['val_accuracy']:.1f}%) to {best['latency_ms']:.3f} ms ({100 * best['val_accuracy']:.1f}%)")
    print(f"fronts       {result.fronts}")
    print(f"plot         {result.plot}")
    print(f"export       {result.export} (the knee of {pipeline.search.devices[0]}'s front)")
    print(f"next         nas query {result.run_dir} --device {pipeline.search.devices[0]} --max-latency-ms X")
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "run", help="the whole pipeline: train, latency, search, fronts, plot, export",
        description="Run every stage of an experiment: train the supernet, measure latency tables or fit "
                    "predictors for the config's devices (in $HWNAS_HOME), search, re-measure the fronts on "
                    "their devices, plot and export the knee subnet. Stages already done are skipped (the search "
                    "when it has search.n_trials trials and its fronts were written under the config's budgets "
                    "and precisions; the stages after it when made from the current fronts); an interrupted run "
                    "continues where it stopped.")
    p.add_argument("config", metavar="CONFIG", help="experiment config (YAML), e.g. experiments/quickstart.yaml")
    p.add_argument("--run-dir", default=None, help="run folder (default: the config's, or runs/<name>)")
    p.add_argument("--home", default=None, help="device data folder (default: $HWNAS_HOME or ~/.hwnas)")
    p.add_argument("--epochs-scale", type=float, default=None, help="scale every training phase's epochs")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.add_argument("--json", action="store_true",
                   help="print the result as JSON on stdout (run_dir, ran, skipped, fronts_file, plot, export, "
                        "fronts); progress goes to stderr")
    p.set_defaults(handler=run)
