#!/usr/bin/env bash
# Stop training on every worker, then delete the TPU VM (or queued resource).
#   tpu_scripts/delete.sh --name NAME --zone ZONE [--queued] [--project P] [--dry-run]
source "$(dirname "$0")/common.sh"
NAME="" ZONE="" PROJECT="" QUEUED=0
while [ $# -gt 0 ]; do
  case "$1" in
    --name) NAME="$2"; shift 2 ;;
    --zone) ZONE="$2"; shift 2 ;;
    --project) PROJECT="$2"; shift 2 ;;
    --queued) QUEUED=1; shift ;;
    --dry-run) DRY_RUN=1; shift ;;
    -h|--help) sed -n '2,3p' "$0"; exit 0 ;;
    *) die "unknown flag $1" ;;
  esac
done
need name "$NAME"; need zone "$ZONE"
EXTRA=()
[ -n "$PROJECT" ] && EXTRA+=(--project "$PROJECT")
# SIGTERM makes allam train save a checkpoint before it exits
run gcloud compute tpus tpu-vm ssh "$NAME" --zone "$ZONE" --worker=all "${EXTRA[@]}" --command "pkill -TERM -f 'allam train' || true"
if [ "$QUEUED" = 1 ]; then
  run gcloud compute tpus queued-resources delete "$NAME" --zone "$ZONE" --force --quiet "${EXTRA[@]}"
else
  run gcloud compute tpus tpu-vm delete "$NAME" --zone "$ZONE" --quiet "${EXTRA[@]}"
fi
