"""``nas arch info``: describe archs of a space (string, id, params, MACs, per-stage summary)."""

from __future__ import annotations

import argparse
import json

from search_spaces import (
    Arch,
    SearchSpace,
    arch_from_string,
    arch_to_string,
    from_ofa_config,
    get_space,
    largest,
    plan,
    sample,
    smallest,
)

from ..config import check_seed
from ..errors import UsageError
from . import require_subcommand

# The keys of Once-for-All's MobileNetV3 configs: kernel sizes, expand ratios, depths, resolution.
OFA_CONFIG_KEYS = ("ks", "e", "d", "r")
# The most subnets --sample describes: each takes a few milliseconds, so this many is about half a minute.
MAX_SAMPLE = 10_000


def arch_summary(space: SearchSpace, arch: Arch) -> dict:
    """A stable, JSON-ready description of ``arch``."""
    from search_spaces import arch_counts

    counts = arch_counts(space, arch)
    net = plan(space, arch)
    stages = []
    for s, (spec, stage) in enumerate(zip(space.stages, arch.stages)):
        blocks = [b for b in net.blocks if b.stage_index == s]
        stages.append({
            "name": spec.name,
            "depth": stage.depth,
            "out_channels": blocks[0].out_channels,
            "stride": spec.stride,
            "output_size": blocks[-1].output_size,
            "op_types": [b.op_type for b in stage.blocks],
            "kernel_sizes": [b.kernel_size for b in stage.blocks],
            "expand_ratios": [b.expand_ratio for b in stage.blocks],
            "se_ratios": [b.se_ratio for b in stage.blocks],
            "skips": [b.skip for b in stage.blocks],
            "width_mult": stage.width_mult,
        })
    return {
        "space": space.name,
        "arch": arch_to_string(space, arch),
        "arch_id": arch.arch_id,
        "resolution": arch.resolution,
        "params": counts.params,
        "macs": counts.macs,
        "stages": stages,
    }


def _fmt_list(values: list) -> str:
    return ",".join(f"{v:g}" if isinstance(v, float) else str(v) for v in values)


def print_summary(info: dict) -> None:
    print(f"arch        {info['arch']}")
    print(f"id          {info['arch_id']}")
    print(f"resolution  {info['resolution']}")
    print(f"params      {info['params'] / 1e6:.3f} M")
    print(f"MACs        {info['macs'] / 1e6:.1f} M")
    print(f"  {'stage':<8} {'depth':>5} {'ch':>5} {'s':>2} {'out':>4}  {'ops':<22} {'kernels':<10} {'expand':<10} "
          f"{'se':<16} skip")
    for st in info["stages"]:
        ops = _fmt_list(st["op_types"]) if len(set(st["op_types"])) > 1 else st["op_types"][0]
        print(f"  {st['name']:<8} {st['depth']:>5} {st['out_channels']:>5} {st['stride']:>2} {st['output_size']:>4}  "
              f"{ops:<22} {_fmt_list(st['kernel_sizes']):<10} {_fmt_list(st['expand_ratios']):<10} "
              f"{_fmt_list(st['se_ratios']):<16} {_fmt_list([int(s) for s in st['skips']])}")


def select_archs(space: SearchSpace, args: argparse.Namespace) -> list[Arch]:
    chosen = [bool(args.arch), args.largest, args.smallest, args.sample is not None, bool(args.ofa_config)]
    if sum(chosen) != 1:
        raise UsageError("give exactly one of ARCH, --largest, --smallest, --sample N, --ofa-config JSON")
    if args.arch:
        return [arch_from_string(space, args.arch)]
    if args.largest:
        return [largest(space)]
    if args.smallest:
        return [smallest(space)]
    if args.ofa_config:
        try:
            config = json.loads(args.ofa_config)
        except json.JSONDecodeError as exc:
            raise UsageError(f"--ofa-config is not valid JSON: {exc.msg} at character {exc.pos}") from None
        except RecursionError:  # thousands of nested brackets: json's parser recurses per level
            raise UsageError('--ofa-config is nested too deeply; give a JSON object like {"ks": [...], "e": '
                             '[...], "d": [...]}') from None
        if not isinstance(config, dict):
            raise UsageError('--ofa-config must be a JSON object like {"ks": [...], "e": [...], "d": [...]}')
        unknown = [key for key in config if key not in OFA_CONFIG_KEYS]
        if unknown:  # a misspelt "r" would describe the space's largest resolution instead
            raise UsageError(f"--ofa-config: unknown key {unknown[0]!r}; allowed: {', '.join(OFA_CONFIG_KEYS)}")
        return [from_ofa_config(space, config)]
    if not 1 <= args.sample <= MAX_SAMPLE:
        raise UsageError(f"--sample must be >= 1 and <= {MAX_SAMPLE}, got {args.sample}")
    return sample(space, args.sample, check_seed(args.seed, "--seed"))


def run(args: argparse.Namespace) -> int:
    space = get_space(args.space)
    archs = select_archs(space, args)
    infos = [arch_summary(space, a) for a in archs]
    if args.json:
        print(json.dumps({"space": space.name, "archs": infos}, indent=2), file=args.stdout)
        return 0
    for i, info in enumerate(infos):
        if i:
            print()
        print_summary(info)
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("arch", help="describe archs of a space",
                              description="Inspect architectures of a search space.")
    sub = p.add_subparsers(dest="arch_command", metavar="SUBCOMMAND")
    info = sub.add_parser(
        "info", help="arch string, id, params, MACs and per-stage summary",
        description="Print the arch string, id, parameter count, MACs at the arch's resolution and a per-stage "
                    "summary. ARCH is an arch string such as r224/k3_e6,k5_e4/... (see `nas arch info SPACE "
                    "--largest` for the form a space uses).",
    )
    info.add_argument("space", metavar="SPACE", help="a registered space (see `nas spaces`)")
    info.add_argument("arch", metavar="ARCH", nargs="?", help="arch string")
    info.add_argument("--largest", action="store_true", help="the largest subnet")
    info.add_argument("--smallest", action="store_true", help="the smallest subnet")
    info.add_argument("--sample", type=int, metavar="N", help=f"N random subnets (1 to {MAX_SAMPLE})")
    info.add_argument("--seed", type=int, default=0, help="seed for --sample (default 0)")
    info.add_argument("--ofa-config", metavar="JSON", help='an Once-for-All config {"ks": [...], "e": [...], '
                      '"d": [...], "r": [...]} (ofa_mbv3_* spaces)')
    info.add_argument("--json", action="store_true", help="machine-readable output")
    info.set_defaults(handler=run)
    require_subcommand(p, sub)
