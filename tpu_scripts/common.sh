#!/usr/bin/env bash
# Shared by the tpu_scripts: flag parsing helpers and `run`, which prints the command under --dry-run.
set -euo pipefail

DRY_RUN=0

run() {
  # Prints the command (shell-quoted) and runs it unless --dry-run was given.
  local quoted
  quoted=$(printf '%q ' "$@")
  echo "+ ${quoted% }"
  if [ "$DRY_RUN" = 0 ]; then "$@"; fi
}

die() { echo "$(basename "$0"): error: $*" >&2; exit 2; }

# parse_common "$@": takes the flags every script shares (--name, --zone, --project, --slices, --dry-run, --help)
# and leaves the script's own flags in REST; GCLOUD_EXTRA carries --project for gcloud. --slices N: a multislice
# queued resource NAME whose N slices are the TPU VMs NAME-0 .. NAME-(N-1) (create.sh --slices makes it so).
NAME="" ZONE="" PROJECT="" SLICES=1 REST=() GCLOUD_EXTRA=()
parse_common() {
  while [ $# -gt 0 ]; do
    case "$1" in
      --name) value "$@"; NAME="$2"; shift 2 ;;
      --zone) value "$@"; ZONE="$2"; shift 2 ;;
      --project) value "$@"; PROJECT="$2"; shift 2 ;;
      --slices) value "$@"; SLICES="$2"; shift 2 ;;
      --dry-run) DRY_RUN=1; shift ;;
      -h|--help) sed -n '2,/^source/p' "$0" | grep '^#' | sed 's/^# \{0,1\}//'; exit 0 ;;
      *) REST+=("$1"); shift ;;
    esac
  done
  need name "$NAME"; need zone "$ZONE"
  [[ "$SLICES" =~ ^[1-9][0-9]*$ ]] || die "--slices takes a count >= 1, got '$SLICES'"
  if [ -n "$PROJECT" ]; then GCLOUD_EXTRA=(--project "$PROJECT"); fi
}

nodes() {  # the TPU VMs of NAME: itself, or each slice of a multislice queued resource
  if [ "$SLICES" = 1 ]; then echo "$NAME"; else for i in $(seq 0 $((SLICES - 1))); do echo "$NAME-$i"; done; fi
}

value() {  # value "$@" at a flag that takes a value: it must be there (not missing, not the next flag)
  if [ $# -lt 2 ] || [[ "$2" == --* ]]; then die "$1 needs a value (see --help)"; fi
}

need() {  # need NAME VALUE: a required flag
  [ -n "$2" ] || die "--$1 is required (see --help)"
}

runtime_for() {  # the TPU VM software version for an accelerator type
  case "$1" in
    v4-*) echo "tpu-ubuntu2204-base" ;;
    v5litepod-*|v5e-*) echo "v2-alpha-tpuv5-lite" ;;
    v5p-*) echo "v2-alpha-tpuv5" ;;
    v6e-*) echo "v2-alpha-tpuv6e" ;;
    *) die "unknown accelerator type '$1' (v4-N, v5litepod-N, v5p-N, v6e-N)" ;;
  esac
}
