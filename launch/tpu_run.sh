#!/usr/bin/env bash
# Runs a training stage on every worker of a Cloud TPU VM slice; see --help.
set -euo pipefail

usage() {
  cat <<'EOF'
Usage: launch/tpu_run.sh [OPTIONS] COMMAND [-- TRAINING ARGS...]

Runs `python -m mobilebert_jax.main TRAINING ARGS` on every worker of a Cloud TPU VM slice.

Commands:
  start        create the slice (or reuse it; a PREEMPTED or TERMINATED one is deleted and created again),
               copy this checkout to every worker, set up the virtual environment (skipped when
               setup.py has not changed), stop stale processes holding the TPU, and start the training
               command on all workers (--worker=all), each logging to its own file. Running `start`
               again after a preemption resumes the run from its latest checkpoint in --workdir.
  logs         show the logs: --worker=N follows worker N's log (default 0); --worker=all prints the
               last lines of every worker's log
  fetch-logs DIR  copy every worker's log into the local directory DIR
  stop         send SIGTERM to the training processes (every host saves a checkpoint at the same
               step and exits), then SIGKILL whatever is left after --grace seconds
  status       the slice's state, and whether each worker's training process is alive
  delete       delete the slice

Options (each also read from the environment variable in brackets):
  --name=NAME           slice name [TPU_NAME] (required)
  --zone=ZONE           zone [TPU_ZONE] (required)
  --project=PROJECT     project [TPU_PROJECT] (default: gcloud's configured project)
  --accelerator=TYPE    accelerator type for creating the slice, e.g. v3-256 [TPU_ACCELERATOR] (default v3-8)
  --version=VERSION     TPU VM software version [TPU_RUNTIME_VERSION] (default tpu-ubuntu2204-base)
  --spot                create a spot (preemptible) slice [TPU_SPOT=1]
  --run=NAME            names the run's log and pid files, so several runs can share a slice [TPU_RUN] (default train)
  --worker=W            for logs: a worker index, or all (default 0)
  --grace=SECONDS       for stop and start: how long a stopping process may take to checkpoint (default 120)
  --pip_spec=SPEC       what the workers install into their venv [TPU_PIP_SPEC] (default -e .[tpu])
  --dry_run             print the gcloud commands instead of running them; the slice is taken to be absent,
                        so `start` shows its creation
  -h, --help            this text

On the workers: the code lives in ~/mobilebert-jax, the venv in ~/mobilebert-jax-venv (set up again only when
~/.mobilebert-jax-setup no longer holds "<sha256 of setup.py> <pip spec>"), logs in
~/mobilebert-jax-logs/RUN-HOSTNAME.log. --workdir must be storage every worker shares (gs://BUCKET/...):
checkpoints written there survive the slice.

Example (the paper's teacher on 256 TPU v3 cores):
  launch/tpu_run.sh --name=ibbert --zone=europe-west4-a --accelerator=v3-256 --spot start -- \
      --config=experiments/teacher_ib_bert_large.py --workdir=gs://BUCKET/runs/teacher
  launch/tpu_run.sh --name=ibbert --zone=europe-west4-a logs
  launch/tpu_run.sh --name=ibbert --zone=europe-west4-a start -- ...   # after a preemption: the same command
EOF
}

die() { echo "tpu_run.sh: $*" >&2; exit 2; }

NAME=${TPU_NAME:-}
ZONE=${TPU_ZONE:-}
PROJECT=${TPU_PROJECT:-}
ACCELERATOR=${TPU_ACCELERATOR:-v3-8}
VERSION=${TPU_RUNTIME_VERSION:-tpu-ubuntu2204-base}
SPOT=${TPU_SPOT:-0}
RUN=${TPU_RUN:-train}
PIP_SPEC=${TPU_PIP_SPEC:--e .[tpu]}
WORKER=0
GRACE=120
DRY_RUN=0
COMMAND=""
TRAIN_ARGS=()

while [[ $# -gt 0 ]]; do
  case "$1" in
    -h|--help) usage; exit 0 ;;
    --name=*) NAME=${1#*=} ;;
    --zone=*) ZONE=${1#*=} ;;
    --project=*) PROJECT=${1#*=} ;;
    --accelerator=*) ACCELERATOR=${1#*=} ;;
    --version=*) VERSION=${1#*=} ;;
    --spot) SPOT=1 ;;
    --run=*) RUN=${1#*=} ;;
    --worker=*) WORKER=${1#*=} ;;
    --grace=*) GRACE=${1#*=} ;;
    --pip_spec=*) PIP_SPEC=${1#*=} ;;
    --dry_run) DRY_RUN=1 ;;
    --) shift; TRAIN_ARGS=("$@"); break ;;
    -*) die "unknown option $1 (see --help)" ;;
    *)
      if [[ -z "$COMMAND" ]]; then COMMAND=$1
      elif [[ "$COMMAND" == fetch-logs && -z "${LOG_DIR:-}" ]]; then LOG_DIR=$1
      else die "unexpected argument $1 (training arguments go after --)"; fi ;;
  esac
  shift
