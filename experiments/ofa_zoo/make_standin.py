"""Write stand-ins for Once-for-All's zoo files: the w1.2 supernet in the zoo's exact format, random weights.

The real ``ofa_mbv3_d234_e346_k357_w1.2`` checkpoint and ``acc_predictor.pth`` cannot be downloaded on the
machines this project is built on; ``../shared/data/ofa_zoo_format`` holds only the w1.0 format (written by
Once-for-All's own code) and the predictor. This script writes what ``experiments/ofa_zoo_*.yaml`` import:

- ``OUT/ofa_mbv3_d234_e346_k357_w1.2.pth``: ``{"state_dict": ...}`` under Once-for-All's tensor names
  (``nas.ofa_zoo.to_ofa_state_dict``, the inverse of the importer's mapping, tested to reproduce the w1.0
  file exactly), from hwnas's w1.2 supernet after ``torch.manual_seed(seed)``, every batch norm given random
  statistics and affine terms as in the shared w1.0 file;
- ``OUT/acc_predictor.pth``: the shared random-weight predictor (the tutorial's format) with its output
  layer halved and 0.7 added to its bias: its own outputs lie around 0 (-0.1 to +0.05 on the shared
  configs, up to +0.3 where a search pushes), which no accuracy does (the search refuses accuracies outside
  [0, 1]); rescaled they lie around 0.55-0.85, as the real predictor's do.

A user with the real files puts them at the same paths (or edits the configs) and skips this script.

    python experiments/ofa_zoo/make_standin.py --out runs/ofa_zoo_files
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

SUPERNET_NAME = "ofa_mbv3_d234_e346_k357_w1.2.pth"
PREDICTOR_NAME = "acc_predictor.pth"
DEFAULT_ZOO = Path(os.environ.get("HWNAS_OFA_ZOO_DIR", REPO.parent / "shared" / "data" / "ofa_zoo_format"))


def write_supernet(out: Path, seed: int) -> Path:
    import torch
    from torch import nn

    from nas.io import atomic_write_bytes
    from nas.ofa_zoo import to_ofa_state_dict
    from search_spaces import get_space
    from supernets import build_supernet

    torch.manual_seed(seed)
    space = get_space("ofa_mbv3_w1.2")
    net = build_supernet(space)
    with torch.no_grad():
        for module in net.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.running_mean.normal_(0.0, 0.1)
                module.running_var.uniform_(0.5, 1.5)
                module.weight.uniform_(0.5, 1.5)
                module.bias.normal_(0.0, 0.1)
    import io

    buffer = io.BytesIO()
    torch.save({"state_dict": to_ofa_state_dict(space, net.state_dict())}, buffer)
    return atomic_write_bytes(out / SUPERNET_NAME, buffer.getvalue())


def write_predictor(out: Path, source: Path, scale: float = 0.5, shift: float = 0.7) -> Path:
    import io

    import torch

    from nas.io import atomic_write_bytes

    state = torch.load(source, map_location="cpu", weights_only=True)
    state["6.weight"] = state["6.weight"] * scale
    state["6.bias"] = state["6.bias"] * scale + shift
    buffer = io.BytesIO()
    torch.save(state, buffer)
    return atomic_write_bytes(out / PREDICTOR_NAME, buffer.getvalue())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("runs/ofa_zoo_files"), help="folder to write into")
    parser.add_argument("--predictor", type=Path, default=DEFAULT_ZOO / "acc_predictor_random.pth",
                        help="the predictor file to copy (default: the shared random-weight one)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if not args.predictor.is_file():
        parser.error(f"{args.predictor} does not exist (set HWNAS_OFA_ZOO_DIR or pass --predictor)")
    args.out.mkdir(parents=True, exist_ok=True)
    supernet = write_supernet(args.out, args.seed)
    predictor = write_predictor(args.out, args.predictor)
    print(f"wrote {supernet} and {predictor}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
