"""``nas latency build | import-ofa | fit | eval``: per-device lookup tables and predictors.

Device data lives under ``$HWNAS_HOME`` (default ``~/.hwnas``), read here and nowhere else.
"""

from __future__ import annotations

import argparse
import json
import math
from collections.abc import Callable
from functools import wraps

from nas.errors import UsageError

DEFAULT_OFA_SPACE = "ofa_mbv3_w1.2"
# Random draws per point of ``eval``'s accuracy curve: each refits the predictors, so far more is only slower.
MAX_DRAWS = 1_000


def _user_errors(handler: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
    """Turn the latency library's input errors into ``UsageError`` (one line, exit status 2)."""

    @wraps(handler)
    def wrapper(args: argparse.Namespace) -> int:
        from latency_predictors import LatencyError

        try:
            return handler(args)
        except LatencyError as exc:
            raise UsageError(str(exc)) from None

    return wrapper


def _store(args: argparse.Namespace):
    """The device store of ``--home`` / ``$HWNAS_HOME``, refused at once when it cannot be written."""
    from latency_predictors import DeviceStore, default_root

    store = DeviceStore(default_root(args.home))
    store.check_writable()
    return store


def _space(name: str):
    from search_spaces import get_space

    return get_space(name)


def _resolutions(space, values: list[int] | None) -> tuple[int, ...] | None:
    if not values:
        return None
    bad = [r for r in values if r not in space.resolutions]
    if bad:
        raise UsageError(f"resolutions {bad} are not in space {space.name!r}; allowed: "
                         f"{', '.join(map(str, space.resolutions))}")
    return tuple(sorted(set(values)))


def _local_device(store, device_id: str, backend: str | None = None, clock: str = "wall"):
    """The device to measure on, saved (with this machine's facts) only once every check has passed.
    ``--backend`` names the backend of a device whose id does not follow the local grammar (``lab-server``);
    for a grammar id it must agree with the id."""
    from latency_predictors import BACKENDS, Device, UnknownDeviceError, parse_device_id

    if backend is not None and backend not in BACKENDS:
        raise UsageError(f"unknown backend {backend!r}; allowed: {', '.join(BACKENDS)}")
    parsed = parse_device_id(device_id)
    if backend is not None and parsed is not None and parsed.backend != backend:
        raise UsageError(f"device {device_id!r} runs {parsed.backend}, not {backend}; name the device after "
                         f"its backend (e.g. local-cpu-1t-ort / local-cpu-1t-torch)")
    try:
        device = store.find(device_id)  # nothing saved before the checks below
    except UnknownDeviceError:
        if backend is None:
            raise
        device = Device(id=device_id, backend=backend)
    if not device.is_local:
        raise UsageError(f"device {device_id!r} has no local backend (imported data); measure on a local "
                         f"device such as local-cpu-1t-ort")
    if clock == "thread_cpu" and device.threads != 1:
        raise UsageError(f"--clock thread_cpu needs a one-thread device; {device.id!r} has {device.threads}")
    return store.refresh_metadata(device)  # refuses hardware this machine lacks, then saves


def _measured_device(args: argparse.Namespace, store, backend: str | None = None):
    return _local_device(store, args.device, backend, args.clock)


def _config(args: argparse.Namespace):
    """The measurement protocol of the flags; called before the device is recorded, so bad flags change nothing."""
    from latency_predictors import MeasureConfig

    from ..latency_config import INT_RANGES

    for flag, value in (("repeats", args.repeats), ("warmup", args.warmup)):
        low, high = INT_RANGES[flag]  # the config's latency.repeats / latency.warmup range
        if not low <= value <= high:
            raise UsageError(f"--{flag} must be >= {low} and <= {high}; got {value}")
    if not 0 < args.quantile <= 0.5:
        raise UsageError(f"--quantile must be in (0, 0.5] (got {args.quantile})")
    if not (math.isfinite(args.noise_threshold) and args.noise_threshold >= 0):
        raise UsageError(f"--noise-threshold must be a finite number >= 0, a spread (IQR/median) such as 0.05 "
                         f"(got {args.noise_threshold})")
    return MeasureConfig(warmup=args.warmup, repeats=args.repeats, noise_threshold=args.noise_threshold,
                         quantile=args.quantile, load_reference=args.load_reference, clock=args.clock)


@_user_errors
def build_cmd(args: argparse.Namespace) -> int:
    from latency_predictors import build_table, configure_allocator
    from latency_predictors.remote import table_measurer

    from ..latency_builders import quantized_layer_measure, static_builder

    configure_allocator()
    space = _space(args.space)
    config = _config(args)
    resolutions = _resolutions(space, args.resolutions)
    precisions = _precisions(args.precisions)
    store = _store(args)
    if precisions != ("fp32",):
        _check_quantized_backend(store, args.device, args.backend, precisions)
    with store.recording(args.device):  # a build that fails before its first entry registers nothing
        device = _measured_device(args, store, args.backend)
        path = store.table_path(device.id, space.name)
        where = ""
        if "fp32" in precisions:
            with table_measurer(space, static_builder(), device, config,
                                use_ray=False if args.no_ray else None) as measure:
                table = build_table(space, device, path, measure, resolutions=resolutions, protocol=config,
                                    lock_path=store.lock_path(device.id), progress=args.progress)
            where = f" (measured on Ray node {measure.node_id})" if getattr(measure, "node_id", None) else ""
        for precision in precisions:
            if precision != "fp32":  # timed in this process: the layer is quantised where it is timed
                measure = quantized_layer_measure(space, device, config, precision)
                table = build_table(space, device, path, measure, resolutions=resolutions, protocol=config,
                                    lock_path=store.lock_path(device.id), progress=args.progress,
                                    precision=precision)
    layers = len({key.split("@")[0] for key in table.entries})
    counts = "" if table.precisions == ("fp32",) else " (entries: " + ", ".join(
        f"{sum(1 for e in table.entries.values() if e.get('precision', 'fp32') == p)} {p}"
        for p in table.precisions) + ")"
    print(f"table of {space.name} on {device.id}: {layers} layers{counts}, resolutions "
          f"{', '.join(map(str, table.resolutions))} -> {path}{where}")
    return 0


def _precisions(values: list[str] | None) -> tuple[str, ...]:
    from search_spaces import PRECISIONS

    chosen = tuple(dict.fromkeys(values or ["fp32"]))
    bad = [p for p in chosen if p not in PRECISIONS]
    if bad:
        raise UsageError(f"precisions {bad} are not allowed; allowed: {', '.join(PRECISIONS)}")
    return chosen


def _check_quantized_backend(store, device_id: str, backend: str | None, precisions: tuple[str, ...],
                             flag: str = "--precisions") -> None:
    """Only ONNX Runtime on the CPU times quantised layers: refuse any other device before measuring anything
    (and before the device is recorded)."""
    from latency_predictors import UnknownDeviceError, parse_device_id

    parsed = parse_device_id(device_id)
    if parsed is not None:
        runs, accelerator = parsed.backend, getattr(parsed, "accelerator", "cpu")
    else:
        try:
            known = store.resolve(device_id)
            runs, accelerator = known.backend, known.accelerator
        except UnknownDeviceError:
            if backend is None:
                return  # an unknown id without --backend: _local_device refuses it, naming the known ones
            runs, accelerator = backend, "cpu"
    quantized = ", ".join(p for p in precisions if p != "fp32")
    if runs != "onnxruntime" or accelerator != "cpu":
        where = f"{runs}" + ("" if accelerator == "cpu" else f" on {accelerator}")
        raise UsageError(f"{flag} {quantized}: quantised layers are timed only by ONNX Runtime on the CPU "
                         f"(a local-...-ort device); {device_id!r} runs {where}")


def _check_import_target(store, device_id: str, space_name: str) -> None:
    """OFA tables were timed elsewhere, so they go under a device of their own: refuse an id of this machine's
    devices (the local grammar, or a stored device with a backend) and a table that no OFA import wrote (the
    measured numbers would be lost). Called before the YAML files are read."""
    from latency_predictors import LookupTable, UnknownDeviceError, parse_device_id
    from latency_predictors.ofa_import import OFA_SOURCE

    store.device_dir(device_id)  # checks the id
    try:
        local = parse_device_id(device_id) is not None
    except UnknownDeviceError:  # the local grammar with a backend or hardware word no local device has
        local = True
    if not local:
        try:
            local = store.get(device_id).is_local
        except UnknownDeviceError:
            pass
    if local:
        raise UsageError(f"device {device_id!r} is a local device (measured on this machine); OFA tables were "
                         f"timed elsewhere, so import them under another device id, e.g. note10")
    path = store.table_path(device_id, space_name)
    if path.exists():
        source = LookupTable.load(path).source
        if source != OFA_SOURCE:
            raise UsageError(f"device {device_id!r} already has a {source} table of {space_name!r} ({path}), "
                             f"which an import would replace: import the OFA tables under another device id, "
                             f"e.g. note10")


@_user_errors
def import_ofa_cmd(args: argparse.Namespace) -> int:
    from latency_predictors import Device, UnknownDeviceError, import_ofa_tables

    space = _space(args.space)
    store = _store(args)
    _check_import_target(store, args.device, space.name)
    try:
        device, known = store.get(args.device), True
    except UnknownDeviceError:
        device, known = Device(id=args.device, backend=None).with_metadata(
            {"source": "Once-for-All lookup tables", "imported_from": str(args.directory)}), False
    table = import_ofa_tables(args.directory, space, device)
    if not known:  # registered only once its tables were read
        store.save(device)
    path = store.table_path(device.id, space.name)
    table.save(path)  # atomic: the earlier import stays whole until the new one is written
    note = "" if table.complete else " (incomplete: some layers have no OFA entry)"
    print(f"imported {len(table.entries)} layers of {space.name} at resolutions "
          f"{', '.join(map(str, table.resolutions))} for device {device.id}{note} -> {path}")
    return 0


def _check_count(flag: str, value: int, low: int, high: int | None = None) -> None:
    """Refuse a count outside ``[low, high]``; ``high`` defaults to the config's ``latency.fit_samples`` bound, so
    a slip (10**15 subnets) is refused instead of starting measurements that never end."""
    from ..latency_config import INT_RANGES

    high = INT_RANGES["fit_samples"][1] if high is None else high
    if not low <= value <= high:
        raise UsageError(f"{flag} must be at least {low} and at most {high} (got {value})")


def _sampling_setup(args: argparse.Namespace):
    """Space, protocol, resolutions and store of ``fit`` / ``eval`` (which time ``--samples`` whole subnets), the
    flags checked before anything is written; the device comes after the command's own checks."""
    space = _space(args.space)
    _check_count("--samples", args.samples, 3)
    config = _config(args)
    resolutions = _resolutions(space, args.resolutions)
    return space, config, resolutions, _store(args)


@_user_errors
def fit_cmd(args: argparse.Namespace) -> int:
    from latency_predictors.workflow import fit_device, format_fit, source_predictors

    from ..config import check_seed
    from ..latency_builders import static_builder

    space, config, resolutions, store = _sampling_setup(args)
    check_seed(args.seed, "--seed")
    if args.from_kind is not None and args.source is None:
        raise UsageError("--from-kind needs --from DEVICE")
    if args.source is not None:  # read only: refused before this device is recorded (fit_device checks again)
        if args.source == args.device:
            raise UsageError(f"--from names the device being fitted ({args.device!r}); name another device")
        source_predictors(store, args.source, space, args.from_kind, args.device)
    with store.recording(args.device):  # a fit that fails before its first measurement registers nothing
        device = _measured_device(args, store)
        report = fit_device(store, device, space, static_builder(), args.samples, config,
                            resolutions=resolutions, use_ray=not args.no_ray,
                            progress=args.progress, seed=args.seed, choose=args.choose, source=args.source,
                            source_kind=args.from_kind)
    if args.json:
        print(json.dumps({**report.to_dict(), "folder": str(store.predictor_dir(device.id, space.name))},
                         indent=2), file=args.stdout)
    else:
        print(f"{format_fit(report)}\n-> {store.predictor_dir(device.id, space.name)}", file=args.stdout)
    return 0


@_user_errors
def eval_cmd(args: argparse.Namespace) -> int:
    from latency_predictors import evaluate_predictors, format_report

    from ..latency_builders import static_builder

    space, config, resolutions, store = _sampling_setup(args)
    _check_count("--draws", args.draws, 1, MAX_DRAWS)
    if args.precision != "fp32":
        _check_count("--fit-samples", args.fit_samples, 3)
        _check_quantized_backend(store, args.device, None, (args.precision,), flag="--precision")
    with store.recording(args.device):  # an eval that fails before its first measurement registers nothing
        device = _measured_device(args, store)
        if args.precision != "fp32":
            return _eval_quantized(args, space, config, resolutions, store, device)
        report = evaluate_predictors(store, device, space, static_builder(), args.samples, config,
                                     resolutions=resolutions, use_ray=not args.no_ray,
                                     progress=args.progress, curve_draws=args.draws)
    print(json.dumps(report.to_dict(), indent=2) if args.json else format_report(report), file=args.stdout)
    return 0


def _eval_quantized(args: argparse.Namespace, space, config, resolutions, store, device) -> int:
    from latency_predictors.workflow import evaluate_quantized, format_quantized_report

    from ..quantize import QUANTIZER_ID, quantized_subnet_model

    if not device.times_quantized:
        raise UsageError(f"--precision {args.precision}: quantised subnets are timed only by ONNX Runtime on the "
                         f"CPU (a local-...-ort device); {device.id!r} runs {device.backend}")
    report = evaluate_quantized(store, device, space, lambda s, a, p: quantized_subnet_model(s, a, p),
                                args.samples, config, precision=args.precision,
                                resolutions=resolutions, fit_n=args.fit_samples,
                                progress=args.progress, quantizer=QUANTIZER_ID)
    print(json.dumps(report.to_dict(), indent=2) if args.json else format_quantized_report(report),
          file=args.stdout)
    return 0


def _common(p: argparse.ArgumentParser, measuring: bool = True) -> None:
    p.add_argument("--space", required=True, help="search space (see 'nas spaces')")
    p.add_argument("--device", required=True, help="device id, e.g. local-cpu-1t-ort")
    p.add_argument("--home", default=None, help="device data folder (default $HWNAS_HOME or ~/.hwnas)")
    if measuring:
        p.add_argument("--resolutions", type=int, nargs="+", default=None,
                       help="restrict to these input resolutions (default: all of the space)")
        from latency_predictors import MeasureConfig

        protocol = MeasureConfig()  # the defaults live there (a config's latency section shares them)
        p.add_argument("--repeats", type=int, default=protocol.repeats,
                       help=f"timed runs per measurement (default {protocol.repeats})")
        p.add_argument("--warmup", type=int, default=protocol.warmup,
                       help=f"untimed runs first (default {protocol.warmup})")
        p.add_argument("--noise-threshold", type=float, default=protocol.noise_threshold,
                       help=f"re-measure above this spread, IQR/median (default {protocol.noise_threshold})")
        p.add_argument("--quantile", type=float, default=protocol.quantile,
                       help="quantile of the timed runs reported as latency (default 0.5, the median; "
                            "0.1-0.25 is more repeatable on a shared machine)")
        p.add_argument("--load-reference", action="store_true",
                       help="time a fixed reference workload beside each measurement and scale by it "
                            "(cancels slow-downs from other work on a shared machine)")
        p.add_argument("--clock", choices=("wall", "thread_cpu"), default="wall",
                       help="wall: elapsed time (default); thread_cpu: CPU time of the inference thread, "
                            "for one-thread devices on a machine shared with other work")


def register(subparsers: argparse._SubParsersAction) -> None:
    from . import require_subcommand

    p = subparsers.add_parser("latency", help="per-device lookup tables and latency predictors",
                              description="Measure lookup tables, import OFA tables, fit and evaluate "
                                          "latency predictors. Data goes to $HWNAS_HOME (default ~/.hwnas).")
    sub = p.add_subparsers(dest="latency_command", metavar="ACTION")
    require_subcommand(p, sub)

    b = sub.add_parser("build", help="measure a lookup table (here, or on the Ray node offering the device)",
                       description="Measure every layer the space can produce on the device. When a Ray cluster is "
                                   "named (RAY_ADDRESS) or running (`ray start`), the layers are timed on its node "
                                   "offering the resource device:<id> (a board joins with `ray start --address HEAD "
                                   "--resources '{\"device:<id>\": 1}'`); otherwise in this process. The table is "
                                   "saved here as it grows; running the command again resumes it.")
    _common(b)
    b.add_argument("--no-ray", action="store_true", help="measure in this process even when a Ray cluster runs")
    b.add_argument("--backend", default=None,
                   help="backend of a device whose id does not name one (torch, onnxruntime, torch_compile); "
                        "local-... ids carry their own")
    b.add_argument("--precisions", nargs="+", default=None, metavar="P",
                   help="precisions to measure each layer in: fp32 (default) and/or int8 (ONNX Runtime QDQ, as "
                        "'nas quantize' quantises; onnxruntime devices only); int8 entries are timed in this process")
    b.set_defaults(handler=build_cmd)

    i = sub.add_parser("import-ofa", help="read Once-for-All YAML lookup tables",
                       description="Read Once-for-All's per-resolution lookup tables (<resolution>_lookup_table.yaml, "
                                   "timed on a phone or board elsewhere) and store them as the lookup table of "
                                   "--space on the device --device, an id of its own such as note10 (not a "
                                   "local-... id of this machine). Writes devices/<id>/device.json and "
                                   "devices/<id>/tables/<space>.json under $HWNAS_HOME (default ~/.hwnas); an "
                                   "earlier import of the same tables is replaced, nothing is recorded when the "
                                   "files cannot be read.")
    i.add_argument("directory", help="folder with <resolution>_lookup_table.yaml files")
    i.add_argument("--device", required=True, help="id to store the tables under, e.g. note10")
    i.add_argument("--space", default=DEFAULT_OFA_SPACE, help=f"space the tables describe ({DEFAULT_OFA_SPACE})")
    i.add_argument("--home", default=None, help="device data folder (default $HWNAS_HOME or ~/.hwnas)")
    i.set_defaults(handler=import_ofa_cmd)

    for name, handler, default_n, text, description in (
            ("fit", fit_cmd, 100, "learned predictors from measured subnets",
             "Measure --samples whole subnets of the space end to end on the device (on the Ray node offering "
             "device:<id> unless --no-ray; earlier measurements are reused) and fit every latency predictor kind "
             "the data allows, starting from the device's lookup table where it has one. Writes "
             "devices/<id>/measurements/<space>.json and devices/<id>/predictors/<space>/<kind>.json under "
             "$HWNAS_HOME (default ~/.hwnas), and prints each predictor's cross-validated accuracy."),
            ("eval", eval_cmd, 50, "predictor accuracy against fresh measurements",
             "Measure --samples fresh subnets (none the predictors were fitted on) twice each on the device and "
             "report how well the device's saved predictors and lookup table predict them (error, rank "
             "correlation, accuracy against the number of training subnets, the repeatability floor). Writes "
             "devices/<id>/eval/<space>.csv, .png and .json under $HWNAS_HOME (default ~/.hwnas); needs a "
             "table or predictors ('nas latency build' or 'fit') first.")):
        f = sub.add_parser(name, help=text, description=description)
        _common(f)
        f.add_argument("--samples", type=int, default=default_n, help=f"subnets to measure (default {default_n})")
        f.add_argument("--no-ray", action="store_true", help="measure in this process instead of a Ray task")
        f.add_argument("--json", action="store_true", help="machine-readable output (pure JSON)")
        if name == "fit":
            f.add_argument("--from", dest="source", default=None, metavar="DEVICE",
                           help="also fit a 'transfer' predictor that starts from this other device's "
                                "predictors and table (each weighed by how well it explains this device's "
                                "samples, plus a share of the MACs where that fits), and spread the subnets by "
                                "its best-ranked prediction")
            f.add_argument("--from-kind", default=None, metavar="KIND",
                           help="start from this one of the --from device's predictors only (default: all of "
                                "them, weighed)")
            f.add_argument("--choose", choices=("active", "random"), default="active",
                           help="active (default): subnets spread over the prior's latency range and the "
                                "choices; random: seeded random subnets")
            f.add_argument("--seed", type=int, default=0, help="seed of the subnets chosen (default 0)")
        else:
            f.add_argument("--draws", type=int, default=5,
                           help="random draws of the training subnets per point of the accuracy curve (default 5)")
            f.add_argument("--precision", choices=("fp32", "int8", "mixed"), default="fp32",
                           help="fp32 (default); int8 / mixed: subnets quantised as 'nas quantize' does (uniform "
                                "int8, or random per-group policies) and timed end to end by ONNX Runtime in this "
                                "process; needs a table with int8 entries ('nas latency build --precisions fp32 int8')")
            f.add_argument("--fit-samples", type=int, default=20,
                           help="with --precision int8|mixed: other quantised subnets the table's corrections "
                                "(table_linear, residual) are fitted on (default 20)")
        f.set_defaults(handler=handler)
