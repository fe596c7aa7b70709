#!/usr/bin/env bash
# Runs a training stage on every worker of a Cloud TPU slice (or several, multislice); see --help.
set -euo pipefail

usage() {
  cat <<'EOF'
Usage: launch/tpu_run.sh [OPTIONS] COMMAND [-- TRAINING ARGS...]

Runs `python -m mobilebert_jax.main TRAINING ARGS` on every worker of a Cloud TPU slice, or of every slice of a
multislice job (--node_count).

Commands:
  start        get the slice: a queued resource NAME (`gcloud compute tpus queued-resources create`), waiting
               until it is ACTIVE; one that is SUSPENDED or FAILED, or whose nodes were PREEMPTED, is deleted
               and requested again. Then copy this checkout to every worker, set up the virtual environment
               (skipped when setup.py, the pip spec and --python have not changed), stop stale processes holding
               the TPU, and start the training command on all workers, each logging to its own file.
               Running `start` again after a preemption resumes the run from its latest checkpoint in --workdir.
  watch        `start`, then poll every --poll seconds until the run has finished: when the slice is
               preempted (queued resource SUSPENDED/FAILED, a node PREEMPTED/TERMINATED) it is requested again
               and the run restarted from its checkpoint, at most --max_restarts times. One preemption is one
               restart: when process 0 stops before the end on a slice that still looks healthy (a preemption
               ends the processes before the slice's state shows it), the slice is checked for --settle
               seconds first, and restarted on a new slice if it turns out preempted, in place otherwise.
               Starting the run failing is checked the same way: a preemption while it started is one
               restart; a failure on a healthy slice ends the watch with its status.
               The run has finished when process 0 exits with status 0 and the trainer's marker
               WORKDIR/FINISHED exists; status 75 (the trainer saved on a SIGTERM: "preempted, resume with the
               same command") is a preemption; status 130 (Ctrl-C) ends the watch with it; any other non-zero
               exit status ends the watch with that status and the log's last lines.
  logs         show the logs: --worker=N follows worker N's log of the first slice (default 0); --worker=all
               prints the last lines of every worker's log
  fetch-logs DIR  copy every worker's log into the local directory DIR
  stop         send SIGTERM to the training processes (every host saves a checkpoint at the same step and
               exits), then SIGKILL whatever is left after --grace seconds; a watch then ends
  status       the slice's state, and whether each worker's training process is alive
  delete       delete the slice (the queued resource and its nodes)

Options (each also read from the environment variable in brackets):
  --name=NAME           queued resource name; its node is NAME, or NAME-0 ... NAME-(N-1) with --node_count=N
                        [TPU_NAME] (required)
  --zone=ZONE           zone [TPU_ZONE] (required)
  --project=PROJECT     project [TPU_PROJECT] (default: gcloud's configured project)
  --accelerator=TYPE    accelerator type of one slice, e.g. v3-256, v4-128, v5litepod-256, v5p-512, v6e-256
                        [TPU_ACCELERATOR] (default v3-8)
  --version=VERSION     TPU software (runtime) version [TPU_RUNTIME_VERSION] (default: by generation, see below)
  --node_count=N        number of slices; N > 1 makes a multislice job over the data-center network
                        [TPU_NODE_COUNT] (default 1)
  --spot                request spot capacity (preemptible, no time limit) [TPU_SPOT=1]
  --best_effort         request best-effort capacity (`gcloud alpha`, preemptible) [TPU_BEST_EFFORT=1]
  --no_queue            create the node directly (`tpu-vm create`) instead of a queued resource; one slice
                        only [TPU_NO_QUEUE=1]
  --run=NAME            names the run's log and pid files, so several runs can share a slice [TPU_RUN] (default train)
  --worker=W            for logs: a worker index, or all (default 0)
  --grace=SECONDS       for stop and start: how long a stopping process may take to checkpoint (default 120)
  --pip_spec=SPEC       what the workers install into their venv [TPU_PIP_SPEC] (default -e .[tpu])
  --python=VERSION      the Python the workers' venv is made with, by uv [TPU_PYTHON] (default 3.11)
  --poll=SECONDS        for start and watch: seconds between state checks [TPU_POLL] (default 30)
  --max_restarts=N      for watch: how many times the run may be restarted [TPU_MAX_RESTARTS] (default 20)
  --settle=SECONDS      for watch: how long a slice that looks healthy is checked after process 0 stopped before
                        the end, before the run is restarted there [TPU_SETTLE] (default 120)
  --preflight=PYTHON    for start and watch: the local Python that first checks the training arguments against
                        --accelerator x --node_count (`python -m mobilebert_jax.tools.preflight`, with this
                        checkout's code and libtpu: `python -m mobilebert_jax.tools.install_libtpu`); a problem
                        stops here, before any slice is requested; none skips it [TPU_PREFLIGHT] (default python3)
  --preflight_args=ARGS extra preflight flags, e.g. "--nocompile" (no memory check: seconds instead of minutes
                        and ~14 GB) or "--offline" [TPU_PREFLIGHT_ARGS]
  --dry_run             print the gcloud commands instead of running them; the slice is taken to be absent,
                        so `start` shows its creation
  -h, --help            this text

Default runtime version by accelerator generation (Cloud TPU's "TPU software versions" for JAX):
  v2, v3, v4: tpu-ubuntu2204-base   v5e (v5litepod-*): v2-alpha-tpuv5-lite   v5p: v2-alpha-tpuv5   v6e: v2-alpha-tpuv6e

On the workers: the code lives in ~/mobilebert-jax, the venv in ~/mobilebert-jax-venv, made by uv (installed
with `python3 -m pip install --user uv`) with a Python >= 3.11 (the images ship 3.10; uv downloads a managed
one), and set up again only when ~/.mobilebert-jax-setup no longer holds "<sha256 of setup.py> <python> <pip
spec>". Logs in ~/mobilebert-jax-logs/RUN-HOSTNAME.log. --workdir, the corpus, the tokenizer and any model a
stage reads must be storage every worker shares (gs://BUCKET/...): only this checkout is copied to the workers,
and checkpoints written there survive the slice. A paper-scale config without --config.data.corpus (or, for the
teacher, --config.data.tokenizer) stops with a FATAL config error instead of training on the embedded corpus.

Example (the paper's teacher on 256 TPU v3 cores, restarted after every preemption until it finishes):
  launch/tpu_run.sh --name=ibbert --zone=europe-west4-a --accelerator=v3-256 --spot watch -- \
      --config=experiments/teacher_ib_bert_large.py --workdir=gs://BUCKET/runs/teacher \
      --config.data.corpus='gs://BUCKET/books_wiki/*.txt' \
      --config.data.prepared_dir=gs://BUCKET/data/books_wiki_512 --config.data.tokenizer=gs://BUCKET/bert-uncased-vocab.txt
  launch/tpu_run.sh --name=ibbert --zone=europe-west4-a logs
EOF
}

die() { echo "tpu_run.sh: $*" >&2; exit 2; }

NAME=${TPU_NAME:-}
ZONE=${TPU_ZONE:-}
PROJECT=${TPU_PROJECT:-}
ACCELERATOR=${TPU_ACCELERATOR:-v3-8}
VERSION=${TPU_RUNTIME_VERSION:-}
NODE_COUNT=${TPU_NODE_COUNT:-1}
SPOT=${TPU_SPOT:-0}
BEST_EFFORT=${TPU_BEST_EFFORT:-0}
NO_QUEUE=${TPU_NO_QUEUE:-0}
RUN=${TPU_RUN:-train}
PIP_SPEC=${TPU_PIP_SPEC:--e .[tpu]}
PYTHON=${TPU_PYTHON:-3.11}
POLL=${TPU_POLL:-30}
MAX_RESTARTS=${TPU_MAX_RESTARTS:-20}
SETTLE=${TPU_SETTLE:-120}
PREFLIGHT=${TPU_PREFLIGHT:-python3}
PREFLIGHT_ARGS=${TPU_PREFLIGHT_ARGS:-}
WORKER=0
GRACE=120
DRY_RUN=0
COMMAND=""
TRAIN_ARGS=()
# uv, the tool that makes the workers' venv; pinned so every worker builds the same environment.
UV_VERSION=0.13.9

while [[ $# -gt 0 ]]; do
  case "$1" in
    -h|--help) usage; exit 0 ;;
    --name=*) NAME=${1#*=} ;;
    --zone=*) ZONE=${1#*=} ;;
    --project=*) PROJECT=${1#*=} ;;
    --accelerator=*) ACCELERATOR=${1#*=} ;;
    --version=*) VERSION=${1#*=} ;;
    --node_count=*) NODE_COUNT=${1#*=} ;;
    --spot) SPOT=1 ;;
    --best_effort) BEST_EFFORT=1 ;;
    --no_queue) NO_QUEUE=1 ;;
    --run=*) RUN=${1#*=} ;;
    --worker=*) WORKER=${1#*=} ;;
    --grace=*) GRACE=${1#*=} ;;
    --pip_spec=*) PIP_SPEC=${1#*=} ;;
    --python=*) PYTHON=${1#*=} ;;
    --poll=*) POLL=${1#*=} ;;
    --max_restarts=*) MAX_RESTARTS=${1#*=} ;;
    --settle=*) SETTLE=${1#*=} ;;
    --preflight=*) PREFLIGHT=${1#*=} ;;
    --preflight_args=*) PREFLIGHT_ARGS=${1#*=} ;;
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
[[ "$POLL" =~ ^[0-9]+([.][0-9]+)?$ ]] || die "--poll=$POLL: must be a number of seconds"
[[ "$MAX_RESTARTS" =~ ^[0-9]+$ ]] || die "--max_restarts=$MAX_RESTARTS: must be a whole number"
[[ "$SETTLE" =~ ^[0-9]+$ ]] || die "--settle=$SETTLE: must be a whole number of seconds"
[[ "$NODE_COUNT" =~ ^[1-9][0-9]*$ ]] || die "--node_count=$NODE_COUNT: must be a whole number >= 1"
[[ "$WORKER" == all || "$WORKER" =~ ^[0-9]+$ ]] || die "--worker=$WORKER: must be a worker index or all"
[[ "$PYTHON" =~ ^3\.[0-9]+(\.[0-9]+)?$ ]] || die "--python=$PYTHON: must be a Python version such as 3.11"
[[ "$SPOT" == 1 && "$BEST_EFFORT" == 1 ]] && die "--spot and --best_effort exclude each other"
if [[ "$NO_QUEUE" == 1 ]]; then
  [[ "$NODE_COUNT" == 1 ]] || die "--node_count=$NODE_COUNT needs a queued resource: drop --no_queue"
  [[ "$BEST_EFFORT" == 0 ]] || die "--best_effort needs a queued resource: drop --no_queue"
fi

# The runtime version Cloud TPU documents for JAX on each generation (cloud.google.com/tpu/docs/runtimes).
default_version() {
  case "${ACCELERATOR%%-*}" in
    v2|v3|v4) echo tpu-ubuntu2204-base ;;
    v5litepod|v5e) echo v2-alpha-tpuv5-lite ;;
    v5p) echo v2-alpha-tpuv5 ;;
    v6e) echo v2-alpha-tpuv6e ;;
    *) die "--accelerator=$ACCELERATOR: no default runtime version for this generation; pass --version" ;;
  esac
}
[[ -n "$VERSION" ]] || VERSION=$(default_version)

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
CODE='~/mobilebert-jax'
VENV='~/mobilebert-jax-venv'
LOGS='~/mobilebert-jax-logs'
LOCATION=(--zone="$ZONE")
[[ -n "$PROJECT" ]] && LOCATION+=(--project="$PROJECT")
NODES=("$NAME")
if [[ "$NODE_COUNT" -gt 1 ]]; then
  NODES=()
  for ((i = 0; i < NODE_COUNT; i++)); do NODES+=("$NAME-$i"); done
