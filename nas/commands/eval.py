"""``nas eval CONFIG --arch A``: top-1 of subnets of the run's supernet (trained or imported), BN recalibrated."""

from __future__ import annotations

import argparse
import json


def _archs(space, texts: list[str]) -> list:
    from search_spaces import arch_from_string, largest, smallest

    named = {"largest": largest, "smallest": smallest}
    return [named[t](space) if t in named else arch_from_string(space, t) for t in texts]


def run(args: argparse.Namespace) -> int:
    from ..accuracy import evaluate_subnets
    from ..config import load_config
    from ..errors import UsageError
    from ..rundir import RunDir

    config = load_config(args.config)
    if args.max_images is not None and args.max_images < 1:
        raise UsageError(f"--max-images {args.max_images}: must be >= 1")
    archs = _archs(config.get_space(), args.arch)
    results = evaluate_subnets(config, RunDir.for_config(config, args.run_dir), archs, split=args.split,
                               max_images=args.max_images)
    if args.json:
        print(json.dumps([r.to_dict() for r in results], indent=2, sort_keys=True), file=args.stdout)
        return 0
    for r in results:
        bn = f"batch norms recalibrated on {r.bn_images} training images" if r.bn_images else \
            "the supernet's batch-norm statistics"
        print(f"{r.arch_string}: top-1 {100 * r.accuracy:.2f}% on {r.images} {r.split} images ({bn}; "
              f"{r.seconds:.1f} s)", file=args.stdout)
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "eval", help="top-1 of subnets of the run's supernet on the config's data",
        description="Extract each subnet from the run's supernet (trained, or imported from Once-for-All's zoo), "
                    "recalibrate its batch norms on train.bn_recal_images training images and report top-1 on a "
                    "split, in this process on train.device. With a streaming image-folder dataset (ImageNet: "
                    "dataset: {kind: folder, path: DIR, stream: true}) images are read batch by batch.")
    p.add_argument("config", metavar="CONFIG", help="experiment config (YAML) with a dataset section")
    p.add_argument("--arch", action="append", required=True, metavar="ARCH",
                   help="an arch string (see `nas arch info`), or largest / smallest; repeat for several")
    p.add_argument("--split", choices=("test", "val"), default="test",
                   help="test: the dataset's test (or val/) tree (default); val: the held-out training images")
    p.add_argument("--max-images", type=int, default=None, help="evaluate at most this many images of the split")
    p.add_argument("--run-dir", default=None, help="run folder (default: the config's, or runs/<name>)")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(handler=run)