done

[[ -n "$COMMAND" ]] || { usage >&2; exit 2; }
[[ -n "$NAME" ]] || die "--name (or TPU_NAME) is required"
[[ -n "$ZONE" ]] || die "--zone (or TPU_ZONE) is required"
[[ "$RUN" =~ ^[A-Za-z0-9_.-]+$ ]] || die "--run=$RUN: use letters, digits, '.', '_' and '-' only"
[[ "$GRACE" =~ ^[0-9]+$ ]] || die "--grace=$GRACE: must be a whole number of seconds"
[[ "$WORKER" == all || "$WORKER" =~ ^[0-9]+$ ]] || die "--worker=$WORKER: must be a worker index or all"

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
CODE='~/mobilebert-jax'
VENV='~/mobilebert-jax-venv'
LOGS='~/mobilebert-jax-logs'
LOCATION=(--zone="$ZONE")
[[ -n "$PROJECT" ]] && LOCATION+=(--project="$PROJECT")

# Runs a gcloud command, or prints it (shell-quoted, one line) under --dry_run.
gc() {
  if [[ "$DRY_RUN" == 1 ]]; then
    local quoted
    quoted=$(printf '%q ' gcloud "$@")
    echo "${quoted% }"
  else
    gcloud "$@"
  fi
}

tpu() { gc compute tpus tpu-vm "$@"; }
on_workers() { tpu ssh "$NAME" "${LOCATION[@]}" --worker="$1" --command="$2"; }

# A remote shell function: whether process $1 runs (a zombie, exited but not yet reaped, does not).
ALIVE='alive() { ps -o stat= -p "$1" 2>/dev/null | grep -qv Z; }'

# Stops this run's process on a worker: SIGTERM (the trainer saves a checkpoint and exits), SIGKILL after the grace.
stop_script() {
  cat <<EOF
$ALIVE
pidfile=$LOGS/$RUN.pid
if [ -f "\$pidfile" ] && alive "\$(cat "\$pidfile")"; then
  pid=\$(cat "\$pidfile"); kill -TERM "\$pid"
  for _ in \$(seq $GRACE); do alive "\$pid" || break; sleep 1; done
  if alive "\$pid"; then echo "\$HOSTNAME: process \$pid still running after ${GRACE}s: SIGKILL"; kill -KILL "\$pid"; fi
fi
rm -f "\$pidfile"
EOF
}

# Stale processes: this run's earlier process, then anything else holding a TPU device (a crashed run's
# leftover, a notebook), which would make libtpu fail to open the chips.
prepare_script() {
  local want="$1"
  cat <<EOF
set -euo pipefail
mkdir -p $LOGS
$(stop_script)
sudo=\$([ "\$(id -u)" = 0 ] || echo sudo)
for dev in /dev/accel* /dev/vfio/[0-9]*; do
  if [ -e "\$dev" ]; then \$sudo fuser -k -KILL "\$dev" 2>/dev/null || true; fi
done
\$sudo rm -f /tmp/libtpu_lockfile
rm -rf $CODE && mkdir -p $CODE && tar xzf ~/mobilebert-jax.tar.gz -C $CODE
if [ -x $VENV/bin/python ] && [ "\$(cat ~/.mobilebert-jax-setup 2>/dev/null)" = "$want" ]; then
  echo "\$HOSTNAME: venv up to date"
else
  python3 -m venv $VENV
  $VENV/bin/pip install -q --upgrade pip
  (cd $CODE && set -f && $VENV/bin/pip install -q $PIP_SPEC)
  echo "$want" > ~/.mobilebert-jax-setup
fi
EOF
}

start_script() {
  local args
  args=$(printf '%q ' "${TRAIN_ARGS[@]}")
  cat <<EOF
cd $CODE
nohup $VENV/bin/python -m mobilebert_jax.main $args> $LOGS/$RUN-\$HOSTNAME.log 2>&1 < /dev/null &
echo \$! > $LOGS/$RUN.pid
echo "\$HOSTNAME: started process \$! (log $LOGS/$RUN-\$HOSTNAME.log)"
EOF
}

