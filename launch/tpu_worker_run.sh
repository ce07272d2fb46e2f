#!/usr/bin/env bash
# Runs one command on one worker of a Cloud TPU VM slice; launch/tpu_vm.sh starts
# it on all workers at once from the repository directory:
#
#   WORKERS=4 launch/tpu_worker_run.sh .venv/bin/python -m videogen.main --config=... --workdir=...
#
# Multi-host set-up: on a slice of more than one worker it exports
# JAX_COORDINATOR_ADDRESS=<worker 0>:8482, read from the TPU VM's metadata
# (worker-network-endpoints, the list JAX's own TPU detection uses), so that
# videogen.main calls jax.distributed.initialize(); JAX then reads the process
# count and this worker's index from the same metadata. A JAX_COORDINATOR_ADDRESS
# already in the environment is kept.
#
# The output also goes to logs/main.log (the previous run's to logs/main.prev.log).
# Exit status: the command's, except 143 when the trainer stopped on SIGTERM
# (checkpoint saved, training not finished), so that the launcher can tell a
# preemption stop from the end of training.
#
# Environment: WORKERS (workers in the slice; 1 skips the metadata query, 0 or
# unset: read it from the metadata), METADATA_URL (the GCE metadata server),
# JAX_COORDINATOR_PORT [8482], LOG [logs/main.log].
set -euo pipefail

if [[ $# -eq 0 ]]; then
  echo "error: no command; usage: WORKERS=N launch/tpu_worker_run.sh COMMAND [ARGS...]" >&2
  exit 2
fi
WORKERS="${WORKERS:-0}"
[[ "$WORKERS" =~ ^[0-9]+$ ]] || { echo "error: WORKERS=$WORKERS; use a whole number (0: unknown)." >&2; exit 2; }
METADATA_URL="${METADATA_URL:-http://metadata.google.internal/computeMetadata/v1}"
LOG="${LOG:-logs/main.log}"

if [[ -z "${JAX_COORDINATOR_ADDRESS:-}" && "$WORKERS" != 1 ]]; then
  # "name:id:ip,name:id:ip,..." (older images) or "host,host,..."; worker 0 first.
  if endpoints="$(curl -sf -H 'Metadata-Flavor: Google' \
      "$METADATA_URL/instance/attributes/worker-network-endpoints")"; then
    IFS=, read -r -a workers <<<"$endpoints"
    if [[ "$WORKERS" != 0 && ${#workers[@]} -ne $WORKERS ]]; then
      echo "warning: the metadata lists ${#workers[@]} workers, the accelerator type $WORKERS;" \
           "using the metadata." >&2
    fi
    if [[ ${#workers[@]} -gt 1 ]]; then
      export JAX_COORDINATOR_ADDRESS="${workers[0]##*:}:${JAX_COORDINATOR_PORT:-8482}"
    fi
  elif [[ "$WORKERS" -gt 1 ]]; then
    echo "error: cannot read worker-network-endpoints from $METADATA_URL, so the $WORKERS" \
         "workers cannot find each other; set JAX_COORDINATOR_ADDRESS=<worker 0 IP>:8482." >&2
    exit 2
  fi
fi
echo "worker $(hostname): JAX_COORDINATOR_ADDRESS=${JAX_COORDINATOR_ADDRESS:-unset (one host)}"

mkdir -p "$(dirname "$LOG")"
if [[ -f "$LOG" ]]; then mv -f "$LOG" "${LOG%.log}.prev.log"; fi
# A preempted VM sends SIGTERM to every process; this shell and tee outlive the
# trainer while it saves (the trap is not inherited by the command; tee ignores
# SIGTERM, so the trainer's output never hits a closed pipe).
trap 'echo "worker $(hostname): SIGTERM; waiting for the trainer to save." >&2' TERM
set +e
"$@" 2>&1 | (trap '' TERM; exec tee "$LOG")
rc=${PIPESTATUS[0]}
set -e
# videogen/trainers/loop.py logs this line when it stops early on SIGTERM.
if grep -q "on SIGTERM; checkpoint saved" "$LOG"; then
  exit 143
fi
exit "$rc"
