#!/usr/bin/env bash
# Trains videogen on a Cloud TPU VM slice (single- or multi-host).
#
# Creates the TPU VM if it does not exist (or recreates it after a spot
# preemption), puts this repository on every worker, installs it with
# ./setup.sh plus jax[tpu], and starts the same main on all workers at once
# through launch/tpu_worker_run.sh, which exports JAX_COORDINATOR_ADDRESS
# (worker 0) on a multi-host slice so that videogen.main calls
# jax.distributed.initialize(); JAX reads the process count and index from the
# TPU metadata. When a spot TPU is preempted the VM is recreated and the same
# command runs again, resuming from the latest checkpoint in WORKDIR (at most
# MAX_RETRIES times). `--dry-run` prints every command instead of running it;
# `teardown` deletes the TPU VM.
set -euo pipefail

usage() {
  cat <<'EOF'
Usage: TPU_NAME=... ZONE=... CONFIG=... WORKDIR=gs://... launch/tpu_vm.sh [--dry-run] [run] [-- MAIN_FLAGS...]
       TPU_NAME=... ZONE=... launch/tpu_vm.sh [--dry-run] teardown

Subcommands:
  run           (default) create the TPU VM if needed, install, train on all
                workers; after a preemption recreate the VM and run again
  teardown      delete the TPU VM (WORKDIR, with the checkpoints, is kept)

Options:
  --dry-run     print every command (gcloud, git, tar) in the order it would
                run them, and run none; needs neither gcloud nor a TPU. Same as
                DRY_RUN=1. A dry run of `run` assumes the TPU VM does not
                exist yet (DRY_RUN_STATE=READY: it exists) and, for SPOT=1,
                shows one preemption and its recovery (DRY_RUN_PREEMPTIONS=N:
                N of them); one of `teardown` assumes it exists.
  -h, --help    this text

Required environment:
  TPU_NAME      TPU VM name, e.g. videogen-v4-32
  ZONE          zone with quota for the accelerator, e.g. us-central2-b
  CONFIG        config string, e.g. experiments/magvit2_k600.py or
                experiments/magvit2_k600.py:runlocal           (run only)
  WORKDIR       checkpoints and metrics; must be storage every worker sees,
                normally a GCS path gs://BUCKET/runs/NAME       (run only)

Optional environment (defaults in brackets):
  ACCELERATOR   accelerator type [v4-8]; v4-32 (4 workers), v5litepod-16,
                v6e-8, ...
  VERSION       TPU software version [tpu-ubuntu2204-base];
                v5e: v2-alpha-tpuv5-lite, v6e: v2-alpha-tpuv6e
  PROJECT       GCP project [gcloud's default]
  SPOT          1 to create a spot (preemptible) TPU [0]
  MAX_RETRIES   runs after the first one when the TPU VM was preempted; each
                recreates the VM and resumes from WORKDIR [5]
  PREEMPT_WAIT  seconds to wait, after a failed run on a VM still READY, for
                it to turn PREEMPTED before calling the failure a crash [120]
  RETRY_WAIT    seconds between attempts to recreate a preempted VM when
                creation fails (no spot capacity) [60]
  DELETE_AFTER  1 to delete the TPU VM when the launcher ends, whatever the
                outcome (unattended runs); 0 keeps it for debugging [0]
  REPO_URL      git URL to clone on the workers; if unset, the files of this
                checkout (tracked and untracked, not ignored) are copied
  REPO_REF      branch, tag or commit to check out with REPO_URL [main]
  REMOTE_DIR    directory under the workers' home [videogen]
  PYTHON_BIN    Python >= 3.11 on the workers, installed from the deadsnakes
                PPA if missing [python3.11]
  SKIP_SETUP    1 to skip copying and installing (code already in place) on
                an existing VM; a new VM is always set up [0]

Everything after "--" is passed to videogen.main, e.g.
  -- --config.data.path=gs://my-bucket/kinetics600 --config.num_train_steps=1000

Example:
  TPU_NAME=vg ZONE=us-central2-b ACCELERATOR=v4-32 SPOT=1 \
  CONFIG=experiments/magvit2_k600.py WORKDIR=gs://my-bucket/runs/k600 \
  launch/tpu_vm.sh -- --config.data.path=gs://my-bucket/kinetics600
EOF
}

# --- Arguments.
DRY_RUN="${DRY_RUN:-0}"
ACTION=run
while [[ $# -gt 0 ]]; do
  case "$1" in
    -h | --help) usage; exit 0 ;;
    --dry-run) DRY_RUN=1; shift ;;
    run | teardown) ACTION="$1"; shift ;;
    --) shift; break ;;
    *)
      echo "error: unexpected argument '$1'; use [--dry-run] [run|teardown], and pass flags" \
           "for videogen.main after '--'." >&2
      usage >&2; exit 2 ;;
  esac
