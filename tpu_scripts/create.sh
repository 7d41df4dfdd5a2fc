#!/usr/bin/env bash
# Create a TPU VM (or a queued resource) for allam-jax.
#   tpu_scripts/create.sh --name NAME --zone ZONE --type v5litepod-16 [--project P] [--runtime VERSION]
#                         [--spot] [--queued] [--slices N] [--dry-run]
# --type: v4-8 ... v4-N, v5litepod-N (v5e), v5p-N, v6e-N; --runtime defaults to the image for the type.
# --queued asks through a queued resource (waits for capacity); --spot uses spot capacity; --slices N asks for N
# slices of --type joined over the data-centre network (multislice: a queued resource, VMs NAME-0 .. NAME-(N-1)).
source "$(dirname "$0")/common.sh"
TYPE="" RUNTIME="" SPOT=0 QUEUED=0
parse_common "$@"
set -- "${REST[@]+"${REST[@]}"}"
while [ $# -gt 0 ]; do
  case "$1" in
    --type) value "$@"; TYPE="$2"; shift 2 ;;
    --runtime) value "$@"; RUNTIME="$2"; shift 2 ;;
    --spot) SPOT=1; shift ;;
    --queued) QUEUED=1; shift ;;
    *) die "unknown flag $1" ;;
  esac
done
need type "$TYPE"
if [[ "$TYPE" =~ ^(.+-[0-9]+)x([0-9]+)$ ]]; then
  die "--type $TYPE: name one slice's type and the count with --slices (--type ${BASH_REMATCH[1]} --slices ${BASH_REMATCH[2]})"
fi
[[ "$TYPE" =~ ^(v4|v5litepod|v5e|v5p|v6e)-[1-9][0-9]*$ ]] || die "unknown accelerator type '$TYPE' (v4-N, v5litepod-N, v5p-N, v6e-N)"
RUNTIME=${RUNTIME:-$(runtime_for "$TYPE")}
EXTRA=("${GCLOUD_EXTRA[@]+"${GCLOUD_EXTRA[@]}"}")
[ "$SPOT" = 1 ] && EXTRA+=(--spot)
if [ "$SLICES" != 1 ]; then
  run gcloud compute tpus queued-resources create "$NAME" --node-count "$SLICES" --node-prefix "$NAME" --zone "$ZONE" \
    --accelerator-type "$TYPE" --runtime-version "$RUNTIME" "${EXTRA[@]+"${EXTRA[@]}"}"
elif [ "$QUEUED" = 1 ]; then
  run gcloud compute tpus queued-resources create "$NAME" --node-id "$NAME" --zone "$ZONE" \
    --accelerator-type "$TYPE" --runtime-version "$RUNTIME" "${EXTRA[@]+"${EXTRA[@]}"}"
else
  run gcloud compute tpus tpu-vm create "$NAME" --zone "$ZONE" --accelerator-type "$TYPE" \
    --version "$RUNTIME" "${EXTRA[@]+"${EXTRA[@]}"}"
fi
