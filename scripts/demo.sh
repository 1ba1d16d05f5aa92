#!/usr/bin/env bash
# Runs drover locally against the test bed (its own stand-ins, moto, a private dockerd) and
# prints what it did, step by step. Works on a fresh Debian machine with Rust, as root.
#
# Installs only what the demo needs (scripts/testbed-setup.sh demo). Ctrl-C stops it at
# any point: the demo takes its bed down, and whatever of this run's bed is still running
# then (its dockerd, moto) is stopped and its folders under /tmp removed (scripts/beds.sh).
# Nothing is left on the machine: the engine runs in a mount namespace of its own, so the
# agent's /var/lib/rancher lands in the bed's folder.
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/testbed-setup.sh demo
cargo build --quiet -p drover -p testbed
export DROVER_MOTO_SERVER="$PWD/.testbed/venv/bin/moto_server"
. scripts/beds.sh
trap beds_stop EXIT
# In the background so that a signal to this script is handled at once: it is passed on to
# the demo, which takes its bed down; then the EXIT trap stops whatever is left.
target=${CARGO_TARGET_DIR:-target}
"$target/debug/drover-testbed" demo --drover "$target/debug/drover" &
demo=$!
stop_demo() {
    kill -"$1" "$demo" 2>/dev/null || true
    wait "$demo" 2>/dev/null || true
}
trap 'stop_demo INT; exit 130' INT
trap 'stop_demo TERM; exit 143' TERM
wait "$demo"
