"""Datasets: digits, both CIFAR-10 formats (on tiny fakes), image folders, augmentation, errors."""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from nas.data import CIFAR10_ENV, DatasetConfig, check_dataset, load_dataset
from nas.errors import UsageError


def test_digits_splits_are_seeded_disjoint_and_resized() -> None:
    data = load_dataset(DatasetConfig(), resolution=24, seed=0)
    assert data.num_classes == 10
    assert len(data) + data.size("val") + data.size("test") == 1797
    x, y = data.splits["train"]
    assert x.shape[1:] == (3, 24, 24) and x.dtype == torch.uint8 and y.dtype == torch.int64
    again = load_dataset(DatasetConfig(), resolution=24, seed=0)
    assert torch.equal(again.splits["val"][1], data.splits["val"][1])
    other = load_dataset(DatasetConfig(), resolution=24, seed=1)
    assert not torch.equal(other.splits["val"][1], data.splits["val"][1])
    capped = load_dataset(DatasetConfig(max_train_images=100), resolution=24)
    assert len(capped) == 100


def test_train_batches_shard_augment_and_normalise() -> None:
    data = load_dataset(DatasetConfig(max_train_images=64, flip=True), resolution=16)
    batches = list(data.train_batches(16, seed=3, rank=0, world_size=2))
    assert len(batches) == data.steps_per_epoch(16, 2) == 2
    x, y = batches[0]
    assert x.shape == (16, 3, 16, 16) and x.dtype == torch.float32 and y.shape == (16,)
    same = next(data.train_batches(16, seed=3, rank=0, world_size=2))
    assert torch.equal(same[0], x)  # deterministic per seed
    other_rank = next(data.train_batches(16, seed=3, rank=1, world_size=2))
    assert not torch.equal(other_rank[1], y)
    plain = torch.cat([b for b, _ in data.eval_batches("train", 64)])
    assert abs(float(plain.mean())) < 0.05  # normalised with the training statistics


def test_augment_crops_with_padding_and_flips() -> None:
    data = load_dataset(DatasetConfig(max_train_images=8, crop_padding=2, flip=True), resolution=8)
    x = torch.arange(2 * 3 * 8 * 8, dtype=torch.float32).view(2, 3, 8, 8)
    out = data.augment_batch(x, torch.Generator().manual_seed(0))
    assert out.shape == x.shape
    for i in range(2):  # every output is a shifted (possibly mirrored) window of the zero-padded input
        padded = torch.nn.functional.pad(x[i], (2, 2, 2, 2))
        windows = [padded[:, dy:dy + 8, dx:dx + 8] for dy in range(5) for dx in range(5)]
        assert any(torch.equal(out[i], w) or torch.equal(out[i], w.flip(2)) for w in windows)


def _fake_cifar(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8), rng.integers(0, 10, n).astype(np.uint8)


def test_cifar10_npz_and_standard_pickle_folders_read_the_same(tmp_path: Path) -> None:
    npz, std = tmp_path / "npz", tmp_path / "std" / "cifar-10-batches-py"
    npz.mkdir()
    std.mkdir(parents=True)
    for i in range(5):
        x, y = _fake_cifar(20, i)
        np.savez_compressed(npz / f"train_{i}.npz", x=x, y=y)
        with open(std / f"data_batch_{i + 1}", "wb") as f:
            pickle.dump({b"data": x.transpose(0, 3, 1, 2).reshape(20, -1), b"labels": y.tolist()}, f)
    x, y = _fake_cifar(10, 9)
    np.savez_compressed(npz / "test.npz", x=x, y=y)
    with open(std / "test_batch", "wb") as f:
        pickle.dump({b"data": x.transpose(0, 3, 1, 2).reshape(10, -1), b"labels": y.tolist()}, f)
    a = load_dataset(DatasetConfig(kind="cifar10", path=str(npz)), resolution=32)
    b = load_dataset(DatasetConfig(kind="cifar10", path=str(std.parent)), resolution=32)
    for split in ("train", "val", "test"):
        assert torch.equal(a.splits[split][0], b.splits[split][0])
        assert torch.equal(a.splits[split][1], b.splits[split][1])
    assert a.size("test") == 10 and len(a) + a.size("val") == 100


def test_cifar10_pickle_that_would_run_code_is_refused(tmp_path: Path) -> None:
    class Evil:
        def __reduce__(self):
            return (os.system, ("true",))

    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        with open(tmp_path / name, "wb") as f:
            pickle.dump({b"data": Evil(), b"labels": []}, f)
    with pytest.raises(UsageError, match="data_batch_1: UnpicklingError: refusing to load posix.system"):
        load_dataset(DatasetConfig(kind="cifar10", path=str(tmp_path)), resolution=32)