fi

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
qr() { gc compute tpus queued-resources "$@"; }

# Runs a command on every worker of every node; the nodes of a multislice job at the same time.
on_all_workers() {
  if [[ "${#NODES[@]}" == 1 || "$DRY_RUN" == 1 ]]; then
    local node
    for node in "${NODES[@]}"; do tpu ssh "$node" "${LOCATION[@]}" --worker=all --command="$1"; done
    return
  fi
  local pids=() pid failed=0
  for node in "${NODES[@]}"; do
    tpu ssh "$node" "${LOCATION[@]}" --worker=all --command="$1" &
    pids+=($!)
  done
  for pid in "${pids[@]}"; do wait "$pid" || failed=1; done
  return $failed
}

# A remote shell function: whether process $1 runs (a zombie, exited but not yet reaped, does not).
ALIVE='alive() { ps -o stat= -p "$1" 2>/dev/null | grep -qv Z; }'

# Stops this run's process on a worker: SIGTERM (the trainer saves a checkpoint and exits), SIGKILL after the
# grace. The `stopped` mark tells a watch that the run was stopped on purpose.
stop_script() {
  cat <<EOF
$ALIVE
pidfile=$LOGS/$RUN.pid
if [ -f "\$pidfile" ] && alive "\$(cat "\$pidfile")"; then
  touch $LOGS/$RUN.stopped
  pid=\$(cat "\$pidfile"); kill -TERM "\$pid"
  for _ in \$(seq $GRACE); do alive "\$pid" || break; sleep 1; done
  if alive "\$pid"; then echo "\$HOSTNAME: process \$pid still running after ${GRACE}s: SIGKILL"; kill -KILL "\$pid"; fi
fi
rm -f "\$pidfile"
EOF
}

