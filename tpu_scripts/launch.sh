#!/usr/bin/env bash
# Start one gin experiment on every worker (each runs the same command; jax.distributed finds its peers; on a
# multislice resource, --slices N, every worker of every slice, and the slices find each other over DCN).
#   tpu_scripts/launch.sh --name NAME --zone ZONE --gin_file F --workdir gs://BUCKET/run [--slices N]
#                         [--gin_bindings 'B'] ... [--project P] [--dir allam-jax] [--dry-run]
source "$(dirname "$0")/common.sh"
DIR="allam-jax" GIN="" WORKDIR="" BINDINGS=()
parse_common "$@"
set -- "${REST[@]+"${REST[@]}"}"
while [ $# -gt 0 ]; do
  case "$1" in
    --dir) value "$@"; DIR="$2"; shift 2 ;;
    --gin_file) value "$@"; GIN="$2"; shift 2 ;;
    --workdir) value "$@"; WORKDIR="$2"; shift 2 ;;
    --gin_bindings) value "$@"; BINDINGS+=("$2"); shift 2 ;;
    *) die "unknown flag $1" ;;
  esac
done
need gin_file "$GIN"; need workdir "$WORKDIR"
QDIR=$(printf '%q' "$DIR")  # quoted for the remote shell: spaces and metacharacters stay in the name
CMD="cd ~/$QDIR && nohup .venv/bin/allam train --distributed=auto --gin_file=$(printf '%q' "$GIN") --workdir=$(printf '%q' "$WORKDIR")"
for b in "${BINDINGS[@]+"${BINDINGS[@]}"}"; do CMD+=" --gin_bindings=$(printf '%q' "$b")"; done
CMD+=" > ~/$QDIR/train.log 2>&1 &"
for NODE in $(nodes); do
  run gcloud compute tpus tpu-vm ssh "$NODE" --zone "$ZONE" --worker=all "${GCLOUD_EXTRA[@]+"${GCLOUD_EXTRA[@]}"}" --command "$CMD"
done
