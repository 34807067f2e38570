"""The SLURM profile by name, as users type it from the repository root: `--profile slurm` (the root's link to
profiles/slurm), layered with `--profile profiles/ci-slurm` in CI.

Without a cluster: a dry run from the root loads both profiles and prints the plan; a copy of the repository
without the link fails with Snakemake's "no profile.yaml" message. With root (or passwordless sudo):
.ci/slurm/ci.sh --demo brings up slurmctld, slurmd and munge on localhost (installing Debian's packages
when missing), runs the scaled-down demo DAG with that spelling to the paper tables, asserts that the
GPU-annotated rules were submitted with and given a GPU and the CPU rules not, and stops the daemons by
their pids, also on failure. Every wait inside is bounded; that test adds an outer bound.
"""

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SNAKEMAKE = str(Path(sys.executable).parent / "snakemake")
#: the command users type from the repository root (and .ci/slurm/run-workflow.sh runs in its WORKDIR)
PROFILES = ("--profile", "slurm", "--profile", "profiles/ci-slurm")
NO_PROFILE = "profile directory given (slurm), but no profile.yaml (or config.yaml) found"


def _dry_run(cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", **(env or {})}
    return subprocess.run(
        [SNAKEMAKE, *PROFILES, "-n"], cwd=cwd, capture_output=True, text=True, env=env, timeout=600
    )


def test_the_root_link_names_the_slurm_profile():
    link = ROOT / "slurm"
    assert link.is_symlink(), "the repository root must hold the link slurm -> profiles/slurm"
    assert os.readlink(link) == "profiles/slurm"  # relative: it works in every clone
    assert (link / "profile.yaml").samefile(ROOT / "profiles" / "slurm" / "profile.yaml")


def test_both_profiles_load_by_name_from_the_repository_root():
    """No cluster needed: a dry run parses the profiles and the workflow and prints the plan."""
    result = _dry_run(ROOT)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-6000:]
    assert "Using profiles slurm and profiles/ci-slurm" in output, output[:2000]
    assert "This was a dry-run" in output or "Nothing to be done" in output, output[-3000:]


def test_without_the_link_the_profile_name_fails_clearly(tmp_path):
    """A copy of the workflow without the root link stops at once with Snakemake's message; with it, runs."""
    copy = tmp_path / "repo"
    copy.mkdir()
    shutil.copy2(ROOT / "Snakefile", copy / "Snakefile")
    for folder in ("rules", "config", "profiles", "workflow_scripts", "report", "mammoclip"):
        shutil.copytree(
            ROOT / folder, copy / folder, symlinks=True, ignore=shutil.ignore_patterns("__pycache__")
        )
    # only the copy's own folder may be searched: no profile of that name in the user's or site config
    isolated = {"XDG_CONFIG_HOME": str(tmp_path / "home-config"), "XDG_CONFIG_DIRS": str(tmp_path / "site")}
    result = _dry_run(copy, isolated)
    assert result.returncode != 0
    assert NO_PROFILE in result.stdout + result.stderr, result.stdout + result.stderr

    shutil.copy2(ROOT / "slurm", copy / "slurm", follow_symlinks=False)  # the link as a clone has it
    result = _dry_run(copy, isolated)
    assert result.returncode == 0, (result.stdout + result.stderr)[-6000:]
    assert "Using profiles slurm and profiles/ci-slurm" in result.stdout + result.stderr


def _can_be_root() -> bool:
    if os.geteuid() == 0:
        return True
    sudo = shutil.which("sudo")
    return bool(sudo) and subprocess.run([sudo, "-n", "true"], capture_output=True).returncode == 0


@pytest.mark.slow
@pytest.mark.slurm
@pytest.mark.skipif(not _can_be_root(), reason="a local SLURM needs root or passwordless sudo")
def test_demo_through_the_slurm_profile_on_a_real_scheduler(tmp_path):
    env = {**os.environ, "TMPDIR": str(tmp_path), "HF_HUB_OFFLINE": "1"}
    result = subprocess.run(
        ["bash", str(ROOT / ".ci/slurm/ci.sh"), "--demo"],
        capture_output=True,
        text=True,
        env=env,
        timeout=3000,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-8000:]
    assert "SLURM CI checks passed" in output
    # run-workflow.sh logs its command: the spelling users type from the repository root
    assert "--profile slurm --profile profiles/ci-slurm" in output, output[-4000:]
    # check_gpu_requests.py's job table: rule, state, GPUs requested, GPUs allocated
    for rule in ("pretrain", "embed_images", "classify"):
        assert re.search(rf"\s{rule}\s+COMPLETED\s+1\s+1\s", output), f"{rule}: " + output[-4000:]
    for rule in ("convert_shard", "classification_table"):
        assert re.search(rf"\s{rule}\s+COMPLETED\s+0\s+0\s", output), f"{rule}: " + output[-4000:]
    assert "OK: GPU rules" in output
    # nothing of ours is left running
    ps = subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True).stdout
    assert str(tmp_path) not in ps
