"""The demo DAG (scaled down) through the SLURM profile on a real single-node SLURM: .ci/slurm/ci.sh --demo.

It brings up slurmctld, slurmd and munge on localhost (installing Debian's packages when missing), runs the
workflow with `--profile profiles/slurm --profile profiles/ci-slurm` to the paper tables, asserts that the
GPU-annotated rules were submitted with and given a GPU and the CPU rules not, and stops the daemons by
their pids, also on failure. Every wait inside is bounded; this test adds an outer bound.
"""

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
pytestmark = [pytest.mark.slow, pytest.mark.slurm]


def _can_be_root() -> bool:
    if os.geteuid() == 0:
        return True
    sudo = shutil.which("sudo")
    return bool(sudo) and subprocess.run([sudo, "-n", "true"], capture_output=True).returncode == 0


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
    # check_gpu_requests.py's job table: rule, state, GPUs requested, GPUs allocated
    for rule in ("pretrain", "embed_images", "classify"):
        assert re.search(rf"\s{rule}\s+COMPLETED\s+1\s+1\s", output), f"{rule}: " + output[-4000:]
    for rule in ("convert_shard", "classification_table"):
        assert re.search(rf"\s{rule}\s+COMPLETED\s+0\s+0\s", output), f"{rule}: " + output[-4000:]
    assert "OK: GPU rules" in output
    # nothing of ours is left running
    ps = subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True).stdout
    assert str(tmp_path) not in ps
