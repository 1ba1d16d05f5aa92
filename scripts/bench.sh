#!/usr/bin/env bash
# Benchmarks drover's release build against the test bed and writes BENCHMARKS.md:
# footprint while idle, reaction time per source, boot overhead, AWS calls per idle
# host-hour, and a fleet simulation (N drovers on one queue, half terminated at once).
#
#   scripts/bench.sh                      the full run (about 10 minutes)
#   scripts/bench.sh --fleet 100 --runs 50 --idle 300
#   scripts/bench.sh --only reaction      one section: footprint, reaction, boot, fleet
#
# Prints a table; measurements, not assertions. The machine is shared and noisy: compare
# figures within one run. Works where scripts/test.sh works (Debian, root).
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/testbed-setup.sh demo
# What the bench's beds left running, should it die hard: only this run's (scripts/beds.sh).
. scripts/beds.sh
trap beds_stop EXIT

cargo build --release --locked -p drover -p testbed
export DROVER_MOTO_SERVER="$PWD/.testbed/venv/bin/moto_server"
out=BENCHMARKS.md
target=${CARGO_TARGET_DIR:-target}
case " $* " in *" --only "*) out=$target/bench-partial.md ;; esac
"$target/release/drover-testbed" bench --drover "$target/release/drover" --out "$out" "$@"
