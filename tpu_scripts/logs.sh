#!/usr/bin/env bash
# Follow the training log of one worker (default 0, the one that writes metrics).
#   tpu_scripts/logs.sh --name NAME --zone ZONE [--worker 0] [--project P] [--dir allam-jax] [--dry-run]
source "$(dirname "$0")/common.sh"
NAME="" ZONE="" PROJECT="" DIR="allam-jax" WORKER=0
while [ $# -gt 0 ]; do
  case "$1" in
    --name) NAME="$2"; shift 2 ;;
    --zone) ZONE="$2"; shift 2 ;;
    --project) PROJECT="$2"; shift 2 ;;
    --dir) DIR="$2"; shift 2 ;;
    --worker) WORKER="$2"; shift 2 ;;
    --dry-run) DRY_RUN=1; shift ;;
    -h|--help) sed -n '2,3p' "$0"; exit 0 ;;
    *) die "unknown flag $1" ;;
  esac
done
need name "$NAME"; need zone "$ZONE"
EXTRA=()
[ -n "$PROJECT" ] && EXTRA+=(--project "$PROJECT")
run gcloud compute tpus tpu-vm ssh "$NAME" --zone "$ZONE" --worker="$WORKER" "${EXTRA[@]}" --command "tail -n 200 -f ~/$DIR/train.log"
