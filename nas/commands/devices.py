"""``nas devices``: devices with lookup tables and predictors, and their metadata."""

from __future__ import annotations

import argparse
import json


def run(args: argparse.Namespace) -> int:
    from latency_predictors import DeviceStore, default_root

    store = DeviceStore(default_root(args.home))
    rows = store.describe()  # the command line turns its LatencyError into one line
    if args.json:
        print(json.dumps({"root": str(store.root), "devices": rows}, indent=2), file=args.stdout)
        return 0
    if not rows:
        print(f"no devices under {store.root} yet; measure one with 'nas latency build --space S "
              f"--device local-cpu-1t-ort' or import one with 'nas latency import-ofa DIR --device ID'")
        return 0
    print(f"{'device':<22} {'backend':<12} {'thr':>3} {'batch':>5}  {'tables':<32} predictors")
    for r in rows:
        predictors = "; ".join(f"{space}: {', '.join(kinds)}" for space, kinds in r["predictors"].items())
        print(f"{r['id']:<22} {r['backend'] or '-':<12} {r['threads']:>3} {r['batch_size']:>5}  "
              f"{', '.join(r['tables']) or '-':<32} {predictors or '-'}")
        meta = r["metadata"]
        if meta:
            facts = ", ".join(f"{k}={meta[k]}" for k in ("gpu_name", "cuda", "cpu_model", "cpu_count", "host", "torch",
                                                         "onnxruntime", "date", "source") if k in meta)
            print(f"{'':<22} {facts}")
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("devices", help="devices with lookup tables / predictors and their metadata",
                              description="List the devices under $HWNAS_HOME (default ~/.hwnas).")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.add_argument("--home", default=None, help="device data folder (default $HWNAS_HOME or ~/.hwnas)")
    p.set_defaults(handler=run)
