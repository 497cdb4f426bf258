"""Config values and command lines that used to pass the checks and fail later (or never finish): refused at
load, in one line naming the key and what is allowed, before anything is written."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import yaml

import nas.config
from nas.cli import main
from nas.config import RAY_COUNT_LIMIT, load_config, parse_config
from nas.errors import UsageError
from nas.latency_config import INT_RANGES
from nas.search_config import INT_MAXIMUMS, INT_MINIMUMS, MAX_REFINE_EVALUATIONS, SearchConfig
from search_spaces import RayAddressError, connect_ray, ray_address_problem
from tests.cli_helpers import fails_in_one_line
from tests.test_input_checks_config import raw_config, refused, write_config

ROOT = Path(__file__).resolve().parents[1]


# --- the config file itself -----------------------------------------------------------------------------------


def test_a_config_path_that_is_not_a_regular_file_is_refused(tmp_path, capsys):
    fifo = tmp_path / "pipe.yaml"
    os.mkfifo(fifo)  # opening it would wait for a writer
    for path in ("/dev/zero", tmp_path, fifo):
        fails_in_one_line(capsys, ["search", path, "--run-dir", tmp_path / "run"], str(path), "not a regular file")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pipe.yaml"]


def test_a_config_file_over_the_size_limit_is_refused(tmp_path, monkeypatch):
    config = write_config(tmp_path)
    monkeypatch.setattr(nas.config, "CONFIG_SIZE_LIMIT", config.stat().st_size)
    assert load_config(config).name == "t"
    config.write_text(config.read_text() + "\n")
    with pytest.raises(UsageError, match=r"cfg.yaml is larger than .* a config is a small YAML text file"):
        load_config(config)


@pytest.mark.parametrize("name", sorted(p.name for p in (ROOT / "experiments").glob("*.yaml")))
def test_every_shipped_config_still_loads(name):
    assert load_config(ROOT / "experiments" / name).name == Path(name).stem


# --- ray.address and RAY_ADDRESS ------------------------------------------------------------------------------


@pytest.mark.parametrize("address", ["auto", "local", "127.0.0.1:6379", "head-node.example:6379",
                                     "ray://10.0.0.1:10001", "[::1]:6379", None])
def test_ray_addresses_ray_takes_are_accepted(address):
    assert parse_config(raw_config(ray={"enabled": True, "address": address})).ray.address == address


@pytest.mark.parametrize("address", ["abc", "", "host:", ":6379", "host:port", "host:70000", "http://host:8265",
                                     "ray://host", "a b:1", "::1:6379"])
def test_malformed_ray_addresses_are_refused_at_load(tmp_path, capsys, address):
    refused(["ray.address", "auto, local, HOST:PORT or ray://HOST:PORT"], ray={"enabled": True, "address": address})
    config = write_config(tmp_path, ray={"enabled": True, "address": address})
    fails_in_one_line(capsys, ["train", config], "ray.address")
    assert not (tmp_path / "run").exists()


def test_a_malformed_ray_address_variable_is_refused_before_ray_starts(monkeypatch):
    ray = pytest.importorskip("ray")
    monkeypatch.setattr("search_spaces._ray.set_ray_environment", lambda: None)
    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(ray, "init", lambda **kwargs: pytest.fail(f"ray.init({kwargs}) was called"))
    monkeypatch.setenv("RAY_ADDRESS", "abc")
    with pytest.raises(RayAddressError, match=r"RAY_ADDRESS 'abc' is not allowed; expected auto, local"):
        connect_ray(num_cpus=1)
    assert ray_address_problem("abc") and ray_address_problem("ray://h:10001") is None


def test_a_cluster_that_does_not_answer_is_one_line(tmp_path, monkeypatch, capsys):
    ray = pytest.importorskip("ray")

    def refuse(**kwargs):
        raise ConnectionError("Could not find any running Ray instance.\nPlease specify the one to connect to.")

    monkeypatch.setattr("search_spaces._ray.set_ray_environment", lambda: None)
    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(ray, "init", refuse)
    with pytest.raises(RayAddressError, match=r"^cannot connect to the Ray cluster at address '10.0.0.1:6379': "
                                              r"Could not find any running Ray instance. Please specify"):
        connect_ray("10.0.0.1:6379")
    monkeypatch.setenv("RAY_ADDRESS", "auto")
    monkeypatch.setattr("nas.commands.search.run", lambda args: connect_ray())
    fails_in_one_line(capsys, ["search", tmp_path / "cfg.yaml"], "RAY_ADDRESS 'auto'", "Could not find")


# --- upper bounds of counts -----------------------------------------------------------------------------------


@pytest.mark.parametrize("key", ["num_workers", "cpus_per_worker", "num_cpus", "max_failures", "gpus_per_worker"])
@pytest.mark.parametrize("value", [RAY_COUNT_LIMIT + 1, 10**15, 10**19])
def test_ray_counts_have_an_upper_bound(key, value):
    within_int64 = [f"and <= {RAY_COUNT_LIMIT}"] if value < 2**63 else []  # beyond: "an integer of at most 2**63 - 1"
    refused([f"ray.{key}", "is not allowed", *within_int64], ray={key: value})


def test_ray_counts_at_the_bound_are_accepted():
    ray = parse_config(raw_config(ray={"num_workers": RAY_COUNT_LIMIT, "num_cpus": RAY_COUNT_LIMIT})).ray
    assert ray.num_workers == ray.num_cpus == RAY_COUNT_LIMIT


@pytest.mark.parametrize("key", [*INT_MAXIMUMS, "refine_evaluations"])
@pytest.mark.parametrize("value", ["over", 2**63, 10**19])
def test_search_counts_have_an_upper_bound(key, value):
    high = INT_MAXIMUMS.get(key, MAX_REFINE_EVALUATIONS)
    value = high + 1 if value == "over" else value
    refused([f"search.{key} must be an integer <= {high}; got", f"(allowed: {INT_MINIMUMS.get(key, 0)} to {high})"],
            search={key: value})
    assert getattr(SearchConfig.parse({key: high}), key) == high
    if key in INT_MINIMUMS:
        assert getattr(SearchConfig.parse({key: INT_MINIMUMS[key]}), key) == INT_MINIMUMS[key]


def test_n_trials_flag_has_the_same_bound():
    with pytest.raises(UsageError, match=r"--n-trials must be an integer <= 10000000; got 10000001 \(allowed: 1 to "):
        SearchConfig().with_n_trials(10**7 + 1)
    with pytest.raises(UsageError, match="--n-trials"):
        SearchConfig.parse({}, n_trials=2**63)


@pytest.mark.parametrize("key", sorted(INT_RANGES))
def test_latency_counts_have_an_upper_bound(key):
    low, high = INT_RANGES[key]
    refused([f"latency.{key}", f"an integer >= {low} and <= {high}"], latency={key: 10**19})
    assert getattr(parse_config(raw_config(latency={key: high})).latency, key) == high


# --- values that were accepted and then ignored ---------------------------------------------------------------


@pytest.mark.parametrize("value", [5, "fast", [1], True])
def test_a_device_mapping_value_must_be_null_or_a_mapping(value):
    refused(["devices.local-cpu-1t-ort", "expected null or {max_latency_ms: MS}"],
            devices={"local-cpu-1t-ort": value})
    config = parse_config(raw_config(devices={"local-cpu-1t-ort": None, "b": {"max_latency_ms": 4}}))
    assert config.search.devices == ("local-cpu-1t-ort", "b") and config.search.budgets == {"b": 4.0}


@pytest.mark.parametrize("value", [0, "", [], "8", [8.0]])
def test_latency_budgets_must_be_a_mapping(value):
    refused(["search.latency_budgets_ms must map device ids to milliseconds", f"got {value!r}"],
            search={"latency_budgets_ms": value})
    assert SearchConfig.parse({"latency_budgets_ms": None}).budgets == {}


@pytest.mark.parametrize("value", [1.0, 1.5, -0.1])
def test_momentum_must_be_a_fraction(value):
    refused(["train.momentum", "[0, 1)"], train={"momentum": value})
    assert parse_config(raw_config(train={"momentum": 0.0})).train.momentum == 0.0


def test_digits_take_no_path(tmp_path, capsys):
    refused(["dataset.path", "kind digits", "remove it"], dataset={"path": "/data/digits"})
    config = write_config(tmp_path, dataset={"path": str(tmp_path)})
    fails_in_one_line(capsys, ["train", config, "--no-ray"], "dataset.path")
    assert not (tmp_path / "run").exists()
    assert parse_config(raw_config(dataset={"kind": "folder", "path": "/data/x"})).dataset.path == "/data/x"


# --- run names ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["a\nb", "a\tb", "a\x1bb", "a b", "a/b", ".hidden", "", "é", "a:b"])
def test_run_names_are_plain_folder_names(tmp_path, capsys, name):
    refused(["name:", "letters, digits, -, _"], name=name)
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump({**raw_config(name=name), "run_dir": str(tmp_path / "run")}))
    fails_in_one_line(capsys, ["train", path, "--no-ray"], "name:")
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("name", ["quickstart", "run-1_b", "v1.2", "_x", "7"])
def test_plain_run_names_are_accepted(name):
    assert parse_config(raw_config(name=name)).name == name


# --- the command line -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("argv, prog, needle", [
    (["query", "R", "--device", "d", "--max-latency-ms", "abc"], "nas query", "invalid float value: 'abc'"),
    (["query", "R", "--device", "d", "--max-latency-ms", "-inf"], "nas query", "expected one argument"),
    (["eval", "c.yaml", "--split", "train"], "nas eval", "invalid choice: 'train'"),
    (["latency", "eval", "--clock", "x"], "nas latency eval", "invalid choice: 'x'"),
    (["bogus"], "nas", "invalid choice: 'bogus'"),
])
def test_argparse_errors_are_one_line(capsys, argv, prog, needle):
    with pytest.raises(SystemExit) as info:
        main(argv)
    err = capsys.readouterr().err
    assert info.value.code == 2
    assert err.count("\n") == 1 and err.startswith(f"{prog}: error: ") and "usage:" not in err, err
    assert needle in err and err.endswith(f" (see {prog} --help)\n"), err


@pytest.mark.parametrize("value", ["inf", "1e400", "nan", "0", "-1"])
def test_query_budget_must_be_finite_and_positive(tmp_path, capsys, value):
    fails_in_one_line(capsys, ["query", tmp_path / "run", "--device", "d", f"--max-latency-ms={value}"],
                      "--max-latency-ms must be a finite number of milliseconds > 0")


@pytest.mark.parametrize("section, key, value, needle", [
    ("train", "threads_per_worker", 10**6, "<= 1024"),
    ("train", "bn_recal_images", 10**12, "<= 10000000"),
    ("train", "eval_random_subnets", 10**9, "<= 1000"),
    ("dataset", "image_size", 10**6, "<= 4096"),
    ("dataset", "crop_padding", 10**6, "<= 4096"),
    ("dataset", "loader_workers", 10**6, "<= 1024"),
])
def test_counts_that_size_memory_or_processes_have_an_upper_bound(section, key, value, needle):
    refused([f"{section}.{key}", needle], **{section: {key: value}})


def test_streaming_is_for_folders_only():
    refused(["dataset.stream", "kind folder"], dataset={"kind": "digits", "stream": True})


@pytest.mark.parametrize("flags, needle", [(["--repeats", "100000"], "--repeats must be >= 1 and <= 10000"),
                                           (["--warmup", "-1"], "--warmup must be >= 0 and <= 1000")])
def test_latency_flags_share_the_configs_ranges(tmp_path, monkeypatch, capsys, flags, needle):
    monkeypatch.setenv("HWNAS_HOME", str(tmp_path / "home"))
    fails_in_one_line(capsys, ["latency", "build", "--space", "ofa_mbv3_cifar", "--device", "local-cpu-1t-ort",
                               "--no-ray", *flags], needle)
    assert not (tmp_path / "home").exists() or not any((tmp_path / "home").rglob("device.json"))