# Stale processes: this run's earlier process, then anything else holding a TPU device (a crashed run's
# leftover, a notebook), which would make libtpu fail to open the chips. Then the code, and the venv: uv makes
# it with a Python >= 3.11 (jax, jaxlib and libtpu need one; the TPU images ship 3.10), downloading a managed
# Python when the image has none.
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
  echo "\$HOSTNAME: setting up $VENV (Python $PYTHON, $PIP_SPEC)"
  uv=~/.local/bin/uv
  if ! [ -x \$uv ] || [ "\$(\$uv --version | cut -d' ' -f2)" != $UV_VERSION ]; then
    python3 -m pip install -q --user --disable-pip-version-check uv==$UV_VERSION
  fi
  rm -rf $VENV ~/.mobilebert-jax-setup
  \$uv venv -q --python $PYTHON $VENV
  (cd $CODE && set -f && \$uv pip install -q --python $VENV/bin/python $PIP_SPEC)
  echo "$want" > ~/.mobilebert-jax-setup
  echo "\$HOSTNAME: venv ready: \$($VENV/bin/python --version)"
fi
EOF
}

# Starts the run in the background. A wrapper shell records its own pid ($RUN.wrapper), the trainer's ($RUN.pid)
# and, when the trainer ends, its exit status ($RUN.exit), which is what `watch` reads; a killed VM leaves no status.
start_script() {
  local args
  args=$(printf '%q ' "${TRAIN_ARGS[@]}")
  cat <<EOF
cd $CODE
rm -f $LOGS/$RUN.wrapper $LOGS/$RUN.pid $LOGS/$RUN.exit $LOGS/$RUN.stopped
nohup bash -c 'echo \$\$ > $LOGS/$RUN.wrapper; $VENV/bin/python -m mobilebert_jax.main "\$@" < /dev/null & echo \$! > $LOGS/$RUN.pid; wait \$!; echo \$? > $LOGS/$RUN.exit' run $args> $LOGS/$RUN-\$HOSTNAME.log 2>&1 < /dev/null &
for _ in \$(seq 100); do [ -s $LOGS/$RUN.pid ] && break; sleep 0.1; done
echo "\$HOSTNAME: started process \$(cat $LOGS/$RUN.pid) (log $LOGS/$RUN-\$HOSTNAME.log)"
EOF
}

