"""A lossless, compact copy of part of CIFAR-10 small enough to travel with the code to a GPU machine.

A call to the lent GPU machine carries at most 64 MiB, and CIFAR-10's npz shards take 28 MB per 10,000
images. Packed here, an image takes about 56% of its raw size: the colour channels are decorrelated
(R-G, G, B-G, modulo 256), each channel is replaced by its two-dimensional difference
(x[i,j] - x[i-1,j] - x[i,j-1] + x[i-1,j-1], modulo 256), and the residuals are compressed with LZMA.
Unpacking is two cumulative sums and exact: the test checks the round trip bit for bit.

    python experiments/benchmarks/cifar_pack.py ../shared/data/cifar10 .gpu_data --train 30000 --test 5000

writes ``train.hwpack.npz`` and ``test.hwpack.npz``; ``unpack_folder`` turns them back into the npz shards
``nas.data`` reads (``train_0.npz``, ``test.npz``).
"""

from __future__ import annotations

import argparse
import lzma
from pathlib import Path

import numpy as np

SUFFIX = ".hwpack.npz"


def encode(x: np.ndarray) -> bytes:
    """LZMA of the residuals of uint8 images ``(N, H, W, 3)``."""
    p = x.transpose(0, 3, 1, 2).astype(np.int16)
    g = p[:, 1:2]
    q = np.concatenate([p[:, 0:1] - g, g, p[:, 2:3] - g], 1)
    residual = np.diff(np.diff(q, axis=3, prepend=0), axis=2, prepend=0) % 256
    return lzma.compress(residual.astype(np.uint8).tobytes(), preset=6)


def decode(blob: bytes, n: int, height: int = 32, width: int = 32) -> np.ndarray:
    """The uint8 images ``(N, H, W, 3)`` that ``encode`` packed."""
    residual = np.frombuffer(lzma.decompress(blob), dtype=np.uint8).reshape(n, 3, height, width)
    q = np.cumsum(np.cumsum(residual.astype(np.int32), axis=2), axis=3) % 256
    g = q[:, 1:2]
    p = np.concatenate([(q[:, 0:1] + g) % 256, g, (q[:, 2:3] + g) % 256], 1)
    return np.ascontiguousarray(p.astype(np.uint8).transpose(0, 2, 3, 1))


def _read_shards(folder: Path, names: list[str], count: int) -> tuple[np.ndarray, np.ndarray]:
    xs, ys, have = [], [], 0
    for name in names:
        if have >= count:
            break
        with np.load(folder / name, allow_pickle=False) as f:
            xs.append(f["x"][: count - have])
            ys.append(f["y"][: count - have])
        have += len(xs[-1])
    if have < count:
        raise SystemExit(f"{folder} holds only {have} images for {names}, {count} asked for")
    return np.concatenate(xs), np.concatenate(ys).astype(np.uint8)


def pack(source: Path, out: Path, train: int, test: int) -> dict[str, int]:
    """Pack the first ``train`` training and ``test`` test images of the npz shards in ``source``."""
    out.mkdir(parents=True, exist_ok=True)
    sizes = {}
    shards = sorted(p.name for p in source.glob("train_*.npz"))
    for split, names, count in (("train", shards, train), ("test", ["test.npz"], test)):
        x, y = _read_shards(source, names, count)
        blob = np.frombuffer(encode(x), dtype=np.uint8)
        target = out / f"{split}{SUFFIX}"
        np.savez(target, blob=blob, y=y, shape=np.array(x.shape[1:3], dtype=np.int64))
        sizes[split] = target.stat().st_size
    return sizes


def is_packed(folder: Path) -> bool:
    return (folder / f"train{SUFFIX}").is_file()


def unpack_folder(folder: Path, out: Path) -> Path:
    """Write ``train_0.npz`` and ``test.npz`` (the layout ``nas.data`` reads) from a packed folder."""
    out.mkdir(parents=True, exist_ok=True)
    for split, name in (("train", "train_0.npz"), ("test", "test.npz")):
        with np.load(folder / f"{split}{SUFFIX}", allow_pickle=False) as f:
            y = f["y"]
            h, w = (int(v) for v in f["shape"])
            x = decode(f["blob"].tobytes(), len(y), h, w)
        np.savez(out / name, x=x, y=y)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("source", type=Path, help="folder of CIFAR-10 npz shards (train_0.npz ... test.npz)")
    parser.add_argument("out", type=Path, help="folder for the packed files (keep it git-ignored)")
    parser.add_argument("--train", type=int, default=30000, help="training images (from train_0 on)")
    parser.add_argument("--test", type=int, default=5000, help="test images (the first of test.npz)")
    args = parser.parse_args()
    sizes = pack(args.source, args.out, args.train, args.test)
    raw = (args.train + args.test) * 32 * 32 * 3
    total = sum(sizes.values())
    print(f"packed {args.train} training + {args.test} test images into {args.out}: "
          f"{total / 2**20:.1f} MiB ({100 * total / raw:.0f}% of raw)")


if __name__ == "__main__":
    main()
