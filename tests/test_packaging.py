"""Packaging: pins agree between pyproject.toml and the conda environment, the Snakemake minimum version is
the same everywhere, and an installed (non-editable) copy of the package finds its schema."""

import os
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent


def test_conda_env_matches_pyproject_dependencies():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    env = yaml.safe_load((ROOT / "envs" / "mammoclip.yaml").read_text())
    pip_section = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict))
    assert sorted(pip_section) == sorted(project["dependencies"])
    assert "python=3.11" in env["dependencies"]
    assert project["requires-python"] == ">=3.11,<3.12"


def _snakemake_floor(requirement: str) -> str:
    match = re.fullmatch(r"snakemake>=([0-9.]+),<[0-9.]+", requirement.replace(" ", ""))
    assert match, f"unexpected Snakemake requirement {requirement!r}"
    return match.group(1)


def snakemake_minimum_versions() -> dict[str, list[str]]:
    """Every place that states the lowest Snakemake version, and the version(s) it states."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    env = yaml.safe_load((ROOT / "envs" / "mammoclip.yaml").read_text())
    pip_section = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict))
    found = {
        "pyproject.toml": [
            _snakemake_floor(d) for d in project["dependencies"] if d.startswith("snakemake>")
        ],
        "envs/mammoclip.yaml": [_snakemake_floor(d) for d in pip_section if d.startswith("snakemake>")],
        "Snakefile": re.findall(r'^min_version\("([0-9.]+)"\)', (ROOT / "Snakefile").read_text(), re.M),
    }
    # prose: "Snakemake >= X" in the profiles, the README and the CI notes
    texts = [*sorted((ROOT / "profiles").glob("*/*.yaml")), ROOT / "README.md", ROOT / ".ci/slurm/NOTES.md"]
    for path in texts:
        versions = re.findall(r"Snakemake\s*>=\s*([0-9][0-9.]*[0-9])", path.read_text(), re.I)
        if versions:
            found[str(path.relative_to(ROOT))] = versions
    return found


def test_snakemake_minimum_version_is_the_same_everywhere():
    found = snakemake_minimum_versions()
    for place in ("pyproject.toml", "envs/mammoclip.yaml", "Snakefile", "profiles/slurm/profile.yaml"):
        assert found.get(place), f"{place} states no Snakemake minimum version"
    versions = {v for vs in found.values() for v in vs}
    assert len(versions) == 1, f"the Snakemake minimum version differs between files: {found}"
    import snakemake

    installed = tuple(int(x) for x in re.findall(r"\d+", snakemake.__version__)[:2])
    assert installed >= tuple(int(x) for x in versions.pop().split(".")[:2])


def test_a_non_editable_install_finds_the_schema(tmp_path):
    """The schema is package data: a copy installed into a folder (not the source tree) validates a config."""
    src = tmp_path / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(ROOT / name, src / name)
    shutil.copytree(ROOT / "mammoclip", src / "mammoclip", ignore=shutil.ignore_patterns("__pycache__"))
    target = tmp_path / "installed"
    pip = [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation", "--no-index"]
    subprocess.run([*pip, "--target", str(target), str(src)], check=True, capture_output=True, cwd=tmp_path)
    assert (target / "mammoclip" / "schema.yaml").is_file()
    shutil.rmtree(src)  # nothing may be read from the copied sources

    env = {**os.environ, "PYTHONPATH": str(target), "HF_HUB_OFFLINE": "1"}
    probe = subprocess.run(
        [
            sys.executable,
            "-c",
            "import mammoclip.config as c; print(c.SCHEMA_PATH); print(c.load_schema()['title'])",
        ],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
    )
    assert probe.returncode == 0, probe.stderr
    schema_path, title = probe.stdout.splitlines()
    assert Path(schema_path).is_relative_to(target), schema_path
    assert title == "mammoclip configuration"

    check = subprocess.run(
        [
            sys.executable,
            str(target / "bin" / "mammoclip"),
            "check-config",
            str(ROOT / "config" / "config.yaml"),
        ],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
    )
    assert check.returncode == 0, check.stdout + check.stderr
    assert check.stdout.startswith("ok:"), check.stdout
