"""``nas plot RUN [--out FILE.png]``: accuracy-latency fronts of every device and hypervolume per trial."""

from __future__ import annotations

import argparse


def run(args: argparse.Namespace) -> int:
    from ..io import check_writable
    from ..plots import plot_run

    if args.out is not None:
        check_writable(args.out)
    path = plot_run(args.run, args.out)
    print(f"wrote {path}")
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "plot", help="plot a run's Pareto fronts",
        description="Draw the accuracy-latency front of every device of a run (all evaluated subnets faint "
                    "behind, largest and smallest subnets marked) and the hypervolume against trials.")
    p.add_argument("run", metavar="RUN", help="the run folder")
    p.add_argument("--out", metavar="FILE.png", default=None, help="output file (default RUN/plots/fronts.png)")
    p.set_defaults(handler=run)
