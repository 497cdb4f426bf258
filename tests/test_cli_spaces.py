"""``nas spaces`` and ``nas arch info``: output, --json stability, one-line errors with exit status 2."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from nas.cli import main
from search_spaces import arch_to_string, get_space, largest, list_spaces


def run_cli(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_spaces_lists_every_registered_space(capsys):
    code, out, _ = run_cli(capsys, "spaces")
    assert code == 0
    for name in list_spaces():
        assert name in out


def test_spaces_json_is_stable(capsys):
    code, out, _ = run_cli(capsys, "spaces", "--json")
    assert code == 0
    data = json.loads(out)
    assert [s["name"] for s in data["spaces"]] == list_spaces()
    assert set(data["spaces"][0]) == {"name", "family", "description", "num_stages", "max_blocks", "resolutions",
                                      "num_classes", "num_archs_log10"}


@pytest.mark.parametrize("name", list_spaces())
def test_arch_info_largest_json(capsys, name):
    code, out, _ = run_cli(capsys, "arch", "info", name, "--largest", "--json")
    assert code == 0
    info = json.loads(out)["archs"][0]
    space = get_space(name)
    assert info["arch"] == arch_to_string(space, largest(space))
    assert info["params"] > 1e6 and info["macs"] > 1e7
    assert len(info["stages"]) == len(space.stages)


def test_arch_info_string_and_sample(capsys):
    space = get_space("ofa_mbv3_cifar")
    text = arch_to_string(space, largest(space))
    code, out, _ = run_cli(capsys, "arch", "info", "ofa_mbv3_cifar", text)
    assert code == 0 and text in out and "MACs" in out
    code, out, _ = run_cli(capsys, "arch", "info", "ofa_mbv3_cifar", "--sample", "3", "--json")
    assert code == 0 and len(json.loads(out)["archs"]) == 3


@pytest.mark.parametrize("argv, message", [
    (["arch", "info", "nope", "--largest"], "unknown space 'nope'; registered:"),
    (["arch", "info", "ofa_mbv3_cifar", "r99/k3_e3"], "has 1 stages"),
    (["arch", "info", "ofa_mbv3_cifar", "--largest", "--smallest"], "exactly one of"),
    (["arch", "info", "ofa_mbv3_cifar", "--sample", "0"], "--sample must be >= 1"),
    (["arch", "info", "ofa_mbv3_cifar", "--sample", "100000000"], "--sample must be >= 1 and <= 10000"),
    (["arch", "info", "ofa_mbv3_cifar", "--sample", "10001"], "got 10001"),
    (["arch", "info", "ofa_mbv3_cifar", "r32/k7_e6_k5,k7_e6/k7_e6,k7_e6/k7_e6,k7_e6/k7_e6,k7_e6/k7_e6,k7_e6"],
     "gives its kernel size twice ('k7' and 'k5')"),
    (["arch"], "'nas arch' needs a subcommand: info"),
    (["latency"], "'nas latency' needs a subcommand: build, import-ofa, fit, eval"),
    (["import"], "'nas import' needs a subcommand: ofa-supernet, ofa-accuracy-predictor"),
    (["arch", "info", "ofa_mbv3_cifar", "--ofa-config", "{bad"], "not valid JSON"),
    (["arch", "info", "ofa_mbv3_cifar", "--ofa-config", '{"ks": [3], "e": [3], "d": [2]}'], "'d' has 1 entries"),
])
def test_bad_input_gives_one_line_and_status_2(capsys, argv, message):
    code, out, err = run_cli(capsys, *argv)
    assert code == 2
    assert message in err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err


@pytest.mark.parametrize("argv, words", [
    (["latency", "import-ofa"], ["lookup_table.yaml", "devices/<id>/tables/<space>.json", "$HWNAS_HOME"]),
    (["latency", "fit"], ["predictors/<space>/<kind>.json", "measurements/<space>.json", "$HWNAS_HOME"]),
    (["latency", "eval"], ["devices/<id>/eval/<space>.csv", "$HWNAS_HOME"]),
    (["import", "ofa-supernet"], ["DIR/checkpoints/supernet.pt", "DIR/import.json"]),
    (["import", "ofa-accuracy-predictor"], ["DIR/search/accuracy_predictor.json", "the run's supernet's space"]),
])
def test_leaf_help_says_what_the_command_does_and_writes(capsys, monkeypatch, argv, words):
    monkeypatch.setenv("COLUMNS", "1000")  # argparse wraps at the terminal's width, breaking long paths
    with pytest.raises(SystemExit) as exit_info:
        main([*argv, "--help"])
    assert exit_info.value.code == 0
    description = " ".join(capsys.readouterr().out.split("\n\n")[1].split())  # between usage and arguments
    for word in words:
        assert word in description, description


def test_console_script_runs_as_a_process():
    proc = subprocess.run([sys.executable, "-m", "nas", "arch", "info", "ofa_mbv3_w1.0", "r1/x"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip().startswith("nas: error:") and "Traceback" not in proc.stderr
