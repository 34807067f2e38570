#!/usr/bin/env bash
# The whole SLURM check in one command: bring up the local SLURM, run workflows through it with the
# repository's profile + CI overlay, assert the GPU requests, tear SLURM down (also on failure).
#
# Usage: .ci/slurm/ci.sh [--demo]
#   (always)  check-workflow/Snakefile: one CPU job and one `gpu=1` job (~20 s). Asserts SLURM ran both,
#             the GPU job asked for and got a GPU and the CPU job did not, and the jobs saw
#             HF_HUB_OFFLINE=1 from the submitting shell.
#   --demo    also the whole demo DAG, scaled down by demo-config.yaml (phantoms, preprocessing, reports,
#             annotations, 1 pretraining epoch, embeddings, zero-shot, classifiers, the paper tables) in a
#             copy of the working tree. The config asks for 1 GPU for pretraining, embedding and the
#             classifiers, so these rules are submitted with --gpus=1 (torch finds no CUDA on the fake GPU
#             and runs on the CPU); asserts their GPU requests, none for the CPU rules, and the tables.
# Needs root or passwordless sudo (for start.sh/stop.sh). Set MAMMOCLIP_SLURM_KEEP_WORK=1 to keep the
# working folders (printed at the end; kept anyway when a step fails).
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/../.." && pwd)
log() { printf '[ci-slurm %(%H:%M:%S)T] %s\n' -1 "$*" >&2; }

demo=0
case ${1:-} in
--demo) demo=1 ;;
"") ;;
*)
	log "usage: $0 [--demo]"
	exit 2
	;;
esac

work=$(mktemp -d "${TMPDIR:-/tmp}/mammoclip-slurm-ci.XXXXXX")
timings=()
ok=0
finish() {
	local t=$SECONDS
	"$here/stop.sh" || log "WARNING: stop.sh failed"
	timings+=("tear-down: $((SECONDS - t)) s")
	log "timings: $(printf '%s; ' "${timings[@]}")"
	if ((ok)) && [[ ${MAMMOCLIP_SLURM_KEEP_WORK:-0} != 1 ]]; then
		rm -rf "$work"
	else
		log "working folders kept in $work"
	fi
}
trap finish EXIT

t=$SECONDS
"$here/start.sh"
timings+=("bring-up: $((SECONDS - t)) s")

# --- tiny check workflow -------------------------------------------------------------------------------
t=$SECONDS
mkdir -p "$work/check"
# the profiles as a clone has them: the root's relative link `slurm -> profiles/slurm` and the folder
cp -a "$repo/slurm" "$repo/profiles" "$work/check/"
"$here/run-workflow.sh" --timeout 300 --gpu-rule gpu_job --cpu-rule cpu_job \
	"$work/check" -s "$here/check-workflow/Snakefile"
for f in cpu gpu; do
	line=$(cat "$work/check/$f.txt")
	log "$f job saw: $line"
	[[ $line =~ SLURM_JOB_ID=[0-9]+ ]] || {
		log "ERROR: the $f job did not run under SLURM"
		exit 1
	}
	[[ $line == *"HF_HUB_OFFLINE=1"* ]] || {
		log "ERROR: the $f job did not inherit HF_HUB_OFFLINE=1 (sbatch --export=ALL)"
		exit 1
	}
done
[[ $(cat "$work/check/gpu.txt") != *"CUDA_VISIBLE_DEVICES=unset"* ]] || {
	log "ERROR: SLURM set no CUDA_VISIBLE_DEVICES for the GPU job"
	exit 1
}
timings+=("check workflow: $((SECONDS - t)) s")

# --- the demo DAG, scaled down, to the paper tables ------------------------------------------------------
if ((demo)); then
	t=$SECONDS
	# A copy of the working tree as it is (tracked and untracked, not ignored files), without results.
	mkdir -p "$work/demo"
	(
		cd "$repo"
		git ls-files -z --cached --others --exclude-standard |
			while IFS= read -r -d '' f; do if [[ -e $f ]]; then printf '%s\0' "$f"; fi; done |
			tar --null -T - -cf -
	) | tar -xf - -C "$work/demo"
	# GPU rules get their GPU count from demo-config.yaml (gpus: 1), not from --set-resources
	"$here/run-workflow.sh" --timeout 2400 \
		--gpu-rule pretrain --gpu-rule embed_images --gpu-rule classify --gpu-rule detect \
		--gpu-rule factor_train --gpu-rule factor_localise \
		--cpu-rule convert_shard --cpu-rule zero_shot --cpu-rule classification_table \
		--cpu-rule detection_table --cpu-rule factor_embeddings --cpu-rule localisation_table \
		"$work/demo" --configfile "$here/demo-config.yaml" -- all
	for protocol in paper clean; do
		table="$work/demo/results/tables/$protocol/classification.md"
		grep -q "| vindr | Mass | AUROC | finetune |" "$table" || {
			log "ERROR: $table lacks the Mass finetune row"
			exit 1
		}
		table="$work/demo/results/tables/$protocol/detection.md"
		grep -q "| vindr | Mass | mAP@0.5 | finetune | 100 % | [0-9]" "$table" || {
			log "ERROR: $table lacks our Mass finetune AP"
			exit 1
		}
		table="$work/demo/results/tables/$protocol/localisation.md"
		grep -q "| vindr | Mass | pointing game | weak localisation | 100 % | [0-9]" "$table" || {
			log "ERROR: $table lacks our Mass pointing game"
			exit 1
		}
	done
	log "tables: $(find "$work/demo/results/tables" -type f | wc -l) files"
	timings+=("demo to the tables: $((SECONDS - t)) s")
fi

ok=1
log "SLURM CI checks passed"
