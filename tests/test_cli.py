"""The command line: config checking and help text (the benchmark itself is not timed here)."""

import subprocess
import sys
from pathlib import Path

import pytest

from mammoclip.cli import main

ROOT = Path(__file__).resolve().parent.parent


def test_check_config_accepts_the_demo(capsys):
    assert main(["check-config", str(ROOT / "config" / "config.yaml")]) == 0
    assert "ok:" in capsys.readouterr().out


def test_check_config_names_the_bad_key(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("preprocess:\n  widht: 3\n")
    assert main(["check-config", str(bad)]) == 2
    err = capsys.readouterr().err
    assert "config key 'preprocess.widht' is not a known setting; did you mean 'width'?" in err


def test_check_config_show_prints_defaults(capsys):
    assert main(["check-config", "--show", str(ROOT / "config" / "config.yaml")]) == 0
    out = capsys.readouterr().out
    assert "max_failed_fraction: 0.01" in out and "width: 160" in out


def test_console_script_help_lists_commands():
    result = subprocess.run(
        [sys.executable, "-m", "mammoclip.cli", "--help"], capture_output=True, text=True, check=True
    )
    for command in ("version", "check-config", "bench"):
        assert command in result.stdout


def test_unknown_command_exits_with_usage():
    with pytest.raises(SystemExit) as exc:
        main(["frobnicate"])
    assert exc.value.code == 2
