#!/usr/bin/env bash
# The whole test suite: installs and starts what it needs, runs every test, stops it all.
# Works on a fresh Debian machine with the Rust toolchain, as root.
set -euo pipefail
cd "$(dirname "$0")/.."

# Each test starts its own private dockerd under /tmp/tb-*; they stop when the test ends.
# Should a test process die hard, stop whatever it left running, and a setup still going.
packaging_setup=
cleanup() {
    if [ -n "$packaging_setup" ] && kill -0 "$packaging_setup" 2>/dev/null; then
        pkill -TERM -P "$packaging_setup" 2>/dev/null || true
        kill "$packaging_setup" 2>/dev/null || true
    fi
    pkill -TERM -f 'dockerd --host unix:///tmp/tb-' 2>/dev/null || true
    pkill -TERM -f 'moto_server -H 127.0.0.1' 2>/dev/null || true
}
trap cleanup EXIT

scripts/testbed-setup.sh base
# The slow part of the setup (building the packaging tools, debootstrapping a scratch root)
# runs beside the build, which leaves a core idle while it compiles the large AWS SDK
# crates one at a time.
scripts/testbed-setup.sh packaging >.testbed/setup-packaging.log 2>&1 &
packaging_setup=$!

export DROVER_MOTO_SERVER="$PWD/.testbed/venv/bin/moto_server"
cargo build --workspace --all-targets
if ! wait "$packaging_setup"; then
    echo "test.sh: scripts/testbed-setup.sh packaging failed:" >&2
    tail -40 .testbed/setup-packaging.log >&2
    exit 1
fi
cat .testbed/setup-packaging.log
cargo test --workspace --all-targets -- --test-threads="${DROVER_TEST_THREADS:-2}"
