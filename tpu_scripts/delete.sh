#!/usr/bin/env bash
# Stop training on every worker, then delete the TPU VM (or queued resource).
#   tpu_scripts/delete.sh --name NAME --zone ZONE [--queued] [--slices N] [--project P] [--dry-run]
source "$(dirname "$0")/common.sh"
QUEUED=0
parse_common "$@"
set -- "${REST[@]+"${REST[@]}"}"
while [ $# -gt 0 ]; do
  case "$1" in
    --queued) QUEUED=1; shift ;;
    *) die "unknown flag $1" ;;
  esac
done
# SIGTERM makes allam train save a checkpoint before it exits
for NODE in $(nodes); do
  run gcloud compute tpus tpu-vm ssh "$NODE" --zone "$ZONE" --worker=all "${GCLOUD_EXTRA[@]+"${GCLOUD_EXTRA[@]}"}" \
    --command "pkill -TERM -f 'allam train' || true"
done
if [ "$QUEUED" = 1 ] || [ "$SLICES" != 1 ]; then
  run gcloud compute tpus queued-resources delete "$NAME" --zone "$ZONE" --force --quiet "${GCLOUD_EXTRA[@]+"${GCLOUD_EXTRA[@]}"}"
else
  run gcloud compute tpus tpu-vm delete "$NAME" --zone "$ZONE" --quiet "${GCLOUD_EXTRA[@]+"${GCLOUD_EXTRA[@]}"}"
fi
