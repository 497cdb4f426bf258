"""Experiment configs: the shipped ones load, bad input names the key and what is allowed."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from nas.config import ExperimentConfig, config_to_yaml, load_config, parse_config
from nas.errors import UsageError
from nas.rundir import RunDir

ROOT = Path(__file__).resolve().parents[1]
EXPERIMENTS = ["quickstart.yaml", "quickstart_progressive.yaml", "cifar10_ofa_mbv3.yaml",
               "cifar10_ofa_mbv3_sandwich.yaml", "cifar10_ofa_mbv3_gpu.yaml", "imagenet_ofa_mbv3.yaml"]


@pytest.mark.parametrize("name", EXPERIMENTS)
def test_shipped_configs_load_and_validate(name: str) -> None:
    config = load_config(ROOT / "experiments" / name)
    space = config.get_space()
    phases = config.train.resolved_phases(space)
    assert phases and all(p.epochs >= 1 for p in phases)
    assert len(config.config_hash) == 16
    # The filled-in copy parses back to the same config.
    again = parse_config(yaml.safe_load(config_to_yaml(config)))
    assert again.config_hash == config.config_hash


def test_imagenet_config_uses_the_paper_schedule() -> None:
    config = load_config(ROOT / "experiments" / "imagenet_ofa_mbv3.yaml")
    phases = config.train.resolved_phases(config.get_space())
    assert [p.epochs for p in phases] == [180, 120, 25, 120, 25, 120]
    assert [p.name for p in phases] == ["full", "kernel", "depth_1", "depth_2", "expand_1", "expand_2"]
    assert phases[4].sort_channels and phases[4].values("expand_ratios") == (4.0, 6.0)
    assert phases[2].values("depths") == (3, 4) and phases[3].values("depths") == (2, 3, 4)


def test_identity_differences_name_what_makes_two_configs_train_different_weights() -> None:
    sandwich = load_config(ROOT / "experiments" / "quickstart.yaml")
    progressive = load_config(ROOT / "experiments" / "quickstart_progressive.yaml")
    assert sandwich.identity_differences(sandwich) == [] and sandwich.name != progressive.name
    differences = sandwich.identity_differences(progressive)  # the name is not part of the identity
    assert "train.strategy: 'progressive_shrinking' -> 'sandwich'" in differences
    assert "train.phases[0].lr: 0.05 -> 0.02" in differences
    assert "train.phases[0].elastic.depths: (absent) -> [2, 3, 4]" in differences  # elastic pairs read as keys
    assert "train.phases[1].epochs: 2 -> (absent)" in differences
    assert not any(d.startswith(("ray.", "search.", "train.device")) for d in differences)


def base(**overrides) -> dict:
    raw = {"name": "t", "space": "ofa_mbv3_cifar"}
    raw.update(overrides)
    return raw


@pytest.mark.parametrize("raw, words", [
    (base(bogus=1), ["bogus", "allowed", "dataset"]),
    (base(train={"lrr": 0.1}), ["train", "lrr", "allowed", "batch_size"]),
    (base(train={"strategy": "magic"}), ["train.strategy", "magic", "progressive_shrinking", "sandwich"]),
    (base(dataset={"kind": "mnist"}), ["dataset.kind", "mnist", "digits", "cifar10", "folder"]),
    (base(dataset={"val_fraction": 1.5}), ["dataset.val_fraction", "[0, 1)"]),
    (base(train={"batch_size": "big"}), ["train.batch_size", "big", "int"]),
    (base(ray={"num_workers": 0}), ["ray.num_workers", "> 0"]),
    (base(space="nope"), ["space", "nope", "ofa_mbv3_cifar"]),
    ({"space": "ofa_mbv3_cifar"}, ["name", "required"]),
    (base(train={"phases": [{"name": "p", "epochs": 1, "lr": 0.1, "elastic": {"kernel_sizes": [9]}}]}),
     ["train.phases[0]", "kernel_sizes", "9", "allowed", "3, 5, 7"]),
    (base(train={"phases": [{"name": "p", "epochs": 1, "lr": 0.1, "elastic": {"width": [1]}}]}),
     ["train.phases[0].elastic", "width", "allowed", "kernel_sizes"]),
    (base(train={"phases": [{"name": "p", "lr": 0.1}]}), ["train.phases[0]", "epochs", "required"]),
    # Later sections are checked at load too (issue 12): a typo costs a second, not an hour of training.
    (base(search={"sampler": "cma", "n_trails": 5}), ["search", "n_trails", "allowed", "n_trials"]),
    (base(search={"sampler": "cma"}), ["search.sampler", "cma", "nsga2"]),
    (base(latency={"repeats": 0}), ["latency.repeats", "0", ">= 1"]),
    (base(latency={"warmup": 2.5}), ["latency.warmup", "2.5"]),
    (base(latency={"quantile": float("nan")}), ["latency.quantile", "nan"]),
    (base(latency={"load_reference": "yes"}), ["latency.load_reference", "yes", "true or false"]),
    (base(devices=[{"id": "d", "max_latency_ms": -1}]), ["devices[d].max_latency_ms", "> 0"]),
    (base(devices=[{"id": "d", "kind": "onnx"}]), ["devices[d]", "kind", "allowed: id, max_latency_ms"]),
    (base(latency={"resolutions": [30]}), ["latency.resolutions", "30", "24, 28, 32"]),
    (base(search={"resolutions": [30]}), ["search.resolutions", "30", "24, 28, 32"]),
    (base(latency={"resolutions": [32]}), ["search may pick resolutions [24, 28]", "latency.resolutions"]),
    (base(latency={"fit_from": "a/b", "fit_samples": 5}), ["latency.fit_from", "a/b", "device id"]),
    (base(latency={"fit_from": "phone"}), ["latency.fit_from", "fit_samples >= 3"]),
])
def test_bad_configs_name_the_key_and_allowed_values(raw: dict, words: list[str]) -> None:
    with pytest.raises(UsageError) as info:
        parse_config(raw)
    message = str(info.value)
    assert "\n" not in message
    for word in words:
        assert word in message, (word, message)


def test_later_sections_are_typed_at_load_and_hash_ignores_them() -> None:
    plain = parse_config(base())
    later = parse_config(base(devices={"phone": {"max_latency_ms": 5}}, search={"n_trials": 10},
                              latency={"repeats": 3}))
    assert later.search.devices == ("phone",) and later.search.budgets == {"phone": 5.0}
    assert later.search.n_trials == 10 and later.latency.repeats == 3
    assert later.config_hash == plain.config_hash
    # What the run folder keeps parses back to the same config.
    again = parse_config(later.to_dict())
    assert again.search == later.search and again.latency == later.latency and again.train == later.train
    assert parse_config(base(seed=1)).config_hash != plain.config_hash
    assert parse_config(base(ray={"num_workers": 2})).config_hash == plain.config_hash


def test_yaml_errors_and_missing_files_are_usage_errors(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: [unclosed\n")
    with pytest.raises(UsageError, match="not valid YAML"):
        load_config(bad)
    with pytest.raises(UsageError, match="cannot read config"):
        load_config(tmp_path / "absent.yaml")


def test_the_default_strategy_is_the_sandwich_rule_at_a_quarter_rate_per_subnet() -> None:
    from supernets.training.schedule import SANDWICH_SUBNETS, ofa_schedule

    config = parse_config(base(train={"lr": 0.2, "epochs_scale": 0.1}))
    space = config.get_space()
    (phase,) = config.train.resolved_phases(space)
    assert config.train.strategy == "sandwich" and phase.name == "sandwich"
    assert phase.subnets_per_step == SANDWICH_SUBNETS and phase.lr == pytest.approx(0.2 / SANDWICH_SUBNETS)
    assert phase.epochs == sum(p.epochs for p in ofa_schedule(space, 0.1, 0.2))  # as long as OFA's schedule


def test_epochs_scale_override_scales_every_phase(tmp_path: Path) -> None:
    config = load_config(ROOT / "experiments" / "cifar10_ofa_mbv3.yaml", epochs_scale=0.25)
    assert [p.epochs for p in config.train.resolved_phases(config.get_space())] == [3, 1, 1, 1, 1, 1]


def test_run_dir_resolution(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    config = parse_config(base())
    assert RunDir.for_config(config).root == tmp_path / "runs" / "t"
    assert RunDir.for_config(parse_config(base(run_dir="elsewhere"))).root == tmp_path / "elsewhere"
    run = RunDir.for_config(config, tmp_path / "x")
    assert run.root == tmp_path / "x" and run.supernet_checkpoint == tmp_path / "x" / "checkpoints" / "supernet.pt"
    run.create().write_config(config)
    assert config.config_hash in run.config_copy.read_text()
    assert isinstance(parse_config(yaml.safe_load(run.config_copy.read_text())), ExperimentConfig)


def test_load_supernet_of_an_untrained_run_is_a_usage_error(tmp_path: Path) -> None:
    from nas.rundir import load_supernet

    with pytest.raises(UsageError, match="nas train"):
        load_supernet(tmp_path / "never-trained")
    (tmp_path / "bad" / "checkpoints").mkdir(parents=True)
    (tmp_path / "bad" / "checkpoints" / "supernet.pt").write_bytes(b"junk")
    with pytest.raises(UsageError, match="corrupted"):
        load_supernet(tmp_path / "bad")


@pytest.mark.parametrize("command", ["train", "search", "run"])
@pytest.mark.parametrize("section", [{"search": {"n_trails": 5}}, {"latency": {"repeats": 0}},
                                     {"devices": [{"id": "d", "max_latency_ms": float("inf")}]}])
def test_every_command_refuses_a_bad_section_before_any_work(tmp_path: Path, capsys, command, section) -> None:
    import ray

    from tests.cli_helpers import fails_in_one_line

    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump(base(run_dir=str(tmp_path / "run"), **section)))
    fails_in_one_line(capsys, [command, config], next(iter(section)))
    assert not (tmp_path / "run").exists() and not ray.is_initialized()


def test_run_refuses_a_transfer_source_with_nothing_to_transfer_before_any_work(tmp_path: Path, capsys) -> None:
    """Issue 14, item 2 through the flow: ``latency.fit_from`` must name a device fitted earlier in the config
    or one whose predictor or table is stored; checked before any stage runs."""
    import ray

    from tests.cli_helpers import fails_in_one_line

    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump(base(run_dir=str(tmp_path / "run"), devices=["local-cpu-1t-torch"],
                                          latency={"fit_from": "phone", "fit_samples": 5})))
    fails_in_one_line(capsys, ["run", config, "--home", tmp_path / "home"], "latency.fit_from",
                      "unknown device 'phone'")
    assert not (tmp_path / "run").exists() and not ray.is_initialized()


def test_latency_load_reference_reaches_the_measurement_protocol() -> None:
    from nas.latency_config import LatencySettings

    config = LatencySettings.parse({"load_reference": True, "clock": "thread_cpu"}).measure_config()
    assert config.load_reference and config.clock == "thread_cpu"
    assert not LatencySettings.parse({}).measure_config().load_reference  # MeasureConfig's default


def test_kernel_transform_lr_is_checked_and_counts_in_the_hash_only_when_set() -> None:
    # Hashes of configs saved before train.kernel_transform_lr existed (computed at 3a0b66e): unchanged.
    assert parse_config(base()).config_hash == "1941646d6fdf638b"
    assert parse_config(base(train={"kernel_transform_lr": 1.0})).config_hash == "1941646d6fdf638b"
    quickstart = yaml.safe_load((ROOT / "experiments" / "quickstart.yaml").read_text())
    assert quickstart["train"].pop("zero_init_residual")  # set since; the rest as it was at 3a0b66e
    assert parse_config(quickstart).config_hash == "3015f3d7d7db18f1"
    frozen = parse_config(base(train={"kernel_transform_lr": 0}))
    assert frozen.train.kernel_transform_lr == 0 and frozen.config_hash != "1941646d6fdf638b"
    with pytest.raises(UsageError, match="train.kernel_transform_lr"):
        parse_config(base(train={"kernel_transform_lr": -0.5}))


@pytest.mark.parametrize("key, value", [("zero_init_residual", True), ("sandwich_labels", "largest"),
                                        ("sandwich_dropout", "largest")])
def test_bignas_settings_count_in_the_hash_only_when_set(key: str, value) -> None:
    default = {"zero_init_residual": False, "sandwich_labels": "all", "sandwich_dropout": "all"}[key]
    assert parse_config(base(train={key: default})).config_hash == "1941646d6fdf638b"  # runs saved before it
    changed = parse_config(base(train={key: value}))
    assert getattr(changed.train, key) == value and changed.config_hash != "1941646d6fdf638b"


@pytest.mark.parametrize("train, words", [
    ({"sandwich_labels": "smallest"}, ["train.sandwich_labels", "smallest", "all", "largest"]),
    ({"sandwich_dropout": "none"}, ["train.sandwich_dropout", "none", "all", "largest"]),
    ({"zero_init_residual": "yes"}, ["train.zero_init_residual", "bool"]),
    ({"strategy": "progressive_shrinking", "sandwich_dropout": "largest"},
     ["train.sandwich_dropout", "sandwich rule only", "progressive_shrinking"]),
    ({"sandwich_labels": "largest", "phases": [{"name": "s", "epochs": 1, "lr": 0.1, "subnets_per_step": 3,
                                                "elastic": {"depths": [2, 3, 4]}}]},
     ["train.sandwich_labels", "phase 's'", "distill_weight > 0"]),
])
def test_bignas_settings_that_do_not_fit_are_refused_at_load(train: dict, words: list[str]) -> None:
    with pytest.raises(UsageError) as info:
        parse_config(base(train=train))
    message = str(info.value)
    assert all(word in message for word in words), message
