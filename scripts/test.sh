#!/usr/bin/env bash
# The whole test suite: installs and starts what it needs, runs every test, stops it all.
# Works on a fresh Debian machine with the Rust toolchain, as root.
set -euo pipefail
cd "$(dirname "$0")/.."

# Each test starts its own private dockerd under /tmp/tb-*; they stop when the test ends.
# Should a test process die hard, stop whatever it left running, and a setup still going.
packaging_setup=
fuzz_build=
cleanup() {
    for job in "$packaging_setup" "$fuzz_build"; do
        if [ -n "$job" ] && kill -0 "$job" 2>/dev/null; then
            pkill -TERM -P "$job" 2>/dev/null || true
            kill "$job" 2>/dev/null || true
        fi
    done
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
# So do cargo-fuzz and the fuzz targets (fuzz/README.md): their build compiles drover's
# dependencies again, instrumented, into fuzz/target (`scripts/fuzz.sh 0` only builds).
scripts/fuzz.sh 0 >.testbed/fuzz-build.log 2>&1 &
fuzz_build=$!

export DROVER_MOTO_SERVER="$PWD/.testbed/venv/bin/moto_server"
cargo build --workspace --all-targets
if ! wait "$packaging_setup"; then
    echo "test.sh: scripts/testbed-setup.sh packaging failed:" >&2
    tail -40 .testbed/setup-packaging.log >&2
    exit 1
fi
cat .testbed/setup-packaging.log
# Waited for here, so that no compile competes with the tests for the CPU.
if ! wait "$fuzz_build"; then
    echo "test.sh: building the fuzz targets failed:" >&2
    tail -40 .testbed/fuzz-build.log >&2
    exit 1
fi
# A few seconds per fuzz target from its committed corpus; a crash fails the run, after the
# tests have had their say.
fuzz_status=0
scripts/fuzz.sh "${DROVER_FUZZ_SECONDS:-5}" || fuzz_status=$?
cargo test --workspace --all-targets -- --test-threads="${DROVER_TEST_THREADS:-2}"
if [ "$fuzz_status" -ne 0 ]; then
    echo "test.sh: fuzzing found a crash (see the fuzz.sh output above)" >&2
    exit 1
fi
