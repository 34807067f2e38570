#!/usr/bin/env bash
# Bring up a real single-node SLURM cluster on localhost (slurmctld + slurmd + munge) for CI, with one
# fake GPU so that jobs asking for --gpus=1 get scheduled. Stop it with .ci/slurm/stop.sh.
#
# Settings (environment):
#   MAMMOCLIP_SLURM_DIR              scratch folder for state, spool, logs, pid files (/tmp/mammoclip-slurm)
#   MAMMOCLIP_SLURMCTLD_PORT         slurmctld port (26817); must be free
#   MAMMOCLIP_SLURMD_PORT            slurmd port (26818); must be free
#   MAMMOCLIP_SLURM_START_TIMEOUT    seconds to wait for the node to become idle (60)
#   MAMMOCLIP_SLURM_MEM_MARGIN_MB    memory kept out of the node's RealMemory (1024)
#   MAMMOCLIP_SLURM_MIN_JOB_AGE      seconds finished jobs stay visible to squeue/scontrol (3600)
#
# Idempotent: if the daemons it started earlier still run and the node is idle, it only says so.
# Needs root (re-runs itself with passwordless sudo if available) because it may apt-get install the
# packages and must write /etc/slurm/slurm.conf (slurm-jobstep drops SLURM_CONF for the inner srun, so
# the default path is the only one that works). An existing slurm.conf/gres.conf that start.sh did not
# write is moved to $MAMMOCLIP_SLURM_DIR/backup and put back by stop.sh.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source-path=SCRIPTDIR source=common.sh
source "$here/common.sh"
need_root "$@"

t0=$SECONDS
MEM_MARGIN_MB=${MAMMOCLIP_SLURM_MEM_MARGIN_MB:-1024}
# SLURM's default is 300 s. CI keeps finished jobs for an hour so that check_gpu_requests.py, which runs
# after the whole workflow, still sees the early jobs of a run that lasts several minutes.
MIN_JOB_AGE=${MAMMOCLIP_SLURM_MIN_JOB_AGE:-3600}

# --- already up? -------------------------------------------------------------------------------------
ctld_pid=$(pid_of "$SLURMCTLD_PIDFILE")
slurmd_pid=$(pid_of "$SLURMD_PIDFILE")
if alive "$ctld_pid" slurmctld && alive "$slurmd_pid" slurmd; then
	state=$(timeout 10 sinfo -h -n localhost -o %T 2>/dev/null || true)
	if [[ $state == idle || $state == mixed || $state == allocated ]]; then
		log "SLURM from $SLURM_CI_DIR is already running (slurmctld $ctld_pid, slurmd $slurmd_pid, node $state)"
		exit 0
	fi
	log "daemons from an earlier start run but the node is '${state:-unknown}': restarting them"
fi
if alive "$ctld_pid" slurmctld || alive "$slurmd_pid" slurmd; then
	"$here/stop.sh"
fi

# --- packages ----------------------------------------------------------------------------------------
missing=()
for prog in slurmctld slurmd sinfo sbatch munged; do
	command -v "$prog" >/dev/null || missing+=("$prog")
