#!/usr/bin/env bash
# Create a TPU VM (or a queued resource) for allam-jax.
#   tpu_scripts/create.sh --name NAME --zone ZONE --type v5litepod-16 [--project P] [--runtime VERSION]
#                         [--spot] [--queued] [--dry-run]
# --type: v4-8 ... v4-N, v5litepod-N (v5e), v5p-N, v6e-N; --runtime defaults to the image for the type.
# --queued asks through a queued resource (waits for capacity); --spot uses spot capacity.
source "$(dirname "$0")/common.sh"
NAME="" ZONE="" TYPE="" PROJECT="" RUNTIME="" SPOT=0 QUEUED=0
while [ $# -gt 0 ]; do
  case "$1" in
    --name) NAME="$2"; shift 2 ;;
    --zone) ZONE="$2"; shift 2 ;;
    --type) TYPE="$2"; shift 2 ;;
    --project) PROJECT="$2"; shift 2 ;;
    --runtime) RUNTIME="$2"; shift 2 ;;
    --spot) SPOT=1; shift ;;
    --queued) QUEUED=1; shift ;;
    --dry-run) DRY_RUN=1; shift ;;
    -h|--help) sed -n '2,6p' "$0"; exit 0 ;;
    *) die "unknown flag $1" ;;
  esac
done
need name "$NAME"; need zone "$ZONE"; need type "$TYPE"
RUNTIME=${RUNTIME:-$(runtime_for "$TYPE")}
EXTRA=()
[ -n "$PROJECT" ] && EXTRA+=(--project "$PROJECT")
if [ "$QUEUED" = 1 ]; then
  [ "$SPOT" = 1 ] && EXTRA+=(--spot)
  run gcloud compute tpus queued-resources create "$NAME" --node-id "$NAME" --zone "$ZONE" \
    --accelerator-type "$TYPE" --runtime-version "$RUNTIME" "${EXTRA[@]}"
else
  [ "$SPOT" = 1 ] && EXTRA+=(--spot)
  run gcloud compute tpus tpu-vm create "$NAME" --zone "$ZONE" --accelerator-type "$TYPE" \
    --version "$RUNTIME" "${EXTRA[@]}"
fi
