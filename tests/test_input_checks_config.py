"""Bad input to configs, run folders, datasets, metrics and arch strings: one line, exit 2, nothing written.

Each test names the audit item it covers (``/tmp/audit/cli_report.md``: B3, B4, C1-C9, C16-C18).
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import pytest
import yaml

from nas.config import SEED_LIMIT, load_config, parse_config
from nas.data import DatasetConfig, check_split_sizes, load_dataset, split_sizes
from nas.errors import UsageError
from nas.rundir import RunDir
from search_spaces import ArchError, arch_from_string, arch_to_string, get_space, largest
from supernets.training.loop import _trim_metrics, read_metrics
from tests.cli_helpers import fails_in_one_line

BASE = {
    "name": "t", "space": "ofa_mbv3_cifar", "seed": 0,
    "dataset": {"kind": "digits", "val_fraction": 0.1, "test_fraction": 0.2},
    "train": {"batch_size": 32, "max_steps_per_epoch": 1, "bn_recal_images": 32, "eval_random_subnets": 0,
              "max_val_images": 32, "phases": [{"name": "full", "epochs": 1, "lr": 0.05,
                                                 "elastic": {"resolutions": [24]}}]},
    "ray": {"enabled": False},
}


def raw_config(**sections) -> dict:
    raw = json.loads(json.dumps(BASE))
    for key, value in sections.items():
        if isinstance(value, dict) and isinstance(raw.get(key), dict):
            raw[key].update(value)
        else:
            raw[key] = value
    return raw


def write_config(tmp_path: Path, run: Path | None = None, **sections) -> Path:
    raw = raw_config(**sections)
    raw["run_dir"] = str(run or tmp_path / "run")
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


# --- C1, C2, C3, C4, C5: the config file --------------------------------------------------------------------


@pytest.mark.parametrize("sections, needles", [
    ({"train": {"lr": 10**400}}, ["train.lr", "finite"]),
    ({"train": {"phases": [{"name": "full", "epochs": 1, "lr": 10**400}]}}, ["train.phases[0].lr", "finite"]),
    ({"train": {"batch_size": 10**30}}, ["train.batch_size", "at most"]),
    ({"latency": [1, 2]}, ["latency must be a mapping", "list"]),
    ({"latency": "abc"}, ["latency must be a mapping", "str"]),
    ({"latency": {"quantile": 10**400}}, ["latency.quantile", "(0, 0.5]"]),
    ({"latency": {1: 2, "x": 3}}, ["latency: unknown key", "1, x"]),
    ({"seed": -1}, ["seed: -1", "from 0 to"]),
    ({"seed": SEED_LIMIT + 1}, ["seed", str(SEED_LIMIT)]),
    ({"seed": 1.5}, ["seed", "int"]),
])
def test_config_values_are_refused_in_one_line(sections, needles):
    refused(needles, **sections)


def refused(needles, **sections) -> str:
    """The one-line ``UsageError`` of a config with ``sections``, holding every needle."""
    with pytest.raises(UsageError) as info:
        parse_config(raw_config(**sections))
    message = str(info.value)
    assert "\n" not in message and len(message) < 300, message
    for needle in needles:
        assert needle in message, message
    return message


def test_huge_number_in_a_config_file_is_one_line_and_nothing_is_written(tmp_path, capsys):
    config = write_config(tmp_path, train={"lr": 10**400})
    fails_in_one_line(capsys, ["train", config, "--no-ray"], "train.lr", "finite")
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("content, needle", [
    (b"\xff\xfe\x00name: t\n", "not UTF-8"),
    (b"a: " + b"1" * 5000 + b"\n", "cannot be read"),
    (b"a: " + b"[" * 3000 + b"]" * 3000 + b"\n", "cannot be read"),
])
def test_unreadable_config_file_is_one_line(tmp_path, capsys, content, needle):
    config = tmp_path / "bad.yaml"
    config.write_bytes(content)
    fails_in_one_line(capsys, ["train", config], str(config), needle)


@pytest.mark.parametrize("content, needle", [
    ("name: a\nspace: ofa_mbv3_cifar\ntrain: {batch_size: 16}\ntrain: {batch_size: 32}\n",
     "key 'train' appears twice in one mapping (lines 3 and 4)"),
    ("name: a\nspace: ofa_mbv3_cifar\ntrain:\n  lr: 0.1\n  lr: 0.2\n", "key 'lr' appears twice"),
])
def test_a_key_given_twice_is_refused(tmp_path, capsys, content, needle):
    config = tmp_path / "twice.yaml"
    config.write_text(content)
    fails_in_one_line(capsys, ["train", config, "--run-dir", tmp_path / "run"], needle)
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("value, needle", [("nan", "finite"), ("inf", "finite"), ("-1", "> 0"), ("0", "> 0")])
def test_epochs_scale_must_be_finite_and_positive(tmp_path, capsys, value, needle):
    config = write_config(tmp_path)
    fails_in_one_line(capsys, ["train", config, "--epochs-scale", value, "--no-ray"], "--epochs-scale", needle)
    assert not (tmp_path / "run").exists()
    with pytest.raises(UsageError, match="--epochs-scale"):
        load_config(config, epochs_scale=float(value))


def test_negative_seed_is_refused_before_the_run_folder(tmp_path, capsys):
    config = write_config(tmp_path, seed=-1)
    fails_in_one_line(capsys, ["train", config, "--no-ray"], "seed: -1")
    assert not (tmp_path / "run").exists()


# --- B3, C6: splits that the run needs must hold images -----------------------------------------------------


def test_fractions_that_empty_a_needed_split_are_refused_at_load():
    with pytest.raises(UsageError, match=r"dataset.val_fraction: 0.0 is not allowed; must be in \(0, 1\)"):
        parse_config(raw_config(dataset={"val_fraction": 0}))
    with pytest.raises(UsageError, match=r"dataset.test_fraction: 0.0 is not allowed; must be in \(0, 1\)"):
        parse_config(raw_config(dataset={"test_fraction": 0}))
    # An imported supernet is not trained: no validation split needed (nas eval scores the test split).
    imported = parse_config({"name": "i", "space": "ofa_mbv3_w1.0", "supernet": {"import": "ofa", "path": "x.pth"},
                             "dataset": {"kind": "digits", "val_fraction": 0.0}})
    assert imported.dataset.val_fraction == 0.0


def test_split_sizes_match_the_loaded_splits(tmp_path):
    for cfg, seed in ((DatasetConfig(), 0), (DatasetConfig(val_fraction=0.3, test_fraction=0.15), 3),
                      (DatasetConfig(max_train_images=50, max_test_images=7), 1)):
        data = load_dataset(cfg, 8, seed)
        assert split_sizes(cfg, seed) == {s: data.size(s) for s in ("train", "val", "test")}
    folder = _image_folder(tmp_path / "images", per_class=5)
    cfg = DatasetConfig(kind="folder", path=str(folder), val_fraction=0.25, test_fraction=0.2)
    data = load_dataset(cfg, 8, 0)
    assert split_sizes(cfg, 0) == {s: data.size(s) for s in ("train", "val", "test")}


@pytest.mark.parametrize("sections, needles", [
    ({"train": {"batch_size": 1000000}}, ["training split holds", "1000000", "train.batch_size"]),
    ({"dataset": {"max_train_images": 1}}, ["training split holds 1 image", "train.batch_size 32"]),
    ({"dataset": {"val_fraction": 0.0001}}, ["validation split holds 0", "dataset.val_fraction"]),
])
def test_splits_too_small_for_training_are_refused_before_the_run_folder(tmp_path, capsys, sections, needles):
    config = write_config(tmp_path, **sections)
    fails_in_one_line(capsys, ["train", config, "--no-ray"], *needles)
    assert not (tmp_path / "run").exists()


def test_split_check_counts_workers():
    cfg = DatasetConfig(max_train_images=100)
    assert check_split_sizes(cfg, 0, {"train": (100, "two batches")})["train"] == 100
    with pytest.raises(UsageError, match="holds 100 image.*two batches of 51 needs 102"):
        check_split_sizes(cfg, 0, {"train": (102, "two batches of 51")})


def test_the_loop_backstop_is_a_one_line_usage_error(tmp_path, capsys, monkeypatch):
    # Were the pre-check to miss it, the worker's check still ends in one line, exit 2 (not "run it again").
    monkeypatch.setattr("nas.training.check_split_sizes", lambda *args, **kwargs: None)
    config = write_config(tmp_path, train={"batch_size": 100000})
    fails_in_one_line(capsys, ["train", config, "--no-ray"], "smaller than one batch", "train.batch_size 100000")
    assert not (tmp_path / "run" / "checkpoints" / "latest.pt").exists()


# --- B4, C7, C18: run folders -------------------------------------------------------------------------------


def test_empty_run_dir_is_refused(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    config = write_config(tmp_path)
    fails_in_one_line(capsys, ["train", config, "--run-dir", "", "--no-ray"], "run folder ''", "--run-dir")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cfg.yaml"]
    with pytest.raises(UsageError, match="run_dir: '' is not allowed"):
        parse_config({**raw_config(), "run_dir": ""})
    with pytest.raises(UsageError, match="run folder ''"):
        RunDir("")


@pytest.mark.parametrize("where", ["afile", "afile/below"])
def test_run_dir_that_is_or_is_under_a_file(tmp_path, capsys, where):
    (tmp_path / "afile").write_text("keep me")
    config = write_config(tmp_path)
    fails_in_one_line(capsys, ["train", config, "--run-dir", tmp_path / where, "--no-ray"],
                      str(tmp_path / where), f"{tmp_path / 'afile'} is a file")
    assert (tmp_path / "afile").read_text() == "keep me"
    with pytest.raises(UsageError, match="afile is a file"):
        RunDir(tmp_path / where).create()


def test_checkpoints_is_a_file(tmp_path, capsys):
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "checkpoints").write_text("x")
    config = write_config(tmp_path)
    fails_in_one_line(capsys, ["train", config, "--no-ray"], "checkpoints is a file")
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == ["checkpoints"]


def test_a_folder_where_the_supernet_goes_is_refused_before_training(tmp_path, capsys):
    (tmp_path / "run" / "checkpoints" / "supernet.pt").mkdir(parents=True)
    config = write_config(tmp_path)
    fails_in_one_line(capsys, ["train", config, "--no-ray"], "supernet.pt (it is a folder)")
    assert sorted(p.name for p in (tmp_path / "run").rglob("*")) == ["checkpoints", "supernet.pt"]


# --- C8: a damaged image ------------------------------------------------------------------------------------


def _image_folder(root: Path, per_class: int = 3) -> Path:
    from PIL import Image

    for c in range(2):
        folder = root / f"class_{c}"
        folder.mkdir(parents=True)
        for i in range(per_class):
            Image.new("RGB", (9, 9), (40 * i, 100 * c, 0)).save(folder / f"{i}.png")
    return root


def test_corrupt_image_in_a_folder_dataset_names_the_file(tmp_path):
    folder = _image_folder(tmp_path / "images")
    (folder / "class_1" / "2.png").write_bytes(b"not a png at all")
    with pytest.raises(UsageError, match=r"cannot read image .*class_1/2.png .*remove or replace it"):
        load_dataset(DatasetConfig(kind="folder", path=str(folder)), 8)


# --- C9: a damaged metrics file -----------------------------------------------------------------------------


def test_damaged_metrics_lines_are_skipped_and_kept_aside(tmp_path):
    path = tmp_path / "metrics.jsonl"
    good = [{"global_epoch": 0, "train_loss": 1.0}, {"global_epoch": 1, "train_loss": 0.5}]
    original = (json.dumps(good[0]) + "\n").encode() + b"\xff\xfe\n[1]\n" + (json.dumps(good[1]) + "\n").encode() \
        + b'{"global_epoch": 2, "tr'
    path.write_bytes(original)
    with pytest.warns(UserWarning, match="2 damaged line"):
        assert read_metrics(path) == good
    with pytest.warns(UserWarning, match=r"kept as .*metrics.jsonl.damaged"):
        _trim_metrics(str(path), 2)
    assert [json.loads(line) for line in path.read_text().splitlines()] == good
    assert (tmp_path / "metrics.jsonl.damaged").read_bytes() == original
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert read_metrics(path) == good  # clean now: no warning


def test_torn_last_metrics_line_is_cut_before_new_lines_follow(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text(json.dumps({"global_epoch": 0}) + '\n{"global_epo')
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a kill mid-write is expected: no warning, no copy
        _trim_metrics(str(path), 1)
    assert path.read_text() == json.dumps({"global_epoch": 0}) + "\n"
    assert not (tmp_path / "metrics.jsonl.damaged").exists()


# --- C16, C17: arch strings and --seed ----------------------------------------------------------------------


@pytest.mark.parametrize("seed", ["-5", str(SEED_LIMIT + 1)])
def test_arch_info_seed_out_of_range(capsys, seed):
    fails_in_one_line(capsys, ["arch", "info", "ofa_mbv3_cifar", "--sample", "2", "--seed", seed], "--seed", seed)


def _mnasnet_string(first_stage: str) -> str:
    space = get_space("mnasnet")

    parts = arch_to_string(space, largest(space)).split("/")
    return "/".join([parts[0], first_stage, *parts[2:]])


@pytest.mark.parametrize("stage, needle", [
    ("w1.25:d999999999999999999999:conv_k5_se0.25_id", "cannot read a whole number"),
    ("w1.25:d99999999:conv_k5_se0.25_id", "depth=99999999 is not allowed"),
    ("w1.25:d1.5:conv_k5_se0.25_id", "cannot read a whole number"),
    ("w1.25:d2:conv_k5.5_se0.25_id", "cannot read a whole number from token 'k5.5'"),
])
def test_mnasnet_depth_is_checked_before_blocks_are_built(capsys, stage, needle):
    text = _mnasnet_string(stage)
    with pytest.raises(ArchError, match=needle):
        arch_from_string(get_space("mnasnet"), text)
    fails_in_one_line(capsys, ["arch", "info", "mnasnet", text], needle)


def test_mnasnet_strings_still_round_trip():
    space = get_space("mnasnet")
    text = _mnasnet_string("w0.75:d1:sep_k3_se0_noid")

    assert arch_to_string(space, arch_from_string(space, text)) == text


def test_unterminated_whole_last_line_is_kept_and_terminated(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text(json.dumps({"global_epoch": 0}) + "\n" + json.dumps({"global_epoch": 1}))
    assert read_metrics(path) == [{"global_epoch": 0}, {"global_epoch": 1}]
    _trim_metrics(str(path), 2)
    assert path.read_text().endswith("\n") and read_metrics(path) == [{"global_epoch": 0}, {"global_epoch": 1}]
