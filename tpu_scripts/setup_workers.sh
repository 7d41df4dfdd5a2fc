#!/usr/bin/env bash
# Copy this checkout to every worker of a TPU VM and install it there: setup.sh's pinned stack, libtpu included (the
# TPU images ship an older Python; where no 3.12 is found, uv installs one).
#   tpu_scripts/setup_workers.sh --name NAME --zone ZONE [--slices N] [--project P] [--dir allam-jax] [--dry-run]
source "$(dirname "$0")/common.sh"
DIR="allam-jax"
parse_common "$@"
set -- "${REST[@]+"${REST[@]}"}"
while [ $# -gt 0 ]; do
  case "$1" in
    --dir) value "$@"; DIR="$2"; shift 2 ;;
    *) die "unknown flag $1" ;;
  esac
done
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
run tar -C "$ROOT" --exclude=.venv --exclude=.git --exclude=data_cache --exclude=runs -czf /tmp/allam-jax.tgz .
QDIR=$(printf '%q' "$DIR")  # quoted for the remote shell: spaces and metacharacters stay in the name
for NODE in $(nodes); do
  run gcloud compute tpus tpu-vm scp /tmp/allam-jax.tgz "$NODE:~/allam-jax.tgz" --zone "$ZONE" --worker=all \
    "${GCLOUD_EXTRA[@]+"${GCLOUD_EXTRA[@]}"}"
  run gcloud compute tpus tpu-vm ssh "$NODE" --zone "$ZONE" --worker=all "${GCLOUD_EXTRA[@]+"${GCLOUD_EXTRA[@]}"}" --command \
    "mkdir -p ~/$QDIR && tar -C ~/$QDIR -xzf ~/allam-jax.tgz && cd ~/$QDIR && export PATH=~/.local/bin:\$PATH && { bash setup.sh --find-python >/dev/null 2>&1 || { python3 -m pip install -q --user uv && uv python install 3.12; }; } && bash setup.sh && .venv/bin/allam data prepare"
done
