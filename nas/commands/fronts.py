"""``nas fronts RUN [--device D] [--csv | --json]``: every front member of a run, as a table, CSV or JSON."""

from __future__ import annotations

import argparse
import json

from ..errors import UsageError


def _percent(value: float) -> str:
    return "n/a" if value != value else f"{100 * value:.2f}"  # NaN: not measured


def _print_table(frame, out) -> None:
    """One line per member, grouped by device, latency ascending; the arch string last (it is long)."""
    print(f"{'device':<20} {'latency ms':>12} {'val %':>6} {'test %':>6} {'MACs M':>8} {'params M':>8}  "
          f"{'arch id':<16} {'precision':<9} arch", file=out)
    for row in frame.itertuples(index=False):
        kind = "m" if row.measured_latency_ms == row.measured_latency_ms else "p"  # measured / predicted
        print(f"{row.device:<20} {row.latency_ms:>10.3f} {kind} {_percent(row.val_accuracy):>6} "
              f"{_percent(row.test_accuracy):>6} {row.macs / 1e6:>8.1f} {row.params / 1e6:>8.2f}  "
              f"{row.arch_id:<16} {row.precision:<9} {row.arch_string}"
              f"{'' if row.policy is None or row.policy != row.policy else ' ' + row.policy}", file=out)
    print(f"{len(frame)} members; latency m: measured on the device, p: predicted", file=out)


def run(args: argparse.Namespace) -> int:
    from ..query import open_fronts
    from ..tables import front_members, front_records, members_frame

    if args.csv and args.json:
        raise UsageError("--csv and --json cannot be combined; give one of them (or neither for a table)")
    store = open_fronts(args.run)
    members = front_members(store, None if args.device is None else [args.device])
    if args.json:
        print(json.dumps(front_records(members), indent=2), file=args.stdout)
        return 0
    frame = members_frame(members)
    if args.csv:
        frame.to_csv(args.stdout, index=False)
    elif frame.empty:
        print(f"run {args.run} has no front members", file=args.stdout)
    else:
        _print_table(frame, args.stdout)
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "fronts", help="every front member of a run: a table, CSV or JSON",
        description="List the front members of a run (every device, or DEVICE): architecture, validation and "
                    "test accuracy, latency (measured where re-measured, else predicted), MACs, parameters, and "
                    "precision (fp32, int8 or mixed, with the precision policy).")
    p.add_argument("run", metavar="RUN", help="the run folder")
    p.add_argument("--device", default=None, help="only the front of this device")
    p.add_argument("--csv", action="store_true", help="CSV on stdout (one row per member, a header line)")
    p.add_argument("--json", action="store_true", help="a JSON list on stdout (one object per member)")
    p.set_defaults(handler=run)