# What process 0 (worker 0 of the first node) is doing: running, finished, stopped, preempted (the trainer saved on a
# SIGTERM and exited 75), interrupted (Ctrl-C: exited 130), exited STATUS or gone.
# The wrapper outlives the trainer until it has written the exit status: while it is alive the run is still
# running (a trainer that has just ended, its status not yet written, is not `gone`); once it is dead without a
# status, it was killed with the VM.
run_state_script() {
  local marker="$1"
  cat <<EOF
$ALIVE
if { [ -f $LOGS/$RUN.pid ] && alive "\$(cat $LOGS/$RUN.pid)"; } ||
   { [ -f $LOGS/$RUN.wrapper ] && alive "\$(cat $LOGS/$RUN.wrapper)"; }; then
  echo running
elif [ -f $LOGS/$RUN.exit ]; then
  status=\$(cat $LOGS/$RUN.exit)
  if { [ "\$status" = 0 ] || [ "\$status" = 75 ]; } && [ -f $LOGS/$RUN.stopped ]; then
    echo stopped
  elif [ "\$status" = 75 ]; then
    echo preempted
  elif [ "\$status" = 130 ]; then
    echo interrupted
  elif [ "\$status" = 0 ] && $VENV/bin/python -c 'import sys; from etils import epath; sys.exit(not epath.Path(sys.argv[1]).exists())' $(printf '%q' "$marker"); then
    echo finished
  else
    echo "exited \$status"
  fi
else
  echo gone
fi
EOF
}

