"""``nas train CONFIG``: train the experiment's supernet on Ray (or in process); resumes by itself, never retrains."""

from __future__ import annotations

import argparse
import dataclasses
from typing import Any

from supernets.training.device import DEVICES

from ..config import load_config
from ..rundir import RunDir


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "train", help="train the supernet (progressive shrinking or sandwich rule); resumes by itself",
        description="Train the experiment's supernet on Ray Train. Running it again after an interruption "
                    "continues from the last finished epoch; a finished run is not trained again.")
    parser.add_argument("config", help="experiment config (YAML)")
    parser.add_argument("--run-dir", help="run folder (default: the config's run_dir, else runs/<name>)")
    parser.add_argument("--epochs-scale", type=float, help="multiply every phase's epochs (a new run)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument("--no-ray", action="store_true",
                        help="train in this process on one device, without Ray (same checkpoints and resume; "
                             "the config's ray.enabled: false does the same)")
    parser.add_argument("--device", choices=DEVICES,
                        help="override train.device (auto: CUDA when available; a run resumes on any device)")
    parser.set_defaults(handler=_handle)


def _handle(args: argparse.Namespace) -> int:
    from ..training import train

    config = load_config(args.config, epochs_scale=args.epochs_scale)
    if args.no_ray:
        config = dataclasses.replace(config, ray=dataclasses.replace(config.ray, enabled=False))
    if args.device:
        config = dataclasses.replace(config, train=dataclasses.replace(config.train, device=args.device))
    train(config, RunDir.for_config(config, args.run_dir), progress=args.progress, verbose=args.verbose,
          quiet=args.quiet)
    return 0


