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


# ---- demo-docs ----------------------------------------------------------------------------------------

README = """# project

intro

<!-- demo-table:start -->
old table
<!-- demo-table:end -->

## Later section
"""


@pytest.fixture
def demo_results(tmp_path):
    """A fake demo results folder: the two clean Mass figures and the clean table (and a paper one)."""
    clean = tmp_path / "results" / "tables" / "clean"
    clean.mkdir(parents=True)
    (clean / "efficiency_Mass.png").write_bytes(b"\x89PNG efficiency")
    (clean / "roc_Mass.png").write_bytes(b"\x89PNG roc")
    (clean / "efficiency_density.png").write_bytes(b"\x89PNG other")
    (clean / "classification.md").write_text("**Table.** clean.\n\n| a | b |\n|---|---|\n| 1 | 2 |\n")
    (tmp_path / "results" / "tables" / "paper").mkdir()
    (tmp_path / "results" / "tables" / "paper" / "classification.md").write_text("paper table\n")
    readme = tmp_path / "README.md"
    readme.write_text(README)
    return tmp_path


def _demo_docs_argv(root, out, readme):
    return ["demo-docs", "--results", str(root / "results"), "--out", str(out), "--readme", str(readme)]


def test_demo_docs_copies_the_figures_and_writes_the_table_into_the_readme(demo_results, capsys):
    out, readme = demo_results / "docs" / "demo", demo_results / "README.md"
    argv = _demo_docs_argv(demo_results, out, readme)
    assert main(argv) == 0
    assert sorted(p.name for p in out.iterdir()) == [
        "classification_clean.md",
        "efficiency_Mass.png",
        "roc_Mass.png",
    ]
    assert (out / "efficiency_Mass.png").read_bytes() == b"\x89PNG efficiency"
    assert (out / "roc_Mass.png").read_bytes() == b"\x89PNG roc"
    table = (demo_results / "results/tables/clean/classification.md").read_text()
    assert (out / "classification_clean.md").read_text() == table
    # the table replaces the old one between the markers; the rest of the README is kept
    text = readme.read_text()
    assert text == README.replace("old table\n", "\n" + table + "\n")
    assert "updated" in capsys.readouterr().out
    # a second run changes nothing
    assert main(argv) == 0 and readme.read_text() == text
    assert f"unchanged: {readme}" in capsys.readouterr().out


def test_demo_docs_needs_the_demo_results_and_the_readme_markers(demo_results, capsys):
    (demo_results / "results/tables/clean/roc_Mass.png").unlink()
    out = demo_results / "docs" / "demo"
    assert main(["demo-docs", "--results", str(demo_results / "results"), "--out", str(out)]) == 2
    assert "roc_Mass.png" in capsys.readouterr().err and not out.exists()  # nothing written
    (demo_results / "results/tables/clean/roc_Mass.png").write_bytes(b"\x89PNG roc")
    readme = demo_results / "README.md"
    readme.write_text("# no markers\n")
    argv = _demo_docs_argv(demo_results, out, readme)
    assert main(argv) == 2
    assert "demo-table:start" in capsys.readouterr().err and readme.read_text() == "# no markers\n"


def test_the_readme_shows_the_committed_demo_files():
    """The README embeds the committed figure and holds the committed table between its markers."""
    from mammoclip.demo_docs import readme_with_table

    readme = (ROOT / "README.md").read_text()
    demo = ROOT / "docs" / "demo"
    assert "![" in readme and "(docs/demo/efficiency_Mass.png)" in readme
    assert (demo / "efficiency_Mass.png").read_bytes().startswith(b"\x89PNG")
    assert (demo / "roc_Mass.png").read_bytes().startswith(b"\x89PNG")
    assert readme_with_table(readme, (demo / "classification_clean.md").read_text()) == readme
    assert "mammoclip demo-docs --results results --out docs/demo --readme README.md" in readme
