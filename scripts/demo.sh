#!/usr/bin/env bash
# Runs drover locally against the test bed (its own stand-ins, moto, a private dockerd) and
# prints what it did, step by step. Works on a fresh Debian machine with Rust, as root.
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/testbed-setup.sh base
cargo build --quiet -p drover -p testbed
export DROVER_MOTO_SERVER="$PWD/.testbed/venv/bin/moto_server"
exec target/debug/drover-testbed demo --drover target/debug/drover
