#!/usr/bin/env python3
"""Assert that a Snakemake run submitted its GPU rules to SLURM with a GPU request, and its CPU rules without.

Source of truth is SLURM itself, not Snakemake's log: `scontrol -d show job -o` lists every job of the
run (job name = the plugin's "SLURM run ID"), with the rule in `Comment=rule_<name>[_wildcards_...]`, the
request in `TresPerJob`/`TresPerNode`/`TresPerTask` (e.g. `gres:gpu:1`, `gres:gpu:a100:1`) and the GPUs
actually allocated in `JOB_GRES` (e.g. `gpu:1`). Finished jobs stay visible for MinJobAge seconds (300 on
the CI cluster), so run this right after the workflow. Standard library only.

    check_gpu_requests.py --workdir RUN_DIR --gpu-rule gpu_job --cpu-rule cpu_job

The run ID is read from the newest .snakemake/log/*.snakemake.log of --workdir unless --run-id is given.
Exit status 0 when every assertion holds, 1 otherwise (with a table of the run's jobs).
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
from pathlib import Path

RUN_ID_RE = re.compile(r"SLURM run ID: (\S+)")
# gres:gpu:1, gres:gpu:a100:2, gres/gpu:1, gres/gpu=1 (spellings differ between SLURM versions)
TRES_GPU_RE = re.compile(r"gres[:/]gpu(?::([A-Za-z0-9_.-]+))?[:=](\d+)")
# JOB_GRES=gpu:1 or gpu:a100:1, optionally followed by (IDX:0) or (S:0)
JOB_GRES_RE = re.compile(r"(?:^|,)gpu(?::([A-Za-z0-9_.-]+))?:(\d+)")


def run_id_from_log(workdir: Path) -> str:
    logs = sorted((workdir / ".snakemake" / "log").glob("*.snakemake.log"), key=lambda p: p.stat().st_mtime)
    for log in reversed(logs):
        ids = RUN_ID_RE.findall(log.read_text(errors="replace"))
        if ids:
            return ids[-1]
    sys.exit(
        f"no 'SLURM run ID' in {workdir}/.snakemake/log/*.snakemake.log:"
        " was the run made with the slurm executor?"
    )


def scontrol_jobs() -> list[dict[str, str]]:
    try:
        out = subprocess.run(
            ["scontrol", "-d", "show", "job", "-o"], capture_output=True, text=True, timeout=30, check=True
        ).stdout
    except (OSError, subprocess.SubprocessError) as err:
        sys.exit(f"scontrol failed: {err}")
    jobs = []
    for line in out.splitlines():
        if not line.startswith("JobId="):
            continue  # "No jobs in the system"
        # key=value tokens; the values we read contain no spaces
        jobs.append(dict(re.findall(r"(?:^|\s)([A-Za-z_/:]+)=(\S*)", line)))
    return jobs


def rule_of(job: dict[str, str]) -> str:
    comment = job.get("Comment", "")
    name = re.sub(r"^(rule|group)_", "", comment)
    return name.split("_wildcards_", 1)[0] or "?"


def gpus(text: str, pattern: re.Pattern) -> tuple[int, str]:
    """Total GPU count and model names in a TRES/GRES string."""
    found = pattern.findall(text or "")
    return sum(int(n) for _, n in found), ",".join(sorted({m for m, _ in found if m}))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workdir", type=Path, default=Path.cwd(), help="the workflow's working directory")
    parser.add_argument("--run-id", help="the plugin's SLURM run ID (default: from the newest Snakemake log)")
    parser.add_argument(
        "--gpu-rule", action="append", default=[], help="rule whose jobs must request >= 1 GPU"
    )
    parser.add_argument("--cpu-rule", action="append", default=[], help="rule whose jobs must request no GPU")
    parser.add_argument("--gpu-model", help="model the GPU rules must request (e.g. a100)")
    parser.add_argument(
        "--allow-failed", action="store_true", help="do not require every job to be COMPLETED"
    )
    args = parser.parse_args()

    run_id = args.run_id or run_id_from_log(args.workdir.resolve())
    jobs = [j for j in scontrol_jobs() if j.get("JobName") == run_id]
    print(f"SLURM jobs of run {run_id}:")
    print(f"  {'jobid':>6}  {'rule':<28} {'state':<11} {'gpus req':>8} {'gpus alloc':>10}  request")
    rows = []
    for job in sorted(jobs, key=lambda j: int(re.sub(r"\D.*", "", j["JobId"]) or 0)):
        request = " ".join(
            f"{k}={job[k]}" for k in ("TresPerJob", "TresPerNode", "TresPerTask") if job.get(k)
        )
        req, model = gpus(request, TRES_GPU_RE)
        alloc, _ = gpus(job.get("JOB_GRES", ""), JOB_GRES_RE)
        row = {
            "id": job["JobId"],
            "rule": rule_of(job),
            "state": job.get("JobState", "?"),
            "req": req,
            "model": model,
            "alloc": alloc,
        }
        rows.append(row)
        print(
            f"  {row['id']:>6}  {row['rule']:<28} {row['state']:<11} {req:>8} {alloc:>10}  {request or '-'}"
        )

    errors = []
    if not rows:
        errors.append(
            f"no job named {run_id} is known to slurmctld (jobs are forgotten MinJobAge seconds"
            " after they end; run this check right after the workflow)"
        )
    for rule in args.gpu_rule:
        mine = [r for r in rows if r["rule"] == rule]
        if not mine:
            errors.append(f"GPU rule {rule}: no SLURM job found")
        for r in mine:
            if r["req"] < 1:
                errors.append(f"GPU rule {rule}: job {r['id']} was submitted without a GPU request")
            elif r["state"] == "COMPLETED" and r["alloc"] < 1:
                errors.append(f"GPU rule {rule}: job {r['id']} requested a GPU but SLURM allocated none")
            if args.gpu_model and r["model"] != args.gpu_model:
                errors.append(
                    f"GPU rule {rule}: job {r['id']} requested model '{r['model']}', not '{args.gpu_model}'"
                )
    for rule in args.cpu_rule:
        mine = [r for r in rows if r["rule"] == rule]
        if not mine:
            errors.append(f"CPU rule {rule}: no SLURM job found")
        errors += [
            f"CPU rule {rule}: job {r['id']} requested {r['req']} GPU(s)"
            for r in mine
            if r["req"] or r["alloc"]
        ]
    if not args.allow_failed:
        errors += [
            f"job {r['id']} ({r['rule']}) ended {r['state']}" for r in rows if r["state"] != "COMPLETED"
        ]

    for e in errors:
        print(f"FAIL: {e}", file=sys.stderr)
    if not errors:
        print(
            f"OK: GPU rules {args.gpu_rule or '-'} requested and got GPUs;"
            f" CPU rules {args.cpu_rule or '-'} did not"
        )
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
