"""``nas query RUN --device D --max-latency-ms X``: the most accurate subnet within a budget, and its export."""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
from pathlib import Path

from ..errors import UsageError


def _print_member(member, result: dict, out) -> None:
    measured = "measured" if member.measured_latency_ms is not None else "predicted"
    test = "n/a" if member.test_accuracy is None else f"{100 * member.test_accuracy:.2f}%"
    print(f"device       {member.device}", file=out)
    print(f"arch         {member.arch_string}", file=out)
    print(f"arch id      {member.arch_id}", file=out)
    if result.get("ofa_config") is not None:
        print(f"ofa config   {json.dumps(result['ofa_config'], separators=(',', ':'))}", file=out)
    print(f"latency      {member.latency_ms:.3f} ms ({measured}; predicted {member.predicted_latency_ms:.3f} ms)",
          file=out)
    print(f"accuracy     {100 * member.val_accuracy:.2f}% validation, {test} test", file=out)
    print(f"size         {member.params / 1e6:.2f} M params, {member.macs / 1e6:.1f} M MACs", file=out)
    export = result.get("export")
    if export is None:
        return
    kind = {"onnx": "ONNX Runtime", "pt2": "torch.export"}.get(export["format"])
    extra = f" ({kind} vs PyTorch max abs diff {export['max_abs_diff']:.2e} on {export['checked_on']})" \
        if kind else ""
    print(f"exported     {export['path']}{extra}", file=out)
    if kind:
        mean = ", ".join(f"{v:.4f}" for v in export["mean"])
        std = ", ".join(f"{v:.4f}" for v in export["std"])
        print(f"input        RGB in [0, 1]; normalised inside the file by mean ({mean}), std ({std})", file=out)
    if export["batch_norm"] != "recalibrated":
        print("batch norms  the supernet's statistics (the run has no dataset to recalibrate them on)", file=out)


def run(args: argparse.Namespace) -> int:
    from ..io import check_writable
    from ..query import (
        EXPORT_SUFFIXES,
        check_min_accuracy,
        export_member,
        ofa_config_of,
        open_fronts,
        query_front,
        run_calibration,
        suffixes_text,
    )

    if args.csv and args.json:
        raise UsageError("--csv and --json cannot be combined; give one of them (or neither for the summary)")
    check_min_accuracy(args.min_accuracy)
    if args.export is not None:
        if Path(args.export).suffix not in EXPORT_SUFFIXES:
            raise UsageError(f"--export {args.export!r}: the file name must end in {suffixes_text()}")
        check_writable(args.export)
    store = open_fronts(args.run)
    member = query_front(args.run, args.device, args.max_latency_ms, args.min_accuracy, store=store)
    result = {**member.to_dict(), "ofa_config": ofa_config_of(member.arch)}
    if args.export is not None:
        # With --csv, stdout holds the CSV alone: anything printed while exporting goes to stderr.
        with contextlib.redirect_stdout(sys.stderr) if args.csv else contextlib.nullcontext():
            result["export"] = export_member(member, args.export, store=store,
                                             calibration=run_calibration(store, member.arch.resolution))
    if args.json:
        print(json.dumps(result, indent=2, sort_keys=True), file=args.stdout)
    elif args.csv:
        from ..tables import members_frame

        members_frame([member]).to_csv(args.stdout, index=False)
    else:
        _print_member(member, result, args.stdout)
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "query", help="the most accurate subnet of a run within a latency budget",
        description="Pick the most accurate subnet of a run's front for DEVICE within the latency budget; "
                    "optionally export it: ONNX or a torch.export program (.pt2), both taking RGB images in "
                    "[0, 1] with the normalisation inside and checked against PyTorch on the run's images, or "
                    "a PyTorch state dict (.pt).")
    p.add_argument("run", metavar="RUN", help="the run folder")
    p.add_argument("--device", required=True, help="device id of the front to query")
    p.add_argument("--max-latency-ms", type=float, required=True, help="latency budget in milliseconds")
    p.add_argument("--min-accuracy", type=float, default=None,
                   help="required validation accuracy, a fraction in [0, 1] (0.9, not 90)")
    p.add_argument("--json", action="store_true", help="machine-readable output (with the OFA config)")
    p.add_argument("--csv", action="store_true", help="the chosen subnet as a one-row CSV (columns of `nas fronts`)")
    p.add_argument("--export", metavar="FILE", default=None,
                   help="write the subnet to FILE.onnx, FILE.pt2 (torch.export) or FILE.pt (state dict)")
    p.set_defaults(handler=run)
