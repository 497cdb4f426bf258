"""``nas import ofa-supernet | ofa-accuracy-predictor``: Once-for-All's model-zoo files as a ready run."""

from __future__ import annotations

import argparse
import json


def supernet_cmd(args: argparse.Namespace) -> int:
    from ..ofa_zoo import import_ofa_supernet

    result = import_ofa_supernet(args.file, args.space, args.run_dir)
    if args.json:
        print(json.dumps(result.to_dict(), sort_keys=True), file=args.stdout)
    else:
        print(f"imported {result.tensors} tensors of {result.source} (sha256 {result.sha256[:16]}...) as "
              f"space {result.space}; wrote {result.checkpoint}", file=args.stdout)
    return 0


def predictor_cmd(args: argparse.Namespace) -> int:
    from ..ofa_zoo import import_ofa_accuracy_predictor

    result = import_ofa_accuracy_predictor(args.file, args.run_dir, space_name=args.space)
    if args.json:
        print(json.dumps(result.to_dict(), sort_keys=True), file=args.stdout)
    else:
        print(f"imported the accuracy predictor {result.source} (sha256 {result.sha256[:16]}...) for space "
              f"{result.space}; wrote {result.path}", file=args.stdout)
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    from ..ofa_zoo import OFA_SUPERNET_SPACES
    from . import require_subcommand

    p = subparsers.add_parser("import", help="Once-for-All model-zoo files as a ready run",
                              description="Import Once-for-All's published supernets and accuracy predictor "
                                          "into a run folder (read safely: weights only, never code).")
    sub = p.add_subparsers(dest="import_command", metavar="WHAT")
    require_subcommand(p, sub)

    s = sub.add_parser("ofa-supernet", help="a zoo supernet checkpoint as a run's trained supernet",
                       description="Map a Once-for-All model-zoo supernet checkpoint (ofa_mbv3_d234_e346_k357_w1.0 "
                                   "or _w1.2, read with weights only) onto hwnas's supernet of --space, checking "
                                   "every tensor's name and shape before anything is written. Writes DIR/"
                                   "checkpoints/supernet.pt (an ordinary trained supernet: 'nas search', 'nas "
                                   "query' and 'nas eval' use it) and DIR/import.json (the source file and its "
                                   "sha256). A run that trained its own supernet is refused; an earlier import "
                                   "is replaced (by another file only while the run holds no search results "
                                   "measured on it: study, accuracies, fronts).")
    s.add_argument("file", metavar="FILE", help="ofa_mbv3_d234_e346_k357_w1.0 or _w1.2 checkpoint")
    s.add_argument("--space", required=True, choices=OFA_SUPERNET_SPACES, help="the space of the file's width")
    s.add_argument("--run-dir", required=True, metavar="DIR", help="the run folder to write")
    s.add_argument("--json", action="store_true", help="machine-readable output")
    s.set_defaults(handler=supernet_cmd)

    a = sub.add_parser("ofa-accuracy-predictor", help="the tutorial accuracy predictor as the search's accuracy",
                       description="Convert Once-for-All's tutorial accuracy predictor (acc_predictor.pth, an MLP "
                                   "state dict, read with weights only) into hwnas's accuracy-predictor format and "
                                   "write it to DIR/search/accuracy_predictor.json (JSON), where a search with "
                                   "accuracy: predictor uses it instead of fitting its own; it scores only the "
                                   "resolutions it was trained on (160 to 224). --space must be the run's "
                                   "supernet's space; a predictor the run's search fitted is refused, an earlier "
                                   "import is replaced (by another file only while the run holds no search results "
                                   "scored with it). Files with NaN or infinite weights are refused as damaged.")
    a.add_argument("file", metavar="FILE", help="acc_predictor.pth (state dict of the tutorial's MLP)")
    a.add_argument("--run-dir", required=True, metavar="DIR", help="the run folder to write it into")
    a.add_argument("--space", default=None, choices=OFA_SUPERNET_SPACES,
                   help="space the predictor scores (default: the run's imported supernet's, else ofa_mbv3_w1.2)")
    a.add_argument("--json", action="store_true", help="machine-readable output")
    a.set_defaults(handler=predictor_cmd)
