"""``nas query RUN --device D --max-latency-ms X``: the most accurate subnet within a budget, and its export."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from ..errors import UsageError


def calibration_for_run(store, resolution: int):
    """BN-recalibration batches from the run's dataset (recorded in its front store by the search), or
    None when the run recorded no dataset."""
    dataset = store.get_meta("dataset")
    if not dataset:
        return None
    from ..data import DatasetConfig, load_dataset

    data = load_dataset(DatasetConfig(**dataset), resolution, seed=int(store.get_meta("data_seed", 0) or 0))
    images = int(store.get_meta("bn_images", 2000) or 2000)
    return data.calibration_batches(images, 200, 0)


def run(args: argparse.Namespace) -> int:
    from ..io import check_writable
    from ..query import EXPORT_SUFFIXES, check_min_accuracy, export_member, open_fronts, query_front

    check_min_accuracy(args.min_accuracy)
    if args.export is not None:
        if Path(args.export).suffix not in EXPORT_SUFFIXES:
            raise UsageError(f"--export {args.export!r}: the file name must end in {' or '.join(EXPORT_SUFFIXES)}")
        check_writable(args.export)
    store = open_fronts(args.run)
    member = query_front(args.run, args.device, args.max_latency_ms, args.min_accuracy, store=store)
    result = member.to_dict()
    if args.export is not None:
        result["export"] = export_member(member, args.export,
                                         calibration=calibration_for_run(store, member.arch.resolution))
    if args.json:
        print(json.dumps(result, indent=2, sort_keys=True), file=args.stdout)
        return 0
    measured = "measured" if member.measured_latency_ms is not None else "predicted"
    test = "n/a" if member.test_accuracy is None else f"{100 * member.test_accuracy:.2f}%"
    print(f"device       {member.device}")
    print(f"arch         {member.arch_string}")
    print(f"arch id      {member.arch_id}")
    print(f"latency      {member.latency_ms:.3f} ms ({measured}; predicted {member.predicted_latency_ms:.3f} ms)")
    print(f"accuracy     {100 * member.val_accuracy:.2f}% validation, {test} test")
    print(f"size         {member.params / 1e6:.2f} M params, {member.macs / 1e6:.1f} M MACs")
    if "export" in result:
        extra = f" (ONNX vs PyTorch max abs diff {result['export']['max_abs_diff']:.2e})" \
            if "max_abs_diff" in result["export"] else ""
        print(f"exported     {result['export']['path']}{extra}")
        if result["export"]["batch_norm"] != "recalibrated":
            print("batch norms  the supernet's statistics (the run has no dataset to recalibrate them on)")
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "query", help="the most accurate subnet of a run within a latency budget",
        description="Pick the most accurate subnet of a run's front for DEVICE within the latency budget; "
                    "optionally export it (ONNX checked against PyTorch, or a PyTorch state dict).")
    p.add_argument("run", metavar="RUN", help="the run folder")
    p.add_argument("--device", required=True, help="device id of the front to query")
    p.add_argument("--max-latency-ms", type=float, required=True, help="latency budget in milliseconds")
    p.add_argument("--min-accuracy", type=float, default=None,
                   help="required validation accuracy, a fraction in [0, 1] (0.9, not 90)")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.add_argument("--export", metavar="FILE", default=None, help="write the subnet to FILE.onnx or FILE.pt")
    p.set_defaults(handler=run)
