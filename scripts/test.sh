#!/usr/bin/env bash
# The whole test suite: installs and starts what it needs, runs every test, stops it all.
# Works on a fresh Debian machine with the Rust toolchain, as root.
#
# The three large builds (the workspace with the AWS SDK, the packaging tools, the fuzz
# targets) run one after the other, never side by side: two at once made each slower and
# held twice the memory. Only the scratch root's debootstrap, which waits on the network,
# runs beside them. Each step's time is printed at the end.
set -euo pipefail
cd "$(dirname "$0")/.."

# Each test starts its own private dockerd under /tmp/tb-*; they stop when the test ends.
# Should a test process die hard, stop what this run's beds left running (scripts/beds.sh:
# recorded by pid, never matched by name, so other checkouts' beds go on), and a setup
# still going.
. scripts/beds.sh
rootfs_setup=
cleanup() {
    if [ -n "$rootfs_setup" ] && kill -0 "$rootfs_setup" 2>/dev/null; then
        pkill -TERM -P "$rootfs_setup" 2>/dev/null || true
        kill "$rootfs_setup" 2>/dev/null || true
    fi
    beds_stop
}
trap cleanup EXIT

# A clean build gains nothing from incremental caches, which took a sixth of the disk the
# build used; a CI machine once ran out of it.
export CARGO_INCREMENTAL=0

# Each step's time, and the disk free after it (a build that fills the disk fails in ways
# that do not say so: a linker's bus error).
free_disk() { df -Pm . | awk 'NR == 2 { printf "%d MiB free", $4 }'; }
started=$(date +%s)
steps=()
step() {
    local name=$1 t0 status=0
    shift
    t0=$(date +%s)
    "$@" || status=$?
    steps+=("$(printf '%-28s %5ss   %s' "$name" "$(($(date +%s) - t0))" "$(free_disk)")")
    return "$status"
}
echo "test.sh: $(free_disk) at the start"

step "setup (packages, venvs)" scripts/testbed-setup.sh base
scripts/testbed-setup.sh rootfs >.testbed/setup-rootfs.log 2>&1 &
rootfs_setup=$!

export DROVER_MOTO_SERVER="$PWD/.testbed/venv/bin/moto_server"
step "build (workspace)" cargo build --workspace --all-targets
step "build (packaging tools)" scripts/testbed-setup.sh tools
# The fuzz targets (fuzz/README.md), built without the AWS clients; `fuzz.sh 0` only builds.
step "build (fuzz targets)" scripts/fuzz.sh 0
if ! wait "$rootfs_setup"; then
    echo "test.sh: scripts/testbed-setup.sh rootfs failed:" >&2
    tail -40 .testbed/setup-rootfs.log >&2
    exit 1
fi
cat .testbed/setup-rootfs.log
# A few seconds per fuzz target from its committed corpus; a crash fails the run, after the
# tests have had their say.
fuzz_status=0
step "fuzz (5 s a target)" scripts/fuzz.sh "${DROVER_FUZZ_SECONDS:-5}" || fuzz_status=$?
step "cargo test" cargo test --workspace --all-targets -- --test-threads="${DROVER_TEST_THREADS:-2}"
printf 'test.sh: %s\n' "${steps[@]}" "$(printf '%-28s %5ss' total "$(($(date +%s) - started))")"
if [ "$fuzz_status" -ne 0 ]; then
    echo "test.sh: fuzzing found a crash (see the fuzz.sh output above)" >&2
    exit 1
fi
