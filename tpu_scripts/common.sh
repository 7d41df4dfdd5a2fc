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

# parse_common "$@": takes the flags every script shares (--name, --zone, --project, --dry-run, --help)
# and leaves the script's own flags in REST; GCLOUD_EXTRA carries --project for gcloud.
NAME="" ZONE="" PROJECT="" REST=() GCLOUD_EXTRA=()
parse_common() {
  while [ $# -gt 0 ]; do
    case "$1" in
      --name) NAME="$2"; shift 2 ;;
      --zone) ZONE="$2"; shift 2 ;;
      --project) PROJECT="$2"; shift 2 ;;
      --dry-run) DRY_RUN=1; shift ;;
      -h|--help) sed -n '2,/^source/p' "$0" | grep '^#' | sed 's/^# \{0,1\}//'; exit 0 ;;
      *) REST+=("$1"); shift ;;
    esac
  done
  need name "$NAME"; need zone "$ZONE"
  if [ -n "$PROJECT" ]; then GCLOUD_EXTRA=(--project "$PROJECT"); fi
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
