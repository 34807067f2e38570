# Shared settings and helpers of .ci/slurm/start.sh and stop.sh (sourced, not executed).
# shellcheck shell=bash disable=SC2034  # the variables are used by the scripts that source this file

# Scratch folder for everything the test cluster writes: state, spool, logs, pid files, backups.
SLURM_CI_DIR=${MAMMOCLIP_SLURM_DIR:-/tmp/mammoclip-slurm}
# Ports below the Linux ephemeral range (32768-60999), away from SLURM's defaults (6817/6818), so that
# neither outgoing connections nor a SLURM already installed on the machine take them.
SLURMCTLD_PORT=${MAMMOCLIP_SLURMCTLD_PORT:-26817}
SLURMD_PORT=${MAMMOCLIP_SLURMD_PORT:-26818}
# Seconds to wait for the node to become idle (the whole start normally takes ~2 s).
SLURM_START_TIMEOUT=${MAMMOCLIP_SLURM_START_TIMEOUT:-60}
# The slurm.conf path is fixed: slurm-jobstep drops SLURM_CONF from the inner srun's environment.
SLURM_ETC=/etc/slurm
# First line of every file we write into /etc/slurm: stop.sh removes only files that carry it.
SLURM_CI_MARKER="# mammoclip-ci-slurm: written by .ci/slurm/start.sh"

RUN_DIR=$SLURM_CI_DIR/run
LOG_DIR=$SLURM_CI_DIR/log
BACKUP_DIR=$SLURM_CI_DIR/backup
SLURMCTLD_PIDFILE=$RUN_DIR/slurmctld.pid
SLURMD_PIDFILE=$RUN_DIR/slurmd.pid
# Only present when start.sh started munged itself (an already running munged is reused, never stopped).
MUNGED_PIDFILE=$RUN_DIR/munged.pid

log() { printf '[ci-slurm %(%H:%M:%S)T] %s\n' -1 "$*" >&2; }
die() {
	log "ERROR: $*"
	exit 1
}

# Root is needed for apt-get, /etc/slurm and the daemons. Re-run under passwordless sudo if possible.
need_root() {
	if [[ $(id -u) -ne 0 ]]; then
		if command -v sudo >/dev/null && sudo -n true 2>/dev/null; then
			log "re-running as root with sudo"
			exec sudo -n --preserve-env=MAMMOCLIP_SLURM_DIR,MAMMOCLIP_SLURMCTLD_PORT,MAMMOCLIP_SLURMD_PORT,MAMMOCLIP_SLURM_START_TIMEOUT,MAMMOCLIP_SLURM_MEM_MARGIN_MB,MAMMOCLIP_SLURM_MIN_JOB_AGE bash "$0" "$@"
		fi
		die "$(basename "$0") must run as root (or with passwordless sudo)"
	fi
}

# pid_of PIDFILE: print the pid recorded in PIDFILE (nothing if absent or empty).
pid_of() {
	[[ -s $1 ]] || return 0
	local pid
	read -r pid <"$1" || true
	[[ $pid =~ ^[0-9]+$ ]] && printf '%s\n' "$pid"
	return 0
}

# alive PID NAME: true if PID runs and is the program NAME (guards against a recycled pid).
alive() {
	[[ -n ${1:-} && -r /proc/$1/comm ]] || return 1
	local comm
	comm=$(cat "/proc/$1/comm" 2>/dev/null) || return 1
	[[ $comm == "$2" ]]
}

# daemon_dead PIDFILE NAME STARTED: true if the daemon launched at $SECONDS=STARTED has died: its pid file
# names a process that is gone, or no pid file appeared within 10 s. (The daemons fork before they read
# their state, so a fatal start-up error shows up here, not as an exit code.)
daemon_dead() {
	if [[ -s $1 ]]; then
		! alive "$(pid_of "$1")" "$2"
	else
		((SECONDS - $3 > 10))
	fi
}

# wait_gone PID NAME SECONDS: true once the process has exited, false after SECONDS.
wait_gone() {
	local deadline=$((SECONDS + $3))
	while alive "$1" "$2"; do
		((SECONDS < deadline)) || return 1
		sleep 0.2
	done
}

# stop_pidfile PIDFILE NAME: stop exactly the process recorded in PIDFILE (TERM, then KILL), bounded.
stop_pidfile() {
	local pid
	pid=$(pid_of "$1")
	if [[ -z $pid ]]; then
		return 0
	fi
	if alive "$pid" "$2"; then
		log "stopping $2 (pid $pid)"
		kill -TERM "$pid" 2>/dev/null || true
		if ! wait_gone "$pid" "$2" 15; then
			log "$2 (pid $pid) ignored SIGTERM for 15 s, sending SIGKILL"
			kill -KILL "$pid" 2>/dev/null || true
			wait_gone "$pid" "$2" 5 || log "WARNING: $2 (pid $pid) still running"
		fi
	else
		log "$2 (pid $pid from $1) is not running"
	fi
	rm -f "$1"
}

# is_ours FILE: true if FILE was written by start.sh (its first line starts with the marker).
is_ours() {
	local first
	[[ -f $1 ]] || return 1
	IFS= read -r first <"$1" || true
	[[ $first == "$SLURM_CI_MARKER"* ]]
}

# Print the end of the daemons' logs (on failure).
dump_logs() {
	local f
	for f in "$LOG_DIR"/slurmctld.log "$LOG_DIR"/slurmd.log /var/log/munge/munged.log; do
		if [[ -s $f ]]; then
			printf '===== last lines of %s =====\n' "$f" >&2
			tail -n 25 "$f" >&2
		fi
	done
}
