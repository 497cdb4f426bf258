"""``nas plot RUN [--out FILE.png]``: accuracy-latency fronts of every device and hypervolume per trial."""

from __future__ import annotations

import argparse


def run(args: argparse.Namespace) -> int:
    from ..io import check_writable
    from ..plots import check_plot_path, plot_run
    from ..query import check_outside_run_results

    if args.out is not None:  # checked before anything is read or drawn
        check_plot_path(args.out, "--out")
        check_outside_run_results(args.out, args.run, "--out")
        check_writable(args.out)
    search = None
    if args.config is not None:
        from ..config import load_config

        search = load_config(args.config).search
    path = plot_run(args.run, args.out, config=search)
    print(f"wrote {path}")
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "plot", help="plot a run's Pareto fronts",
        description="Draw the accuracy-latency front of every device of a run (all evaluated subnets faint "
                    "behind, largest and smallest subnets marked) and the hypervolume against trials.")
    p.add_argument("run", metavar="RUN", help="the run folder")
    p.add_argument("--config", metavar="CONFIG", default=None,
                   help="the experiment config whose search section names the study (search.storage, "
                        "search.study_name); default: the study the run's fronts were written from, in its journal")
    p.add_argument("--out", metavar="FILE.png", default=None,
                   help="output PNG file, its name ending in .png (default RUN/plots/fronts.png); not inside the "
                        "run's checkpoints/, fronts/ or search/")
    p.set_defaults(handler=run)