# Empty when absent.
qr_state() {
  gcloud compute tpus queued-resources describe "$NAME" "${LOCATION[@]}" --format='value(state.state)' 2>/dev/null ||
    true
}
node_state() {
  gcloud compute tpus tpu-vm describe "$1" "${LOCATION[@]}" --format='value(state)' 2>/dev/null || true
}

create_slice() {
  if [[ "$NO_QUEUE" == 1 ]]; then
    local flags=(--accelerator-type="$ACCELERATOR" --version="$VERSION")
    [[ "$SPOT" == 1 ]] && flags+=(--spot)
    tpu create "$NAME" "${LOCATION[@]}" "${flags[@]}"
    return
  fi
  local track=() flags=(--accelerator-type="$ACCELERATOR" --runtime-version="$VERSION")
  if [[ "$NODE_COUNT" == 1 ]]; then flags+=(--node-id="$NAME")
  else flags+=(--node-count="$NODE_COUNT" --node-prefix="$NAME"); fi
  [[ "$SPOT" == 1 ]] && flags+=(--spot)
  # Best-effort capacity is only in gcloud's alpha track.
  [[ "$BEST_EFFORT" == 1 ]] && { track=(alpha); flags+=(--best-effort); }
  gc "${track[@]}" compute tpus queued-resources create "$NAME" "${LOCATION[@]}" "${flags[@]}"
}

delete_slice() {
  if [[ "$NO_QUEUE" == 1 ]]; then tpu delete "$NAME" "${LOCATION[@]}" --quiet
  else qr delete "$NAME" "${LOCATION[@]}" --force --quiet; fi
}

# "ok" when the slice and all its nodes can run the job, otherwise why not (empty state: absent).
slice_health() {
  local state node
  if [[ "$NO_QUEUE" == 0 ]]; then
    state=$(qr_state)
    [[ "$state" == ACTIVE ]] || { echo "queued resource $NAME is ${state:-absent}"; return; }
  fi
  for node in "${NODES[@]}"; do
    state=$(node_state "$node")
    [[ "$state" == READY ]] || { echo "node $node is ${state:-absent}"; return; }
  done
  echo ok
}

# Gets the slice: reuses a healthy one, waits for one on its way, replaces a preempted or failed one.
ensure_slice() {
  local state
  if [[ "$DRY_RUN" == 1 ]]; then
    create_slice
    return
  fi
  local last=""
  while true; do
    if [[ "$NO_QUEUE" == 1 ]]; then state=$(node_state "$NAME"); else state=$(qr_state); fi
    [[ "$state" != "$last" ]] && echo "slice $NAME: ${state:-absent}"
    last=$state
    case "$state" in
      "") echo "requesting $NAME ($ACCELERATOR x $NODE_COUNT, $VERSION)"; create_slice ;;
      ACTIVE|READY)
        local health
        health=$(slice_health)
        [[ "$health" == ok ]] && { echo "slice $NAME is ready"; return; }
        case "$health" in
          *PREEMPTED|*TERMINATED|*absent) echo "$health: deleting and requesting $NAME again"; delete_slice ;;
        esac ;;
      PREEMPTED|TERMINATED|SUSPENDED|FAILED)
        echo "slice $NAME is $state: deleting and requesting it again"; delete_slice ;;
      ACCEPTED|WAITING_FOR_RESOURCES|PROVISIONING|CREATING|STARTING|RESTARTING|REPAIRING|SUSPENDING|DELETING) ;;
      *) die "slice $NAME is in state $state; delete it (launch/tpu_run.sh ... delete) or wait" ;;
    esac
    sleep "$POLL"
  done
}

copy_code() {
  local tarball="${TMPDIR:-/tmp}/tpu_run-$NAME-$RUN.tar.gz" node
  if [[ "$DRY_RUN" == 0 ]]; then
    git -C "$REPO" rev-parse --git-dir >/dev/null 2>&1 ||
      die "$REPO is not a git checkout: cannot tell code from outputs"
    # Tracked and untracked-but-not-ignored files (what `git status` shows), without venvs, runs or caches;
    # tracked files deleted in the working tree are left out.
    (cd "$REPO" && git ls-files -z --cached --others --exclude-standard | \
      xargs -0 -r sh -c 'for f; do [ -e "$f" ] && printf "%s\0" "$f"; done' sh | \
      tar czf "$tarball" --null -T -)
  fi
  for node in "${NODES[@]}"; do
    tpu scp "$tarball" "$node:~/mobilebert-jax.tar.gz" "${LOCATION[@]}" --worker=all
  done
  [[ "$DRY_RUN" == 1 ]] || rm -f "$tarball"
}

