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
    policy = "" if member.policy is None else f" (policy {member.policy})"
    print(f"precision    {member.precision}{policy}", file=out)
    if result.get("ofa_config") is not None:
        print(f"ofa config   {json.dumps(result['ofa_config'], separators=(',', ':'))}", file=out)
    print(f"latency      {member.latency_ms:.3f} ms ({measured}; predicted {member.predicted_latency_ms:.3f} ms)",
          file=out)
    print(f"accuracy     {100 * member.val_accuracy:.2f}% validation, {test} test", file=out)
    print(f"size         {member.params / 1e6:.2f} M params, {member.macs / 1e6:.1f} M MACs", file=out)
    export = result.get("export")
    if export is None:
        return
    if export.get("quantized"):
        _print_quantized_export(export, out)
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


def _print_quantized_export(export: dict, out) -> None:
    check = export["fake_quant_check"]
    agreement = (f"; int8 kernels vs fake-quantised graph: mean logit difference {check['mean_abs_diff']:.3g} "
                 f"(allowed {check['allowed']:.3g})" if "allowed" in check else "")
    print(f"exported     {export['path']} (ONNX QDQ, {export['precision']} {export['policy']}, calibration "
          f"{export['calibration_method']}{agreement})", file=out)
    val, test = export["val_accuracy"], export["test_accuracy"]
    print(f"quantised    {100 * val['quantized']:.2f}% validation, {100 * test['quantized']:.2f}% test (fp32 "
          f"{100 * val['fp32']:.2f}%, {100 * test['fp32']:.2f}%); ONNX Runtime CPU 1 thread "
          f"{export['latency_ms']['quantized']:.3f} ms (fp32 {export['latency_ms']['fp32']:.3f} ms)", file=out)
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
        check_outside_run_results,
        check_quantized_export,
        export_member,
        ofa_config_of,
        open_fronts,
        query_front,
        run_calibration,
        suffixes_text,
    )
    from ..search_config import _positive_float

    if args.csv and args.json:
        raise UsageError("--csv and --json cannot be combined; give one of them (or neither for the summary)")
    _positive_float("--max-latency-ms", args.max_latency_ms)  # nan, inf and 1e400 (read as inf) too
    check_min_accuracy(args.min_accuracy)
    if args.export is not None:
        if Path(args.export).suffix not in EXPORT_SUFFIXES:
            raise UsageError(f"--export {args.export!r}: the file name must end in {suffixes_text()}")
        check_outside_run_results(args.export, args.run, "--export")
        check_writable(args.export)
    store = open_fronts(args.run)
    member = query_front(args.run, args.device, args.max_latency_ms, args.min_accuracy, store=store)
    result = {**member.to_dict(), "ofa_config": ofa_config_of(member.arch)}
    if args.export is not None:
        check_quantized_export(member, args.export)  # an int8 member to .pt/.pt2 fails before any work
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
                    "a PyTorch state dict (.pt). A member quantised under a precision policy (int8 or mixed) "
                    "exports as the quantised ONNX model, checked against its fake-quantised graph.")
    p.add_argument("run", metavar="RUN", help="the run folder")
    p.add_argument("--device", required=True, help="device id of the front to query")
    p.add_argument("--max-latency-ms", type=float, required=True,
                   help="latency budget in milliseconds, a finite number > 0")
    p.add_argument("--min-accuracy", type=float, default=None,
                   help="required validation accuracy, a fraction in [0, 1] (0.9, not 90)")
    p.add_argument("--json", action="store_true", help="machine-readable output (with the OFA config)")
    p.add_argument("--csv", action="store_true", help="the chosen subnet as a one-row CSV (columns of `nas fronts`)")
    p.add_argument("--export", metavar="FILE", default=None,
                   help="write the subnet to FILE.onnx, FILE.pt2 (torch.export) or FILE.pt (state dict); a "
                        "member with an int8 or mixed precision policy: FILE.onnx only (the quantised QDQ model); "
                        "not inside the run's checkpoints/, fronts/ or search/")
    p.set_defaults(handler=run)
