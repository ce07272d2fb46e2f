#!/usr/bin/env bash
# Trains videogen on a Cloud TPU VM slice (single- or multi-host).
#
# Creates the TPU VM if it does not exist (or recreates it after a spot
# preemption), puts this repository on every worker, installs it with
# ./setup.sh plus jax[tpu], and starts the same main on all workers at once.
# On a multi-host slice videogen.main sees TPU_WORKER_HOSTNAMES and calls
# jax.distributed.initialize(), which finds its peers from the TPU metadata.
# Re-running the script after a preemption resumes from WORKDIR.
set -euo pipefail

usage() {
  cat <<'EOF'
Usage: TPU_NAME=... ZONE=... CONFIG=... WORKDIR=gs://... launch/tpu_vm.sh [-- MAIN_FLAGS...]

Required environment:
  TPU_NAME      TPU VM name, e.g. videogen-v4-32
  ZONE          zone with quota for the accelerator, e.g. us-central2-b
  CONFIG        config string, e.g. experiments/magvit2_k600.py or
                experiments/magvit2_k600.py:runlocal
  WORKDIR       checkpoints and metrics; must be storage every worker sees,
                normally a GCS path gs://BUCKET/runs/NAME

Optional environment (defaults in brackets):
  ACCELERATOR   accelerator type [v4-8]; v4-32, v5litepod-16, v6e-8, ...
  VERSION       TPU software version [tpu-ubuntu2204-base];
                v5e: v2-alpha-tpuv5-lite, v6e: v2-alpha-tpuv6e
  PROJECT       GCP project [gcloud's default]
  SPOT          1 to create a spot (preemptible) TPU [0]
  REPO_URL      git URL to clone on the workers; if unset, the files of this
                checkout (tracked and untracked, not ignored) are copied
  REPO_REF      branch, tag or commit to check out with REPO_URL [main]
  REMOTE_DIR    directory under the workers' home [videogen]
  PYTHON_BIN    Python >= 3.11 on the workers, installed from the deadsnakes
                PPA if missing [python3.11]
  SKIP_SETUP    1 to skip copying and installing (code already in place) [0]

Everything after "--" is passed to videogen.main, e.g. -- --config.train.steps=1000

Example:
  TPU_NAME=vg ZONE=us-central2-b ACCELERATOR=v4-32 SPOT=1 \
  CONFIG=experiments/magvit2_k600.py WORKDIR=gs://my-bucket/runs/k600 \
  launch/tpu_vm.sh -- --config.data.path=gs://my-bucket/kinetics600
EOF
}

if [[ "${1:-}" == "-h" || "${1:-}" == "--help" ]]; then usage; exit 0; fi
if [[ $# -gt 0 && "$1" != "--" ]]; then
  echo "error: unexpected argument '$1'; pass flags for videogen.main after '--'." >&2
  usage >&2; exit 2
fi
[[ $# -gt 0 ]] && shift
MAIN_FLAGS=("$@")

missing=()
for var in TPU_NAME ZONE CONFIG WORKDIR; do
  [[ -n "${!var:-}" ]] || missing+=("$var")
done
if [[ ${#missing[@]} -gt 0 ]]; then
  echo "error: set ${missing[*]} (see usage below)." >&2
  usage >&2; exit 2
fi
ACCELERATOR="${ACCELERATOR:-v4-8}"
VERSION="${VERSION:-tpu-ubuntu2204-base}"
SPOT="${SPOT:-0}"
REPO_REF="${REPO_REF:-main}"
REMOTE_DIR="${REMOTE_DIR:-videogen}"
PYTHON_BIN="${PYTHON_BIN:-python3.11}"
SKIP_SETUP="${SKIP_SETUP:-0}"
if [[ "$WORKDIR" != gs://* ]]; then
  echo "warning: WORKDIR=$WORKDIR is not on GCS; on a multi-host slice every worker must" \
       "see the same directory, or checkpoints and resumption break." >&2
fi

GCLOUD_ARGS=(--zone="$ZONE")
[[ -n "${PROJECT:-}" ]] && GCLOUD_ARGS+=(--project="$PROJECT")
tpu() { gcloud compute tpus tpu-vm "$@" "${GCLOUD_ARGS[@]}"; }
on_all_workers() { tpu ssh "$TPU_NAME" --worker=all --command="$1"; }

# --- 1. The TPU VM: create it, or recreate it if a spot preemption left it dead.
state="$(tpu describe "$TPU_NAME" --format='value(state)' 2>/dev/null || true)"
if [[ "$state" == "PREEMPTED" || "$state" == "TERMINATED" ]]; then
  echo "TPU $TPU_NAME is $state; deleting it to create it again."
  tpu delete "$TPU_NAME" --quiet
  state=""
fi
if [[ -z "$state" ]]; then
  create_args=(--accelerator-type="$ACCELERATOR" --version="$VERSION")
  [[ "$SPOT" == "1" ]] && create_args+=(--spot)
  echo "Creating TPU $TPU_NAME ($ACCELERATOR, $VERSION) in $ZONE."
  tpu create "$TPU_NAME" "${create_args[@]}"
  SKIP_SETUP=0  # a new VM has nothing installed
else
  echo "TPU $TPU_NAME exists (state $state)."
fi

# --- 2. Code and environment on every worker.
if [[ "$SKIP_SETUP" != "1" ]]; then
  if [[ -n "${REPO_URL:-}" ]]; then
    # Fetch-and-detach works the same for a branch, a tag or a commit.
    on_all_workers "set -e
      [ -d ~/$REMOTE_DIR/.git ] || git clone --quiet $(printf '%q' "$REPO_URL") ~/$REMOTE_DIR
      git -C ~/$REMOTE_DIR fetch --quiet origin $(printf '%q' "$REPO_REF")
      git -C ~/$REMOTE_DIR checkout --quiet --detach FETCH_HEAD"
  else
    repo_root="$(cd "$(dirname "$0")/.." && pwd)"
    archive="$(mktemp -t videogen.XXXXXX.tar.gz)"
    trap 'rm -f "$archive"' EXIT
    # Only what git would keep: no .venv, runs/ or caches (see .gitignore).
    git -C "$repo_root" ls-files -z --cached --others --exclude-standard \
      | tar -C "$repo_root" --null -T - -czf "$archive"
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
    .venv/bin/python -m pip install --quiet 'jax[tpu]==0.10.2' \
      -f https://storage.googleapis.com/jax-releases/libtpu_releases.html"
fi

# --- 3. The same command on all workers at once; they meet in jax.distributed.initialize().
main_cmd=(.venv/bin/python -m videogen.main --config="$CONFIG" --workdir="$WORKDIR" "${MAIN_FLAGS[@]}")
echo "Running on all workers of $TPU_NAME: ${main_cmd[*]}"
on_all_workers "set -o pipefail; cd ~/$REMOTE_DIR && mkdir -p logs && $(printf '%q ' "${main_cmd[@]}") 2>&1 | tee logs/main.log"
