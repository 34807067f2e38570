#!/usr/bin/env bash
# Run Snakemake through the CI SLURM (.ci/slurm/start.sh) with the repository's SLURM profile plus the CI
# overlay, under a hard time limit, then optionally assert which rules were submitted with GPU requests.
#
# Usage: .ci/slurm/run-workflow.sh [--timeout SECONDS] [--gpu-rule RULE]... [--cpu-rule RULE]...
#                                  WORKDIR [SNAKEMAKE_ARGS...]
#   WORKDIR          where Snakemake runs: a clone of the repository (or a folder with copies of its `slurm`
#                    link and `profiles/` folder, plus -s SNAKEFILE)
#   SNAKEMAKE_ARGS   targets, --configfile, -s ... passed on unchanged
#   --timeout        seconds before Snakemake is stopped (default $MAMMOCLIP_SLURM_RUN_TIMEOUT or 1800)
#   --gpu-rule/--cpu-rule   after a successful run: check_gpu_requests.py asserts that every job of the
#                    rule asked SLURM for a GPU / for none
# Environment: SNAKEMAKE (default: the repository's .venv/bin/snakemake, else the one on PATH).
#
# The effective command, run in WORKDIR, is the spelling users type from the repository root
#   snakemake --profile slurm --profile profiles/ci-slurm SNAKEMAKE_ARGS
# (`slurm` is the root's link to profiles/slurm; later profiles override earlier ones per top-level key),
# with HF_HUB_OFFLINE=1: the jobs inherit Snakemake's environment (the plugin submits with --export=ALL).
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/../.." && pwd)

log() { printf '[ci-slurm %(%H:%M:%S)T] %s\n' -1 "$*" >&2; }
die() {
	log "ERROR: $*"
	exit 1
}
usage() {
	sed -n '2,/^set -euo/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//' >&2
	exit 2
}

timeout_s=${MAMMOCLIP_SLURM_RUN_TIMEOUT:-1800}
check_args=()
while (($#)); do
	case $1 in
	--timeout) timeout_s=${2:?--timeout needs a value} && shift 2 ;;
	--gpu-rule | --cpu-rule) check_args+=("$1" "${2:?$1 needs a rule name}") && shift 2 ;;
	-h | --help) usage ;;
	--) shift && break ;;
	-*) die "unknown option $1 (snakemake options go after WORKDIR)" ;;
	*) break ;;
	esac
done
(($#)) || usage
workdir=$1
shift
[[ -d $workdir ]] || die "working directory $workdir does not exist"
for profile in slurm profiles/ci-slurm; do
	[[ -f $workdir/$profile/profile.yaml ]] ||
		die "$workdir/$profile/profile.yaml not found: WORKDIR must be a clone of the repository (its root holds the link slurm -> profiles/slurm)"
done
[[ $timeout_s =~ ^[0-9]+$ ]] || die "--timeout must be a number of seconds"

snakemake=${SNAKEMAKE:-}
if [[ -z $snakemake ]]; then
	if [[ -x $repo/.venv/bin/snakemake ]]; then
		snakemake=$repo/.venv/bin/snakemake
	else
		snakemake=$(command -v snakemake) || die "snakemake not found: set SNAKEMAKE or create $repo/.venv"
	fi
fi
# The checker needs only the standard library; prefer the venv's interpreter next to snakemake.
python=$(dirname "$snakemake")/python
[[ -x $python ]] || python=python3

state=$(timeout 10 sinfo -h -o %T 2>/dev/null || true)
[[ $state == idle || $state == mixed || $state == allocated ]] ||
	die "no usable SLURM node (sinfo says '${state:-nothing}'): run .ci/slurm/start.sh first"

export HF_HUB_OFFLINE=1
cmd=("$snakemake" --profile slurm --profile profiles/ci-slurm "$@")
log "in $workdir: ${cmd[*]}"
t0=$SECONDS
rc=0
# The plugin can wait forever (e.g. on a status query that never answers) and ignores SIGTERM while it
# does: send SIGTERM at the limit, SIGKILL 30 s later. timeout signals Snakemake's whole process group.
(cd "$workdir" && timeout -k 30 "$timeout_s" "${cmd[@]}") || rc=$?
elapsed=$((SECONDS - t0))

if ((rc == 124 || rc == 137)); then
	log "ERROR: Snakemake did not finish within ${timeout_s} s; SLURM's view of the jobs:"
	timeout 10 squeue --states=all -o '%.8i %.30k %.10T %.10M %R' >&2 || true
	exit 1
elif ((rc != 0)); then
	log "ERROR: Snakemake failed (exit $rc) after ${elapsed} s; job logs: $workdir/.snakemake/slurm_logs"
	exit "$rc"
fi
log "Snakemake finished in ${elapsed} s"

if ((${#check_args[@]})); then
	"$python" "$here/check_gpu_requests.py" --workdir "$workdir" "${check_args[@]}"
fi
