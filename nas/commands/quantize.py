"""``nas quantize CONFIG --arch A [--policy P | --max-loss POINTS] --out FILE.onnx``: a subnet of the run's
supernet quantised to int8 (per layer group) through ONNX Runtime, measured against fp32 and written."""

from __future__ import annotations

import argparse
import json
import warnings
from pathlib import Path

from ..errors import UsageError


def _print_report(report, out) -> None:
    method = report.method
    tried = ", ".join(f"{m} {100 * a:.2f}%" for m, a in method.accuracy.items())
    print(f"arch         {report.arch_string}", file=out)
    print(f"policy       {report.policy} ({report.how})", file=out)
    if report.search is not None:
        search = report.search
        order = ", ".join(s.group for s in sorted(search.sensitivities, key=lambda s: s.kl))
        print(f"sensitivity  least to most sensitive (output KL, one group int8): {order}", file=out)
        for c in search.candidates:
            print(f"  candidate  {c.policy}  val top-1 {100 * c.accuracy:.2f}% ({c.loss_points:+.2f} points)  "
                  f"{c.latency_ms:.3f} ms", file=out)
    print(f"calibration  {method.method} (uniform int8 top-1 on {method.images}: {tried})", file=out)
    for split, values in (("val", report.val_accuracy), ("test", report.test_accuracy)):
        loss = 100 * (values["fp32"] - values["quantized"])
        print(f"{split + ' top-1':<13}{100 * values['quantized']:.2f}% quantised, {100 * values['fp32']:.2f}% fp32 "
              f"({loss:+.2f} points lost)", file=out)
    fp32_ms, quant_ms = report.latency_ms["fp32"], report.latency_ms["quantized"]
    print(f"latency      {quant_ms:.3f} ms quantised, {fp32_ms:.3f} ms fp32 ({fp32_ms / quant_ms:.2f}x; ONNX Runtime "
          f"CPU, 1 thread, batch 1)", file=out)
    check = report.fake_quant_check
    if "allowed" in check:
        print(f"check        int8 kernels vs fake-quantised graph: mean logit difference {check['mean_abs_diff']:.3g} "
              f"(allowed {check['allowed']:.3g}), top-1 agreement {100 * check['top1_agreement']:.1f}%", file=out)
    print(f"written      {report.path}", file=out)


def run(args: argparse.Namespace) -> int:
    from latency_predictors.measure import NoisyMeasurementWarning
    from search_spaces import arch_from_string, largest, smallest

    from ..config import load_config
    from ..io import check_writable
    from ..quantize import check_calibration_count, check_max_loss, prepare_subnet, quantize_subnet
    from ..query import check_outside_run_results
    from ..rundir import RunDir

    if Path(args.out).suffix != ".onnx":
        raise UsageError(f"--out {args.out!r}: the file name must end in .onnx")
    if args.policy is not None and args.max_loss is not None:
        raise UsageError("give --policy or --max-loss, not both")
    if args.max_loss is not None:
        check_max_loss(args.max_loss)
    check_calibration_count(args.calibration_images)
    config = load_config(args.config)
    space = config.get_space()
    named = {"largest": largest, "smallest": smallest}
    arch = named[args.arch](space) if args.arch in named else arch_from_string(space, args.arch)
    if args.policy is not None:  # a bad policy fails before any work
        from search_spaces import policy_from_string

        policy_from_string(space, args.policy, arch)
    run_dir = RunDir.for_config(config, args.run_dir)
    check_outside_run_results(args.out, run_dir, "--out")
    check_writable(args.out)
    with warnings.catch_warnings():  # the protocol retries a noisy series and keeps the best; no warning here
        warnings.simplefilter("ignore", NoisyMeasurementWarning)
        prepared = prepare_subnet(config, run_dir, arch,
                                  calibration=args.calibration_images, max_images=args.max_images)
        report = quantize_subnet(prepared, args.out, policy=args.policy, max_loss_points=args.max_loss,
                                 method=args.method, granularity=args.granularity)
    if args.json:
        print(json.dumps(report.to_dict(), indent=2, sort_keys=True), file=args.stdout)
    else:
        _print_report(report, args.stdout)
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "quantize", help="a subnet quantised to int8 (per layer group) in ONNX Runtime",
        description="Extract a subnet of the run's supernet, recalibrate its batch norms, and quantise it with "
                    "ONNX Runtime's static quantisation (QDQ: int8 weights per channel, 8-bit activations) "
                    "calibrated on training images. A precision policy (p:STEM,STAGE...,HEAD, letters f = fp32 "
                    "and i = int8, one per stage or one per block) says which groups are int8; --max-loss finds "
                    "the fastest policy within an accuracy-loss bound. Reports validation and test top-1 and "
                    "latency (ONNX Runtime CPU, 1 thread) against fp32, and writes the model (input: RGB in "
                    "[0, 1], normalisation inside).")
    p.add_argument("config", metavar="CONFIG", help="experiment config (YAML) with a dataset section")
    p.add_argument("--arch", required=True, metavar="ARCH",
                   help="an arch string (see `nas arch info`), or largest / smallest")
    group = p.add_mutually_exclusive_group()
    group.add_argument("--policy", default=None, metavar="P",
                       help="precision policy, e.g. p:f,i,i,i,i,i,f (default: every group int8)")
    group.add_argument("--max-loss", type=float, default=None, metavar="POINTS",
                       help="the fastest policy whose validation top-1 is at most POINTS percentage points "
                            "below fp32")
    p.add_argument("--out", required=True, metavar="FILE.onnx", help="where to write the quantised model")
    p.add_argument("--method", default="auto", choices=("auto", "minmax", "entropy", "percentile"),
                   help="calibration method (auto: the most accurate on the validation split)")
    p.add_argument("--granularity", default="stage", choices=("stage", "block"),
                   help="the groups --max-loss switches: whole stages or single blocks")
    p.add_argument("--calibration-images", type=int, default=256, metavar="N",
                   help="training images to calibrate activation ranges on")
    p.add_argument("--max-images", type=int, default=None, metavar="N",
                   help="evaluate on at most N images of the validation and test splits")
    p.add_argument("--run-dir", default=None, help="run folder (default: the config's, or runs/<name>)")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(handler=run)
