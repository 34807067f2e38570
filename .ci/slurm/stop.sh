#!/usr/bin/env bash
# Stop the single-node SLURM started by .ci/slurm/start.sh: cancel its jobs, stop exactly the daemons
# whose pids start.sh recorded (never by name), and put back any slurm.conf/gres.conf it moved away.
# Safe to run twice, or without an earlier start. Logs stay in $MAMMOCLIP_SLURM_DIR/log.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source-path=SCRIPTDIR source=common.sh
source "$here/common.sh"
need_root "$@"

t0=$SECONDS
ctld_pid=$(pid_of "$SLURMCTLD_PIDFILE")

# Cancel jobs first: a running job's slurmstepd outlives slurmd. Only while *our* slurmctld runs, so a
# different cluster configured on this machine is never touched.
if alive "$ctld_pid" slurmctld && command -v squeue >/dev/null; then
	mapfile -t jobs < <(timeout 10 squeue -h -o %i -t PENDING,RUNNING,SUSPENDED,CONFIGURING,COMPLETING 2>/dev/null || true)
	if ((${#jobs[@]})); then
		log "cancelling ${#jobs[@]} job(s): ${jobs[*]}"
		timeout 10 scancel "${jobs[@]}" || log "WARNING: scancel failed"
		deadline=$((SECONDS + 20))
		while [[ -n $(timeout 5 squeue -h -o %i -t RUNNING,COMPLETING 2>/dev/null || true) ]]; do
			((SECONDS < deadline)) || {
				log "WARNING: jobs still running after 20 s"
				break
			}
			sleep 0.5
		done
	fi
fi

stop_pidfile "$SLURMD_PIDFILE" slurmd
stop_pidfile "$SLURMCTLD_PIDFILE" slurmctld
stop_pidfile "$MUNGED_PIDFILE" munged

# Configuration: remove ours, restore what start.sh moved away.
for f in slurm.conf gres.conf; do
	target=$SLURM_ETC/$f
	if is_ours "$target"; then
		rm -f "$target"
	fi
	if [[ -e $BACKUP_DIR/$f ]]; then
		if [[ -e $target ]]; then
			log "WARNING: $target was replaced by someone else; leaving the backup in $BACKUP_DIR/$f"
		else
			log "restoring $target"
			mv "$BACKUP_DIR/$f" "$target"
		fi
	fi
done

log "SLURM stopped in $((SECONDS - t0)) s"