launch_run() {
  ensure_slice
  copy_code
  on_all_workers "$(prepare_script "$want")"
  on_all_workers "$(start_script)"
}

# The config checked against the slice before asking for it (mobilebert_jax/tools/preflight.py), here, with this
# checkout's code: the same code the workers get.
run_preflight() {
  [[ "$PREFLIGHT" == none ]] && { echo "preflight: skipped (--preflight=none)"; return 0; }
  local cmd=("$PREFLIGHT" -m mobilebert_jax.tools.preflight "--topology=$ACCELERATOR" "--num_slices=$NODE_COUNT")
  # shellcheck disable=SC2206  # the extra flags are words, e.g. "--nocompile --offline"
  cmd+=($PREFLIGHT_ARGS "${TRAIN_ARGS[@]}")
  if [[ "$DRY_RUN" == 1 ]]; then
    echo "preflight (not run with --dry_run): $(printf '%q ' "${cmd[@]}")" >&2
    return 0
  fi
  echo "preflight: $(printf '%q ' "${cmd[@]}")"
  (cd "$REPO" && PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}" "${cmd[@]}") ||
    die "the preflight refused the run (FATAL lines above): fix the config, or skip the check with --preflight=none"
}

# The value of --workdir in the training arguments.
train_workdir() {
  local i
  for ((i = 0; i < ${#TRAIN_ARGS[@]}; i++)); do
    case "${TRAIN_ARGS[i]}" in
      --workdir=*) echo "${TRAIN_ARGS[i]#*=}"; return ;;
      --workdir) echo "${TRAIN_ARGS[i + 1]:-}"; return ;;
    esac
  done
}

# The slice's health once it has settled: checked every --poll seconds until it shows trouble or --settle
# seconds have passed. A preemption ends the processes first (the VM is going down, or the trainer saved on the
# notice's SIGTERM and exited 0) and shows in the slice's state only later, a poll or more apart: node PREEMPTED,
# then the queued resource SUSPENDED.
settled_health() {
  local health deadline=$((SECONDS + SETTLE))
  while true; do
    health=$(slice_health)
    if [[ "$health" != ok || "$SECONDS" -ge "$deadline" ]]; then echo "$health"; return; fi
    sleep "$POLL"
  done
}

# Starts the run for the watch and sets LAUNCHED to its exit status. A preemption can take the slice down while the
# run is being started (the ssh sessions end with the VM): that is for the watch to handle, not the end of it. The
# script's own refusals (status 2: `die`, or a gcloud usage error) end the watch here. Call it as a plain command:
# `set -e` must hold inside launch_run (run in the background so that its failure can be caught), and bash turns
# it off for everything a condition (`if`, `||`) calls.
watch_launch() {
  LAUNCHED=0
  launch_run &
  wait $! || LAUNCHED=$?
  if [[ "$LAUNCHED" == 2 ]]; then exit 2; fi
}

# The watch's state machine, one poll at a time (docs/scale_out.md, "Watch"):
#   starting the run failed                  -> settled_health: unhealthy within --settle -> restart (a preemption
#                                               while it started); still healthy -> exit with the failure's status
#   slice unhealthy                          -> restart (ensure_slice deletes and requests it again)
#   healthy, process 0 running (or no answer) -> poll again
#   healthy, finished / stopped              -> exit 0;  interrupted -> exit 130;  exited N > 0 -> exit N with the
#                                               log's end
#   healthy, process 0 gone or preempted     -> settled_health: unhealthy within --settle -> restart (a preemption:
#                                               one restart, on a new slice); still healthy -> restart in place
# Every restart is counted once against --max_restarts; requesting the slice again (however many polls the
# queued resource takes to go from ACTIVE through SUSPENDED to absent) is part of that one restart.
watch_run() {
  local workdir restarts=0 health state
  workdir=$(train_workdir)
  watch_launch
  [[ "$DRY_RUN" == 1 ]] && return
  while true; do
    if [[ "$LAUNCHED" != 0 ]]; then
      echo "watch: starting the run failed (exit $LAUNCHED); checking the slice for up to ${SETTLE}s"
      health=$(settled_health)
      if [[ "$health" == ok ]]; then
        echo "watch: starting the run failed (exit $LAUNCHED) on a healthy slice: giving up" >&2
        exit "$LAUNCHED"
      fi
    else
      sleep "$POLL"
      health=$(slice_health)
    fi
    if [[ "$LAUNCHED" == 0 && "$health" == ok ]]; then
      state=$(tpu ssh "${NODES[0]}" "${LOCATION[@]}" --worker=0 --command="$(run_state_script "$workdir/FINISHED")" \
        2>/dev/null | tail -n 1) || state=unknown
      case "$state" in
        running|unknown|"") continue ;;
        finished) echo "watch: the run finished (process 0 exited 0, $workdir/FINISHED exists)"; return 0 ;;
        stopped) echo "watch: the run was stopped (tpu_run.sh stop); not restarting it"; return 0 ;;
        interrupted)
          echo "watch: the run was interrupted (Ctrl-C on worker 0, exit 130); not restarting it" >&2
          exit 130 ;;
        "exited 0"|preempted|gone)
          echo "watch: process 0 stopped before the end ($state); checking the slice for up to ${SETTLE}s"
          health=$(settled_health)
          if [[ "$health" == ok ]]; then health="process 0 stopped before the end ($state) on a healthy slice"; fi ;;
        exited*)
          echo "watch: the run failed: process 0 ${state}; its log ends with:" >&2
          tpu ssh "${NODES[0]}" "${LOCATION[@]}" --worker=0 --command="tail -n 30 $LOGS/$RUN-*.log" >&2 || true
          exit "${state#exited }" ;;
      esac
    fi
    restarts=$((restarts + 1))
    if [[ "$restarts" -gt "$MAX_RESTARTS" ]]; then
      echo "watch: $health, and the run was restarted $MAX_RESTARTS times already (--max_restarts): giving up" >&2
      exit 1
    fi
    echo "watch: $health: restarting the run (restart $restarts of at most $MAX_RESTARTS)"
    watch_launch
  done
}