done
if ((${#missing[@]})); then
	log "installing slurmctld slurmd slurm-client munge (missing: ${missing[*]})"
	export DEBIAN_FRONTEND=noninteractive
	timeout 300 apt-get update -qq || die "apt-get update failed"
	timeout 600 apt-get install -y -qq --no-install-recommends slurmctld slurmd slurm-client munge >/dev/null ||
		die "apt-get install slurmctld slurmd slurm-client munge failed"
	# On a systemd host the packages start their own services (which fail without a slurm.conf, or
	# would later race ours): stop them. munge's service is kept; it is reused below.
	if [[ -d /run/systemd/system ]] && command -v systemctl >/dev/null; then
		timeout 30 systemctl stop slurmctld.service slurmd.service 2>/dev/null || true
	fi
fi
for prog in slurmctld slurmd sinfo scontrol sbatch munged munge unmunge runuser; do
	command -v "$prog" >/dev/null || die "'$prog' not found after installation"
done

# --- ports -------------------------------------------------------------------------------------------
port_in_use() { timeout 2 bash -c ": <>/dev/tcp/127.0.0.1/$1" 2>/dev/null; }
for port in "$SLURMCTLD_PORT" "$SLURMD_PORT"; do
	if port_in_use "$port"; then
		die "port $port is in use; choose free ports with MAMMOCLIP_SLURMCTLD_PORT / MAMMOCLIP_SLURMD_PORT"
	fi
done

mkdir -p "$RUN_DIR" "$LOG_DIR" "$BACKUP_DIR" "$SLURM_CI_DIR/state" "$SLURM_CI_DIR/spool"
# fresh daemon logs per start (the previous ones are kept as *.prev), so failures show only this start
for f in slurmctld.log slurmd.log jobcomp.log; do
	if [[ -e $LOG_DIR/$f ]]; then mv -f "$LOG_DIR/$f" "$LOG_DIR/$f.prev"; fi
done

# --- munge -------------------------------------------------------------------------------------------
munge_works() { timeout 5 munge -n 2>/dev/null | timeout 5 unmunge >/dev/null 2>&1; }
if munge_works; then
	log "reusing the munged that is already running"
else
	key=/etc/munge/munge.key
	if [[ ! -s $key ]]; then
		log "creating $key"
		install -d -o munge -g munge -m 700 /etc/munge
		(umask 077 && dd if=/dev/urandom of="$key" bs=1024 count=1 status=none)
		chown munge:munge "$key"
		chmod 400 "$key"
	fi
	install -d -o munge -g munge -m 755 /run/munge
	install -d -o munge -g munge -m 700 /var/log/munge /var/lib/munge
	log "starting munged"
	# munged forks and writes its pid to /run/munge/munged.pid; --force clears a stale socket left
	# by a munged that died.
	timeout 30 runuser -u munge -- munged --force || die "munged failed to start"
	pid=$(pid_of /run/munge/munged.pid)
	alive "$pid" munged || die "munged did not record a running pid in /run/munge/munged.pid"
	echo "$pid" >"$MUNGED_PIDFILE"
	deadline=$((SECONDS + 10))
	until munge_works; do
		((SECONDS < deadline)) || {
			dump_logs
			die "munge does not answer after 10 s"
		}
		sleep 0.2
	done
fi

# --- configuration -----------------------------------------------------------------------------------
cpus=$(nproc)
mem_total_mib=$(($(awk '/^MemTotal:/ {print $2}' /proc/meminfo) / 1024))
real_mem=$((mem_total_mib - MEM_MARGIN_MB))
((real_mem >= 1024)) || die "only ${mem_total_mib} MiB of memory; need at least $((1024 + MEM_MARGIN_MB))"

mkdir -p "$SLURM_ETC"
for f in slurm.conf gres.conf; do
	target=$SLURM_ETC/$f
	if [[ -e $target ]] && ! is_ours "$target"; then
		[[ -e $BACKUP_DIR/$f ]] && die "$target is not ours, but $BACKUP_DIR/$f already holds a backup: resolve by hand"
		log "moving the existing $target to $BACKUP_DIR/$f (stop.sh restores it)"
		mv "$target" "$BACKUP_DIR/$f"
	fi
done

cat >"$SLURM_ETC/slurm.conf" <<EOF
$SLURM_CI_MARKER (scratch: $SLURM_CI_DIR)
ClusterName=mammoclip-ci
SlurmctldHost=localhost
SlurmctldPort=$SLURMCTLD_PORT
SlurmdPort=$SLURMD_PORT
SlurmUser=root
AuthType=auth/munge
MpiDefault=none
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
# without a default memory per CPU every job would take the whole node, one job at a time
DefMemPerCPU=1024
# a node that was down for not responding comes back by itself
ReturnToService=2
# the node's resources are what this file says (nproc, MemTotal minus a margin), even when the hardware
# reports more sockets or cores
SlurmdParameters=config_overrides
# no accounting database: sacct finds nothing, job status must come from squeue
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
# one line per finished job (state, exit code, node, times) that outlives MinJobAge, for debugging
# (GPUs are not in it: recording gres/gpu as a TRES needs slurmdbd)
JobCompType=jobcomp/filetxt
JobCompLoc=$LOG_DIR/jobcomp.log
# finished jobs stay visible to squeue/scontrol this long: must be >= 3x the plugin's first status
# delay for squeue-based status; check_gpu_requests.py reads the jobs' GPU requests from scontrol
MinJobAge=$MIN_JOB_AGE
KillWait=5
InactiveLimit=0
SlurmctldTimeout=30
SlurmdTimeout=30
StateSaveLocation=$SLURM_CI_DIR/state
SlurmdSpoolDir=$SLURM_CI_DIR/spool
SlurmctldPidFile=$SLURMCTLD_PIDFILE
SlurmdPidFile=$SLURMD_PIDFILE
SlurmctldLogFile=$LOG_DIR/slurmctld.log
SlurmdLogFile=$LOG_DIR/slurmd.log
GresTypes=gpu
NodeName=localhost NodeAddr=127.0.0.1 CPUs=$cpus RealMemory=$real_mem Gres=gpu:fake:1 State=UNKNOWN
PartitionName=debug Nodes=localhost Default=YES MaxTime=INFINITE State=UP
EOF

# A fake GPU: a File= line is required (a count-only line leaves the node INVAL); /dev/null stands in.
# Its model (GRES type) is "fake", so both `--gpus=1` and a profile's gpu_model (`--gpus=fake:1`) schedule.
cat >"$SLURM_ETC/gres.conf" <<EOF
$SLURM_CI_MARKER (scratch: $SLURM_CI_DIR)
NodeName=localhost Name=gpu Type=fake File=/dev/null Count=1
EOF

# --- daemons -----------------------------------------------------------------------------------------
fail() {
	dump_logs
	log "stopping what was started"
	"$here/stop.sh" || true
	die "$*"
}

log "starting slurmctld (port $SLURMCTLD_PORT)"
rm -f "$SLURMCTLD_PIDFILE" "$SLURMD_PIDFILE"
# -c: start from an empty state (no jobs or node states from an earlier CI run)
started=$SECONDS
timeout 30 slurmctld -c || fail "slurmctld failed to start"
deadline=$((SECONDS + SLURM_START_TIMEOUT))
until [[ $(timeout 5 scontrol ping 2>/dev/null || true) == *"is UP"* ]]; do
	daemon_dead "$SLURMCTLD_PIDFILE" slurmctld "$started" && fail "slurmctld exited (see its log above)"
	((SECONDS < deadline)) || fail "slurmctld does not answer 'scontrol ping' after ${SLURM_START_TIMEOUT} s"
	sleep 0.3
done
alive "$(pid_of "$SLURMCTLD_PIDFILE")" slurmctld || fail "slurmctld is not running"

log "starting slurmd (port $SLURMD_PORT, $cpus CPUs, $real_mem MiB, 1 GPU of model 'fake')"
started=$SECONDS
timeout 30 slurmd -N localhost || fail "slurmd failed to start"

state=
until [[ $state == idle ]]; do
	((SECONDS < deadline)) || fail "node 'localhost' is '${state:-unknown}', not idle, after ${SLURM_START_TIMEOUT} s"
	sleep 0.3
	daemon_dead "$SLURMD_PIDFILE" slurmd "$started" && fail "slurmd exited (see its log above)"
	state=$(timeout 5 sinfo -h -n localhost -o %T 2>/dev/null || true)
done

log "SLURM is up in $((SECONDS - t0)) s: partition debug, node localhost idle ($cpus CPUs, $real_mem MiB, gpu:fake:1)"
