#!/usr/bin/env bash
# Follow the training log of one worker (default 0, the one that writes metrics).
#   tpu_scripts/logs.sh --name NAME --zone ZONE [--worker 0] [--slices N] [--project P] [--dir allam-jax] [--dry-run]
# (with --slices: worker 0 of the first slice, NAME-0, the process that writes metrics)
source "$(dirname "$0")/common.sh"
DIR="allam-jax" WORKER=0
parse_common "$@"
set -- "${REST[@]+"${REST[@]}"}"
while [ $# -gt 0 ]; do
  case "$1" in
    --dir) value "$@"; DIR="$2"; shift 2 ;;
    --worker) value "$@"; WORKER="$2"; shift 2 ;;
    *) die "unknown flag $1" ;;
  esac
done
QDIR=$(printf '%q' "$DIR")  # quoted for the remote shell: spaces and metacharacters stay in the name
run gcloud compute tpus tpu-vm ssh "$(nodes | head -n 1)" --zone "$ZONE" --worker="$WORKER" "${GCLOUD_EXTRA[@]+"${GCLOUD_EXTRA[@]}"}" \
  --command "tail -n 200 -f ~/$QDIR/train.log"
