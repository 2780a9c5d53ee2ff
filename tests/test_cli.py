"""The `rotary` command: help, version, `info`, and one-line user errors with exit code 2."""

import subprocess
import sys
from pathlib import Path

import pytest

import rotary
from rotary import cli
from rotary.commands import info
from rotary.config import PRESETS
from rotary.errors import RotaryError


def run_module(*args):
    return subprocess.run(
        [sys.executable, "-m", "rotary", *args], capture_output=True, text=True, timeout=120
    )


def test_help_exits_zero_and_lists_verbs():
    proc = run_module("--help")
    assert proc.returncode == 0, proc.stderr
    assert "usage: rotary" in proc.stdout
    assert "info" in proc.stdout
    assert proc.stderr == ""


def test_version_exits_zero():
    proc = run_module("--version")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == f"rotary {rotary.__version__}"


def test_info_lists_presets():
    proc = run_module("info")
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    for name, cfg in PRESETS.items():
        row = [line for line in lines if line.split()[:1] == [name]]
        assert len(row) == 1, (name, proc.stdout)
        fields = row[0].split()
        assert int(fields[1]) == cfg.n_layer and int(fields[2]) == cfg.d_model
        millions = cfg.estimate_num_parameters() / 1e6
        assert fields[-1] == f"{millions:.1f}M"
    assert "CPU fp32 GEMM: " in proc.stdout


@pytest.mark.parametrize("verb", ["info", "train"])
def test_a_bad_cpu_gemm_setting_is_one_line_and_exit_2_before_any_output(verb, monkeypatch, tmp_path):
    monkeypatch.setenv("ROTARY_CPU_GEMM", "fastest")
    recipe = Path(__file__).resolve().parents[1] / "recipes" / "demo.yaml"
    args = ["train", str(recipe), "--output-dir", str(tmp_path / "run")] if verb == "train" else [verb]
    proc = run_module(*args)
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0
    assert "ROTARY_CPU_GEMM: unknown CPU GEMM backend 'fastest'" in proc.stderr
    assert proc.stdout == "" and not (tmp_path / "run").exists()


def test_no_verb_prints_help(capsys):
    assert cli.main([]) == 0
    assert "usage: rotary" in capsys.readouterr().out


def test_rotary_error_in_a_verb_is_one_line_and_exit_2(monkeypatch, capsys):
    def broken(args):
        raise RotaryError("config file not found: nowhere.yaml")

    monkeypatch.setattr(info, "run", broken)  # register() picks up the module's run
    code = cli.main(["info"])
    out, err = capsys.readouterr()
    assert code == 2
    assert err == "rotary: error: config file not found: nowhere.yaml\n"
    assert len(err.splitlines()) == 1 and "Traceback" not in err
    assert out == ""


def test_bugs_keep_their_traceback(monkeypatch):
    def buggy(args):
        raise ZeroDivisionError("a bug")

    monkeypatch.setattr(info, "run", buggy)
    with pytest.raises(ZeroDivisionError):
        cli.main(["info"])


def test_unknown_verb_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["no-such-verb"])
    assert exit_info.value.code == 2
    assert "invalid choice" in capsys.readouterr().err
