"""Checkpoints with the right format tag and a damaged field (a hand-edited or half-converted file) are refused
by every reader with one ``CheckpointError`` naming the field, and by the command line in one line (exit 2):
``supernet.pt`` (``read_supernet_file``: ``nas eval``, ``nas query --export``) and ``latest.pt``
(``load_train_state``: ``nas train`` resuming). A supernet whose weights do not fit the space names the first
missing, unexpected or mis-shaped parameter."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
import yaml

from nas.config import load_config
from nas.rundir import RunDir
from search_spaces import get_space
from supernets import build_supernet
from supernets.training.checkpoint import (
    CheckpointError,
    atomic_torch_save,
    load_supernet_file,
    load_train_state,
    read_supernet_file,
    save_supernet,
    train_state,
)
from tests.cli_helpers import fails_in_one_line

SPACE = get_space("ofa_mbv3_cifar")
EPOCHS = 2  # one phase of two epochs
DROP = object()  # a change that drops the field


@pytest.fixture(scope="module")
def weights() -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    return {k: v.detach().clone() for k, v in build_supernet(SPACE).state_dict().items()}


def _config(tmp_path: Path) -> Path:
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump({
        "name": "damaged", "space": SPACE.name, "seed": 0, "run_dir": str(tmp_path / "run"),
        "dataset": {"kind": "digits", "val_fraction": 0.1, "test_fraction": 0.2},
        "train": {"strategy": "sandwich", "batch_size": 16, "max_steps_per_epoch": 1, "bn_recal_images": 16,
                  "eval_random_subnets": 0, "max_val_images": 16, "device": "cpu",
                  "phases": [{"name": "sandwich", "epochs": EPOCHS, "lr": 0.02, "subnets_per_step": 2,
                              "distill_weight": 1.0}]},
        "ray": {"enabled": False}, "devices": ["local-cpu-1t-ort"],
        "latency": {"resolutions": [24], "warmup": 0, "repeats": 1},
        "search": {"n_trials": 4, "batch_size": 2, "population_size": 2, "eval_workers": 1, "resolutions": [24]}}))
    return path


def _supernet_file(path: Path, weights: dict[str, torch.Tensor], changes: dict, config_hash: str = "abc") -> Path:
    """A ``supernet.pt`` as ``save_supernet`` writes it, with ``changes`` (``DROP``: the field dropped)."""
    module = build_supernet(SPACE)
    module.load_state_dict(weights)
    save_supernet(path, module, SPACE, config_hash)
    atomic_torch_save(_damaged(torch.load(path, weights_only=True), changes), path)
    return path


def _damaged(data: dict, changes: dict) -> dict:
    """``data`` with ``changes`` (``DROP``: the field dropped)."""
    for key, value in changes.items():
        if value is DROP:
            del data[key]
        else:
            data[key] = value
    return data


SUPERNET_DAMAGE = [
    ({"state_dict": DROP}, "field 'state_dict' (the weights) is missing"),
    ({"state_dict": [1]}, "field 'state_dict' (the weights) is a list ([1]), not a dict of tensors"),
    ({"state_dict": {"stem.0.weight": 1.0}}, "holds a float (1.0) under 'stem.0.weight'"),
    ({"num_classes": "x"}, "field 'num_classes' is a str ('x'), not an integer >= 1"),
    ({"num_classes": 0}, "field 'num_classes' is an int (0)"),
    ({"num_classes": DROP}, "field 'num_classes' is missing"),
    ({"space": 3}, "field 'space' is an int (3), not a string"),
    ({"config_hash": DROP}, "field 'config_hash' is missing"),
    ({"summary": "x"}, "field 'summary' is a str ('x'), not a dict"),
]


@pytest.mark.parametrize(("changes", "needle"), SUPERNET_DAMAGE, ids=[n.split("'")[1] for _, n in SUPERNET_DAMAGE])
def test_a_supernet_file_with_a_damaged_field_is_refused_by_every_reader(tmp_path, weights, changes, needle):
    path = _supernet_file(tmp_path / "supernet.pt", weights, changes)
    for read in (read_supernet_file, load_supernet_file):
        with pytest.raises(CheckpointError, match="is damaged: ") as caught:
            read(path)
        assert needle in str(caught.value) and "move it away" in str(caught.value)
        assert "\n" not in str(caught.value)


def test_weights_that_do_not_fit_the_space_name_the_first_bad_parameter(tmp_path, weights):
    first, second = list(weights)[:2]
    missing = {k: v for k, v in weights.items() if k not in (first, second)}
    path = _supernet_file(tmp_path / "missing.pt", weights, {"state_dict": missing})
    with pytest.raises(CheckpointError, match=rf"missing parameter '{first}' \(and 1 more\); move it away"):
        load_supernet_file(path)
    path = _supernet_file(tmp_path / "unexpected.pt", weights,
                          {"state_dict": {**weights, "extra.weight": torch.ones(2)}})
    with pytest.raises(CheckpointError, match="unexpected parameter 'extra.weight'; "):
        load_supernet_file(path)
    path = _supernet_file(tmp_path / "shape.pt", weights, {"state_dict": {**weights, first: torch.zeros(3)}})
    with pytest.raises(CheckpointError, match=re.escape(f"parameter '{first}' of shape (3,), the space's is "
                                                       f"{tuple(weights[first].shape)}")):
        load_supernet_file(path)


@pytest.mark.parametrize("changes", [{"state_dict": DROP}, {"state_dict": [1]}, {"num_classes": "x"}])
def test_nas_eval_refuses_a_damaged_supernet_in_one_line(tmp_path, weights, capsys, changes):
    config = _config(tmp_path)
    run = RunDir.for_config(load_config(config)).create()
    _supernet_file(run.supernet_checkpoint, weights, changes, load_config(config).config_hash)
    fails_in_one_line(capsys, ["eval", config, "--arch", "smallest"], str(run.supernet_checkpoint), "is damaged: ")


def _train_file(path: Path, weights: dict[str, torch.Tensor], config_hash: str, changes: dict | None = None
                ) -> Path:
    """A ``latest.pt`` after the first of the two epochs (mid-phase: with optimizer and scheduler states), with
    ``changes`` (``DROP``: the field dropped)."""
    module = build_supernet(SPACE)
    module.load_state_dict(weights)
    optimizer = torch.optim.SGD(module.parameters(), lr=0.1)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=2)
    data = train_state(space_name=SPACE.name, config_hash=config_hash, phase=0, epoch=1,
                       model=module.state_dict(), optimizer=optimizer.state_dict(),
                       scheduler=scheduler.state_dict(), rng=torch.get_rng_state(), completed_epochs=1)
    atomic_torch_save(_damaged(data, changes or {}), path)
    return path


TRAIN_DAMAGE = [
    ({"model": DROP}, "field 'model' (the weights) is missing"),
    ({"model": [1]}, "field 'model' (the weights) is a list ([1])"),
    ({"phase": "x"}, "field 'phase' is a str ('x'), not an integer >= 0"),
    ({"epoch": -1}, "field 'epoch' is an int (-1), not an integer >= 0"),
    ({"completed_epochs": DROP}, "field 'completed_epochs' is missing"),
    ({"optimizer": "x"}, "field 'optimizer' is a str ('x'), not a dict (or None)"),
    ({"scheduler": DROP}, "field 'scheduler' is missing"),
    ({"torch_rng": torch.zeros(3)}, "field 'torch_rng' is a Tensor of torch.float32 with shape (3,)"),
    ({"torch_rng": DROP}, "field 'torch_rng' is missing"),
]


@pytest.mark.parametrize(("changes", "needle"), TRAIN_DAMAGE, ids=[str(c) for c, _ in TRAIN_DAMAGE])
def test_a_training_checkpoint_with_a_damaged_field_is_refused(tmp_path, weights, changes, needle):
    path = _train_file(tmp_path / "latest.pt", weights, "abc", changes)
    with pytest.raises(CheckpointError, match="is damaged: ") as caught:
        load_train_state(path, SPACE.name, "abc")
    assert needle in str(caught.value) and "move it away to start this run over" in str(caught.value)


@pytest.mark.parametrize(("changes", "needle"), [
    ({"phase": 5, "epoch": 0}, "its position (phase 5, epoch 0) is not in the schedule (epochs per phase: [2])"),
    ({"epoch": 2}, "its position (phase 0, epoch 2) is not in the schedule"),
    ({"completed_epochs": 7}, "field 'completed_epochs' is 7, and its position (phase 0, epoch 1) comes after 1"),
])
def test_a_training_checkpoint_outside_the_schedule_is_refused(tmp_path, weights, changes, needle):
    path = _train_file(tmp_path / "latest.pt", weights, "abc", changes)
    assert load_train_state(path, SPACE.name, "abc")["phase"] == changes.get("phase", 0)  # no schedule: no check
    with pytest.raises(CheckpointError, match="is damaged: ") as caught:
        load_train_state(path, SPACE.name, "abc", [EPOCHS])
    assert needle in str(caught.value)


@pytest.mark.parametrize(("changes", "needle"), [
    ({"model": DROP}, "field 'model' (the weights) is missing"),  # refused before training starts
    ({"phase": "x"}, "field 'phase' is a str ('x')"),
    ({"torch_rng": torch.zeros(3)}, "field 'torch_rng' is a Tensor of torch.float32"),
    ({"phase": 9, "epoch": 0}, "its position (phase 9, epoch 0) is not in the schedule"),  # refused by the loop
    ({"optimizer": None}, "field 'optimizer' is None in the middle of phase 0"),
    ({"optimizer": {"state": {}, "param_groups": []}}, "field 'optimizer' does not fit phase 0's optimizer"),
])
def test_nas_train_refuses_to_resume_from_a_damaged_checkpoint_in_one_line(tmp_path, weights, capsys, changes,
                                                                           needle):
    config = _config(tmp_path)
    loaded = load_config(config)
    run = RunDir.for_config(loaded).create()
    _train_file(run.latest_checkpoint, weights, loaded.config_hash, changes)
    before = run.latest_checkpoint.read_bytes()
    fails_in_one_line(capsys, ["train", config, "--no-ray", "-q"], str(run.latest_checkpoint), needle)
    assert run.latest_checkpoint.read_bytes() == before and not run.supernet_checkpoint.exists()


def test_weights_of_a_training_checkpoint_that_do_not_fit_name_the_parameter(tmp_path, weights, capsys):
    config = _config(tmp_path)
    loaded = load_config(config)
    run = RunDir.for_config(loaded).create()
    first = next(iter(weights))
    _train_file(run.latest_checkpoint, weights, loaded.config_hash)
    data = torch.load(run.latest_checkpoint, weights_only=True)
    data["model"][first] = torch.zeros(3)
    atomic_torch_save(data, run.latest_checkpoint)
    fails_in_one_line(capsys, ["train", config, "--no-ray", "-q"], f"parameter '{first}' of shape (3,)")