case "$COMMAND" in
  start|watch)
    [[ ${#TRAIN_ARGS[@]} -gt 0 ]] ||
      die "$COMMAND needs the training arguments after --, e.g. -- --config=experiments/X.py --workdir=gs://BUCKET/run"
    [[ "$COMMAND" == start || -n "$(train_workdir)" ]] ||
      die "watch needs --workdir in the training arguments (it looks for WORKDIR/FINISHED)"
    want="$(sha256sum "$REPO/setup.py" | cut -d' ' -f1) $PYTHON $PIP_SPEC"
    run_preflight
    if [[ "$COMMAND" == start ]]; then launch_run; else watch_run; fi
    ;;
  logs)
    if [[ "$WORKER" == all ]]; then
      on_all_workers "tail -n 20 $LOGS/$RUN-*.log"
    else
      tpu ssh "${NODES[0]}" "${LOCATION[@]}" --worker="$WORKER" --command="tail -n 50 -F $LOGS/$RUN-*.log"
    fi
    ;;
  fetch-logs)
    [[ -n "${LOG_DIR:-}" ]] || die "fetch-logs needs a local directory: fetch-logs DIR"
    mkdir -p "$LOG_DIR"
    for node in "${NODES[@]}"; do
      tpu scp "$node:$LOGS/$RUN-*.log" "$LOG_DIR" "${LOCATION[@]}" --worker=all
    done
    ;;
  stop)
    on_all_workers "$(stop_script)"
    ;;
  status)
    [[ "$NO_QUEUE" == 1 ]] || echo "queued resource $NAME: $(qr_state)"
    for node in "${NODES[@]}"; do echo "node $node: $(node_state "$node")"; done
    on_all_workers "$ALIVE
if [ -f $LOGS/$RUN.pid ] && alive \$(cat $LOGS/$RUN.pid); then
  echo \"\$HOSTNAME: running (process \$(cat $LOGS/$RUN.pid))\"
else
  echo \"\$HOSTNAME: not running\"
fi"
    ;;
  delete)
    delete_slice
    ;;
  *) die "unknown command $COMMAND (see --help)" ;;
esac