def test_missing_cifar10_names_path_and_env_var(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(CIFAR10_ENV, raising=False)
    with pytest.raises(UsageError, match=CIFAR10_ENV):
        check_dataset(DatasetConfig(kind="cifar10"))
    with pytest.raises(UsageError) as info:
        check_dataset(DatasetConfig(kind="cifar10", path=str(tmp_path / "nowhere")))
    assert "nowhere" in str(info.value) and CIFAR10_ENV in str(info.value)
    monkeypatch.setenv(CIFAR10_ENV, str(tmp_path / "env-path"))
    with pytest.raises(UsageError, match="env-path"):
        check_dataset(DatasetConfig(kind="cifar10"))


def test_image_folder_with_pillow(tmp_path: Path) -> None:
    from PIL import Image

    for split, count in (("train", 6), ("test", 2)):
        for c, color in enumerate(((255, 0, 0), (0, 0, 255))):
            folder = tmp_path / split / f"class_{c}"
            folder.mkdir(parents=True)
            for i in range(count):
                Image.new("RGB", (10 + i, 12), color).save(folder / f"{i}.png")
    data = load_dataset(DatasetConfig(kind="folder", path=str(tmp_path), val_fraction=0.25), resolution=16)
    assert data.num_classes == 2 and data.size("test") == 4 and len(data) + data.size("val") == 12
    x, y = data.splits["test"]
    assert x.shape == (4, 3, 16, 16)
    assert all(int(x[i, 0].float().mean()) > 200 for i in range(4) if y[i] == 0)
    with pytest.raises(UsageError, match="not a folder"):
        check_dataset(DatasetConfig(kind="folder", path=str(tmp_path / "absent")))


def _cifar_folder(root: Path, **shards: tuple[np.ndarray, np.ndarray]) -> Path:
    """Five 12-image training shards and a 10-image test shard, any of them replaced by ``shards``."""
    root.mkdir()
    for i, name in enumerate([f"train_{k}" for k in range(5)] + ["test"]):
        x, y = shards.get(name, _fake_cifar(12 if name != "test" else 10, i))
        if x is not None:
            np.savez(root / f"{name}.npz", x=x, y=y)
    return root


@pytest.mark.parametrize("shard, needle", [
    ((_fake_cifar(12, 0)[0], np.arange(7, dtype=np.uint8)), "has 12 images and 7 labels"),
    ((_fake_cifar(12, 0)[0], np.eye(10, dtype=np.uint8)[np.arange(12) % 10]), r"y has shape \(12, 10\)"),
    ((_fake_cifar(12, 0)[0], np.full(12, 10, np.uint8)), "label 10 is outside 0..9"),
    ((_fake_cifar(12, 0)[0], np.full(12, -1, np.int64)), "label -1 is outside 0..9"),
    ((_fake_cifar(12, 0)[0], np.full(12, 3.7)), "expected one integer label per image"),
    ((None, None), r"train_1.npz is missing \(train_4.npz is there\)"),
])
def test_cifar10_shards_whose_labels_do_not_pair_up_are_refused_naming_the_shard(tmp_path, shard, needle):
    path = _cifar_folder(tmp_path / "c", train_1=shard)
    cfg = DatasetConfig(kind="cifar10", path=str(path))
    with pytest.raises(UsageError, match=needle) as caught:
        check_dataset(cfg)  # before any training: headers and labels only
    assert "\n" not in str(caught.value) and ("train_1.npz" in str(caught.value))


def test_cifar10_test_labels_are_checked_too_and_a_short_part_still_loads(tmp_path):
    path = _cifar_folder(tmp_path / "bad", test=(_fake_cifar(10, 9)[0], np.full(10, 255, np.uint8)))
    with pytest.raises(UsageError, match=r"test.npz: label 255 is outside 0..9"):
        load_dataset(DatasetConfig(kind="cifar10", path=str(path)), resolution=32)
    part = _cifar_folder(tmp_path / "part", train_2=(None, None), train_3=(None, None), train_4=(None, None))
    data = load_dataset(DatasetConfig(kind="cifar10", path=str(part), val_fraction=0.25), resolution=32)
    assert len(data) + data.size("val") == 24  # train_0 and train_1: a part that stops early is a part
