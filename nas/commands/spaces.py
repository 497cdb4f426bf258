"""``nas spaces``: list the registered search spaces."""

from __future__ import annotations

import argparse
import json
import math

from search_spaces import get_space, list_spaces, space_size


def space_summary(name: str) -> dict:
    space = get_space(name)
    size = space_size(space)
    return {
        "name": space.name,
        "family": space.family,
        "description": space.description,
        "num_stages": space.num_stages,
        "max_blocks": space.max_blocks,
        "resolutions": list(space.resolutions),
        "num_classes": space.num_classes,
        "num_archs_log10": round(math.log10(size), 2),
    }


def run(args: argparse.Namespace) -> int:
    rows = [space_summary(n) for n in list_spaces()]
    if args.json:
        print(json.dumps({"spaces": rows}, indent=2), file=args.stdout)
        return 0
    print(f"{'space':<16} {'family':<9} {'stages':>6} {'blocks':>6} {'resolutions':<14} {'archs':>8}  description")
    for r in rows:
        res = r["resolutions"]
        size = f"1e{r['num_archs_log10']:.1f}"
        res_text = str(res[0]) if len(res) == 1 else f"{res[0]}..{res[-1]} ({len(res)})"
        print(f"{r['name']:<16} {r['family']:<9} {r['num_stages']:>6} {r['max_blocks']:>6} {res_text:<14} "
              f"{size:>8}  {r['description']}")
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("spaces", help="list the registered search spaces",
                              description="List the registered search spaces with their size and resolutions.")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(handler=run)