done
MAIN_FLAGS=("$@")
if [[ "$ACTION" == teardown && ${#MAIN_FLAGS[@]} -gt 0 ]]; then
  echo "error: teardown takes no flags for videogen.main (got '${MAIN_FLAGS[*]}')." >&2; exit 2
fi

required=(TPU_NAME ZONE)
[[ "$ACTION" == run ]] && required+=(CONFIG WORKDIR)
missing=()
for var in "${required[@]}"; do
  [[ -n "${!var:-}" ]] || missing+=("$var")
done
if [[ ${#missing[@]} -gt 0 ]]; then
  echo "error: set ${missing[*]} (see usage below)." >&2
  usage >&2; exit 2
fi
ACCELERATOR="${ACCELERATOR:-v4-8}"
VERSION="${VERSION:-tpu-ubuntu2204-base}"
SPOT="${SPOT:-0}"
MAX_RETRIES="${MAX_RETRIES:-5}"
PREEMPT_WAIT="${PREEMPT_WAIT:-120}"
RETRY_WAIT="${RETRY_WAIT:-60}"
DELETE_AFTER="${DELETE_AFTER:-0}"
REPO_REF="${REPO_REF:-main}"
REMOTE_DIR="${REMOTE_DIR:-videogen}"
PYTHON_BIN="${PYTHON_BIN:-python3.11}"
SKIP_SETUP="${SKIP_SETUP:-0}"
for var in DRY_RUN SPOT DELETE_AFTER SKIP_SETUP; do
  [[ "${!var}" == 0 || "${!var}" == 1 ]] || {
    echo "error: $var=${!var}; use 0 or 1." >&2; exit 2; }
done
for var in MAX_RETRIES PREEMPT_WAIT RETRY_WAIT; do
  [[ "${!var}" =~ ^[0-9]+$ ]] || {
    echo "error: $var=${!var}; use a whole number >= 0." >&2; exit 2; }
done
DRY_RUN_PREEMPTIONS="${DRY_RUN_PREEMPTIONS:-$SPOT}"
[[ "$DRY_RUN_PREEMPTIONS" =~ ^[0-9]+$ ]] || {
  echo "error: DRY_RUN_PREEMPTIONS=$DRY_RUN_PREEMPTIONS; use a whole number >= 0." >&2; exit 2; }

# Hosts (workers) of a slice: v2/v3/v4/v5p-N count TensorCores (8 per host),
# v5e/v6e-N count chips (one host up to 8, else 4 per host). Empty if unknown.
workers_of() {
  local generation="${1%-*}" size="${1##*-}"
  [[ "$size" =~ ^[0-9]+$ ]] || return 0
  case "$generation" in
    v2 | v3 | v4 | v5p) echo $(( size <= 8 ? 1 : size / 8 )) ;;
    v5litepod | v5e | v6e) echo $(( size <= 8 ? 1 : size / 4 )) ;;
  esac
}
WORKERS="$(workers_of "$ACCELERATOR")"

# --- Running (or, in a dry run, printing) commands.
squote() { printf "'%s'" "${1//\'/\'\\\'\'}"; }
quote() {  # one argument, quoted for a shell only where needed
  if [[ "$1" =~ ^[A-Za-z0-9_./:=,@%+-]+$ ]]; then printf '%s' "$1"
  elif [[ "$1" =~ ^(--[A-Za-z0-9-]+=)(.*)$ ]]; then
    printf '%s' "${BASH_REMATCH[1]}"; squote "${BASH_REMATCH[2]}"
  else squote "$1"; fi
}
show() {  # prints a command so that it can be pasted into a shell
  local line="" arg
  for arg in "$@"; do line+="${line:+ }$(quote "$arg")"; done
  printf '%s\n' "$line"
}
run() { if [[ "$DRY_RUN" == 1 ]]; then show "$@"; else "$@"; fi; }
say() { if [[ "$DRY_RUN" == 1 ]]; then echo "# $*"; else echo "$*"; fi; }

GCLOUD_ARGS=(--zone="$ZONE")
[[ -n "${PROJECT:-}" ]] && GCLOUD_ARGS+=(--project="$PROJECT")
tpu() { run gcloud compute tpus tpu-vm "$@" "${GCLOUD_ARGS[@]}"; }
on_all_workers() { tpu ssh "$TPU_NAME" --worker=all --command="$1"; }

# STATE: the TPU VM's state, "" if it does not exist. A dry run prints the query
# and takes the state from `simulated_state`.
STATE=""
get_state() {
  if [[ "$DRY_RUN" == 1 ]]; then
    show gcloud compute tpus tpu-vm describe "$TPU_NAME" --format='value(state)' "${GCLOUD_ARGS[@]}"
    STATE="$1"
    say "(dry run: state ${STATE:-<no such TPU>})"
  else
    STATE="$(gcloud compute tpus tpu-vm describe "$TPU_NAME" --format='value(state)' \
      "${GCLOUD_ARGS[@]}" 2>/dev/null || true)"
  fi
}

delete_vm() { tpu delete "$TPU_NAME" --quiet; }

if [[ "$ACTION" == teardown ]]; then
  get_state "${DRY_RUN_STATE-READY}"
  if [[ -z "$STATE" ]]; then
    echo "TPU $TPU_NAME does not exist in $ZONE; nothing to delete."; exit 0
  fi
  say "Deleting TPU $TPU_NAME (state $STATE). WORKDIR and its checkpoints are kept."
  delete_vm
  exit 0
fi

if [[ "$WORKDIR" != gs://* ]]; then
  echo "warning: WORKDIR=$WORKDIR is not on GCS; on a multi-host slice every worker must" \
       "see the same directory, or checkpoints and resumption break." >&2
fi
[[ -n "$WORKERS" ]] || echo "warning: unknown accelerator type '$ACCELERATOR': cannot tell" \
  "its number of workers; the workers read it from the TPU metadata." >&2
say "TPU $TPU_NAME: $ACCELERATOR, ${WORKERS:-an unknown number of} worker(s), zone $ZONE;" \
    "spot $SPOT, at most $MAX_RETRIES re-run(s) after preemptions."
[[ "$DRY_RUN" == 1 ]] && say "dry run: nothing below is executed."

# --- Clean-up when the launcher ends: the local archive, and the VM with DELETE_AFTER=1.
archive=""
vm_touched=0
cleanup() {
  local rc=$?
  [[ -n "$archive" && "$DRY_RUN" == 0 ]] && rm -f "$archive"
  if [[ "$DELETE_AFTER" == 1 && "$vm_touched" == 1 ]]; then
    say "DELETE_AFTER=1: deleting TPU $TPU_NAME (WORKDIR is kept)."
    delete_vm || echo "error: could not delete TPU $TPU_NAME; delete it with" \
      "TPU_NAME=$TPU_NAME ZONE=$ZONE launch/tpu_vm.sh teardown" >&2
  fi
  exit "$rc"
}
trap cleanup EXIT

# --- 1. The TPU VM: create it, or recreate it if a spot preemption left it dead.
# Returns 1 if creation failed; sets NEW_VM.
NEW_VM=0
ensure_vm() {
  local initial="$1"
  NEW_VM=0
  get_state "$initial"
  vm_touched=1
  if [[ "$STATE" == "PREEMPTED" || "$STATE" == "TERMINATED" ]]; then
    say "TPU $TPU_NAME is $STATE; deleting it to create it again."
    delete_vm || return 1
    STATE=""
  fi
  if [[ -z "$STATE" ]]; then
    local create_args=(--accelerator-type="$ACCELERATOR" --version="$VERSION")
    [[ "$SPOT" == "1" ]] && create_args+=(--spot)
    say "Creating TPU $TPU_NAME ($ACCELERATOR, $VERSION) in $ZONE."
    tpu create "$TPU_NAME" "${create_args[@]}" || return 1
    NEW_VM=1  # a new VM has nothing installed
  else
    say "TPU $TPU_NAME exists (state $STATE)."
  fi
}

# --- 2. Code and environment on every worker.
setup_workers() {
  if [[ -n "${REPO_URL:-}" ]]; then
    # Fetch-and-detach works the same for a branch, a tag or a commit.
    on_all_workers "set -e
      [ -d ~/$REMOTE_DIR/.git ] || git clone --quiet $(printf '%q' "$REPO_URL") ~/$REMOTE_DIR
      git -C ~/$REMOTE_DIR fetch --quiet origin $(printf '%q' "$REPO_REF")
      git -C ~/$REMOTE_DIR checkout --quiet --detach FETCH_HEAD"
  else
    local repo_root
    repo_root="$(cd "$(dirname "$0")/.." && pwd)"
    # Only what git would keep: no .venv, runs/ or caches (see .gitignore).
    if [[ "$DRY_RUN" == 1 ]]; then
      archive="${archive:-/tmp/videogen.XXXXXX.tar.gz}"
      echo "git -C $(quote "$repo_root") ls-files -z --cached --others --exclude-standard" \
           "| tar -C $(quote "$repo_root") --null -T - -czf $archive"
    elif [[ -z "$archive" ]]; then
      archive="$(mktemp -t videogen.XXXXXX.tar.gz)"
      git -C "$repo_root" ls-files -z --cached --others --exclude-standard \
        | tar -C "$repo_root" --null -T - -czf "$archive"
    fi
    tpu scp "$archive" "$TPU_NAME:videogen.tar.gz" --worker=all
    # Replace the previous copy but keep its .venv: a file deleted here must
    # not stay importable there.
    on_all_workers "set -e; mkdir -p ~/$REMOTE_DIR
      find ~/$REMOTE_DIR -mindepth 1 -maxdepth 1 ! -name .venv ! -name logs -exec rm -rf {} +
      tar -xzf ~/videogen.tar.gz -C ~/$REMOTE_DIR && rm ~/videogen.tar.gz"
  fi
  # TPU VM images ship Python 3.10; videogen needs >= 3.11.
  on_all_workers "set -e
    if ! command -v $PYTHON_BIN >/dev/null; then
      sudo add-apt-repository -y ppa:deadsnakes/ppa >/dev/null
      sudo apt-get update -qq && sudo apt-get install -y -qq ${PYTHON_BIN}-venv ${PYTHON_BIN}-dev
    fi
    cd ~/$REMOTE_DIR && PYTHON=$PYTHON_BIN ./setup.sh
    .venv/bin/python -m pip install --quiet 'jax[tpu]==0.10.2' \\
      -f https://storage.googleapis.com/jax-releases/libtpu_releases.html"
}

# --- 3. The same command on all workers at once; they meet in
# jax.distributed.initialize(). tpu_worker_run.sh sets the coordinator (worker 0),
# keeps the output in logs/main.log and exits 143 if the trainer stopped on SIGTERM.
main_cmd=(.venv/bin/python -m videogen.main --config="$CONFIG" --workdir="$WORKDIR" "${MAIN_FLAGS[@]}")
remote_run="cd ~/$REMOTE_DIR && WORKERS=${WORKERS:-0} launch/tpu_worker_run.sh $(printf '%q ' "${main_cmd[@]}")"
remote_run="${remote_run% }"

# --- The resume-after-preemption loop.
attempt=0
dry_run_preempted=0
while :; do
  attempt=$((attempt + 1))
  if [[ $attempt -gt 1 ]]; then
    say "Attempt $attempt of $((MAX_RETRIES + 1)): recreating the TPU and resuming from $WORKDIR."
  fi
  if ! ensure_vm "$([[ $attempt -eq 1 ]] && echo "${DRY_RUN_STATE:-}" || echo PREEMPTED)"; then
    if [[ $attempt -eq 1 || $attempt -gt $MAX_RETRIES ]]; then
      echo "error: could not create TPU $TPU_NAME ($ACCELERATOR in $ZONE); see gcloud's" \
           "message above (quota, zone, VERSION)." >&2
      exit 1
    fi
    say "Creating the TPU failed (no spot capacity?); retrying in $RETRY_WAIT s."
    run sleep "$RETRY_WAIT"
    continue
  fi
  if [[ "$NEW_VM" == 1 || "$SKIP_SETUP" != 1 ]]; then
    setup_workers
  fi

  say "Running on all ${WORKERS:+$WORKERS }workers of $TPU_NAME: ${main_cmd[*]}"
  if [[ "$DRY_RUN" == 1 ]]; then
    on_all_workers "$remote_run"
    if [[ $dry_run_preempted -lt $DRY_RUN_PREEMPTIONS ]]; then
      dry_run_preempted=$((dry_run_preempted + 1))
      say "(dry run: suppose the TPU is preempted here: ssh exits 255)"
      rc=255
    else
      rc=0
    fi
  elif on_all_workers "$remote_run"; then
    rc=0
  else
    rc=$?
  fi
  if [[ $rc -eq 0 ]]; then
    say "Training run finished on $TPU_NAME."
    break
  fi

  # Preempted? The ssh session can end (and the trainer can stop on SIGTERM)
  # before the TPU API reports PREEMPTED, so wait a little while it says READY.
  if [[ "$DRY_RUN" == 1 ]]; then
    get_state PREEMPTED
  else
    get_state
    waited=0
    while [[ "$STATE" == READY && $waited -lt $PREEMPT_WAIT ]]; do
      sleep 15; waited=$((waited + 15)); get_state
    done
  fi
  if [[ "$STATE" != "PREEMPTED" && "$STATE" != "TERMINATED" && -n "$STATE" ]]; then
    if [[ $rc -eq 143 ]]; then
      echo "error: the trainer stopped on SIGTERM (checkpoint saved), but TPU $TPU_NAME is" \
           "still $STATE, so this was not a preemption; run the same command to resume." >&2
    else
      echo "error: videogen.main exited with status $rc on TPU $TPU_NAME, which is still" \
           "$STATE (not preempted); see the output above or ~/$REMOTE_DIR/logs/main.log on" \
           "the workers, fix the cause and run the same command to resume from $WORKDIR." >&2
    fi
    exit "$rc"
  fi
  if [[ $attempt -gt $MAX_RETRIES ]]; then
    echo "error: TPU $TPU_NAME was preempted $attempt times, more than MAX_RETRIES=$MAX_RETRIES;" \
         "run the same command again (or raise MAX_RETRIES) to resume from $WORKDIR." >&2
    exit 1
  fi
  say "TPU $TPU_NAME was preempted (state ${STATE:-deleted}, run status $rc)."
done
