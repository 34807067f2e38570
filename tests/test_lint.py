"""Lint gates: ruff and mypy for the package, snakefmt and `snakemake --lint` for the workflow, docs links."""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent


def _run(*cmd: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        cmd, cwd=ROOT, capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"}
    )


@pytest.mark.parametrize(
    "cmd",
    [
        ("ruff", "check", "."),
        ("ruff", "format", "--check", "."),
        ("snakefmt", "--check", "Snakefile", "rules"),
    ],
    ids=["ruff-check", "ruff-format", "snakefmt"],
)
def test_formatters_are_clean(cmd):
    result = _run(str(BIN / cmd[0]), *cmd[1:])
    assert result.returncode == 0, result.stdout + result.stderr


def test_snakemake_lint_is_clean():
    result = _run(str(BIN / "snakemake"), "--lint", "--cores", "1")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Congratulations, your workflow is in a good condition!" in result.stdout + result.stderr


def test_mypy_finds_no_type_errors():
    """mypy (a test dependency) on the package, with the settings of pyproject.toml's [tool.mypy]."""
    result = _run(str(BIN / "mypy"))
    assert result.returncode == 0, result.stdout[-8000:] + result.stderr
    assert "Success: no issues found" in result.stdout


#: the sections of docs/upstream.md that docstrings link to (docs/upstream.md#<anchor>)
UPSTREAM_SECTIONS = {
    "preprocessing",
    "reports",
    "vindr-annotations",
    "rsna",
    "models",
    "pretraining",
    "classifiers",
    "detection",
    "mammo-factor",
    "zero-shot",
    "evaluation",
    "checkpoints",
}


def _anchors(markdown: Path) -> set[str]:
    """The anchors GitHub gives the headings of a Markdown file (fenced code skipped)."""
    anchors, fenced = set(), False
    for line in markdown.read_text().splitlines():
        if line.startswith("```"):
            fenced = not fenced
        elif not fenced and (match := re.match(r"#{1,6}\s+(.+)", line)):
            anchors.add(re.sub(r"[^\w\- ]", "", match.group(1).strip().lower()).replace(" ", "-"))
    return anchors


def test_upstream_doc_has_the_sections_docstrings_link_to():
    sections = {
        re.sub(r"[^\w\- ]", "", line[3:].strip().lower()).replace(" ", "-")
        for line in (ROOT / "docs" / "upstream.md").read_text().splitlines()
        if line.startswith("## ")
    }
    assert sections == UPSTREAM_SECTIONS


def test_links_into_docs_resolve():
    """Every `docs/<page>.md#<anchor>` in the code, tests, workflow and README, and every relative link
    inside docs/, names a page and a heading that exist."""
    sources = [
        *ROOT.glob("mammoclip/**/*.py"),
        *ROOT.glob("mammoclip/**/*.yaml"),
        *ROOT.glob("tests/*.py"),
        *ROOT.glob("workflow_scripts/*.py"),
        *ROOT.glob("rules/*.smk"),
        ROOT / "Snakefile",
        ROOT / "README.md",
    ]
    broken = []
    for source in sources:
        for page, anchor in re.findall(r"\bdocs/([\w-]+\.md)(?:#([\w-]+))?", source.read_text()):
            target = ROOT / "docs" / page
            if not target.is_file() or (anchor and anchor not in _anchors(target)):
                broken.append(f"{source.relative_to(ROOT)}: docs/{page}{'#' + anchor if anchor else ''}")
    for page in (ROOT / "docs").glob("*.md"):
        for link in re.findall(r"\]\(([^)\s]+)\)", page.read_text()):
            if re.match(r"[a-z]+://", link):
                continue
            file, _, anchor = link.partition("#")
            target = (page.parent / file).resolve() if file else page
            if not target.exists() or (anchor and anchor not in _anchors(target)):
                broken.append(f"{page.relative_to(ROOT)}: {link}")
    assert not broken, "links to missing pages or headings:\n" + "\n".join(broken)