slice_state() {
  # Empty when the slice does not exist.
  gcloud compute tpus tpu-vm describe "$NAME" "${LOCATION[@]}" --format='value(state)' 2>/dev/null || true
}

create_slice() {
  local flags=(--accelerator-type="$ACCELERATOR" --version="$VERSION")
  [[ "$SPOT" == 1 ]] && flags+=(--spot)
  tpu create "$NAME" "${LOCATION[@]}" "${flags[@]}"
}

ensure_slice() {
  local state
  if [[ "$DRY_RUN" == 1 ]]; then
    tpu describe "$NAME" "${LOCATION[@]}" --format='value(state)'
    create_slice
    return
  fi
  state=$(slice_state)
  for _ in $(seq 60); do
    case "$state" in
      READY) echo "slice $NAME is READY: reusing it"; return ;;
      "") echo "slice $NAME does not exist: creating it ($ACCELERATOR)"; create_slice; return ;;
      PREEMPTED|TERMINATED)
        echo "slice $NAME is $state: deleting and creating it again"
        tpu delete "$NAME" "${LOCATION[@]}" --quiet
        create_slice; return ;;
      CREATING|STARTING|RESTARTING|REPAIRING) echo "slice $NAME is $state: waiting"; sleep 30; state=$(slice_state) ;;
      *) die "slice $NAME is in state $state; delete it (launch/tpu_run.sh ... delete) or wait" ;;
    esac
  done
  die "slice $NAME still not READY after 30 minutes (state $state)"
}

copy_code() {
  local tarball="${TMPDIR:-/tmp}/tpu_run-$NAME-$RUN.tar.gz"
  if [[ "$DRY_RUN" == 0 ]]; then
    git -C "$REPO" rev-parse --git-dir >/dev/null 2>&1 ||
      die "$REPO is not a git checkout: cannot tell code from outputs"
    # Tracked and untracked-but-not-ignored files (what `git status` shows), without venvs, runs or caches;
    # tracked files deleted in the working tree are left out.
    (cd "$REPO" && git ls-files -z --cached --others --exclude-standard | \
      xargs -0 -r sh -c 'for f; do [ -e "$f" ] && printf "%s\0" "$f"; done' sh | \
      tar czf "$tarball" --null -T -)
  fi
  tpu scp "$tarball" "$NAME:~/mobilebert-jax.tar.gz" "${LOCATION[@]}" --worker=all
  [[ "$DRY_RUN" == 1 ]] || rm -f "$tarball"
}

case "$COMMAND" in
  start)
    [[ ${#TRAIN_ARGS[@]} -gt 0 ]] ||
      die "start needs the training arguments after --, e.g. -- --config=experiments/X.py --workdir=gs://BUCKET/run"
    want="$(sha256sum "$REPO/setup.py" | cut -d' ' -f1) $PIP_SPEC"
    ensure_slice
    copy_code
    on_workers all "$(prepare_script "$want")"
    on_workers all "$(start_script)"
    ;;
  logs)
    if [[ "$WORKER" == all ]]; then
      on_workers all "tail -n 20 $LOGS/$RUN-*.log"
    else
      on_workers "$WORKER" "tail -n 50 -F $LOGS/$RUN-*.log"
    fi
    ;;
  fetch-logs)
    [[ -n "${LOG_DIR:-}" ]] || die "fetch-logs needs a local directory: fetch-logs DIR"
    mkdir -p "$LOG_DIR"
    tpu scp "$NAME:$LOGS/$RUN-*.log" "$LOG_DIR" "${LOCATION[@]}" --worker=all
    ;;
  stop)
    on_workers all "$(stop_script)"
    ;;
  status)
    tpu describe "$NAME" "${LOCATION[@]}" --format='value(state)'
    on_workers all "$ALIVE
if [ -f $LOGS/$RUN.pid ] && alive \$(cat $LOGS/$RUN.pid); then
  echo \"\$HOSTNAME: running (process \$(cat $LOGS/$RUN.pid))\"
else
  echo \"\$HOSTNAME: not running\"
fi"
    ;;
  delete)
    tpu delete "$NAME" "${LOCATION[@]}" --quiet
    ;;
  *) die "unknown command $COMMAND (see --help)" ;;
esac
