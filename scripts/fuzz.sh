#!/usr/bin/env bash
# Fuzzes drover's parsers of outside input with cargo-fuzz (libFuzzer); see fuzz/README.md.
#
#   scripts/fuzz.sh [SECONDS] [TARGET...]    SECONDS per target (default 5), every target
#                                            (default) or the ones named, one after another;
#                                            0 only builds (scripts/test.sh does that early)
#
# Works on the stable toolchain: no sanitizer (that needs nightly), overflow checks and
# debug assertions on. Each target starts from a throwaway copy of its committed corpus
# (fuzz/corpus/TARGET), so a run never changes the work tree; with DROVER_FUZZ_KEEP_CORPUS=1
# it grows fuzz/grown/TARGET instead (ignored by git) and picks up there next time, which is
# what long runs want. A crash is written to fuzz/artifacts/TARGET/ and fails the run.
#
# Environment: DROVER_FUZZ_PROFILE=dev|release (dev: see fuzz/README.md for why),
# DROVER_FUZZ_MAX_LEN (bytes, default 16384), DROVER_FUZZ_ARGS (more libFuzzer flags).
set -euo pipefail

# All in a function, read whole before it runs: editing the script during an hour-long run
# does not change what the run does.
main() {
    cd "$(dirname "$0")/.."

    seconds=${1:-5}
    shift || true
    case $seconds in '' | *[!0-9]*) echo "usage: $0 [SECONDS] [TARGET...]" >&2; exit 2 ;; esac
    all_targets=(lifecycle_message rancher_json imds_answers config labels)
    targets=("$@")
    [ ${#targets[@]} -gt 0 ] || targets=("${all_targets[@]}")
    for t in "${targets[@]}"; do
        [ -d "fuzz/corpus/$t" ] || { echo "fuzz.sh: no target $t (have: ${all_targets[*]})" >&2; exit 2; }
    done

    # cargo-fuzz, pinned, in the repo's own cargo root (as scripts/testbed-setup.sh does for the
    # packaging tools): nothing global changes.
    tools=$PWD/.testbed/cargo
    cargo_fuzz_version=0.13.2
    if ! "$tools/bin/cargo-fuzz" --version 2>/dev/null | grep -qx "cargo-fuzz $cargo_fuzz_version"; then
        echo "fuzz.sh: installing cargo-fuzz $cargo_fuzz_version into $tools"
        cargo install -q --locked --debug --root "$tools" --config profile.dev.debug=0 \
            "cargo-fuzz@$cargo_fuzz_version"
    fi
    export PATH="$tools/bin:$PATH"

    profile=${DROVER_FUZZ_PROFILE:-dev}
    case $profile in
        dev) build_flags=(--dev); out=debug ;;
        release) build_flags=(--debug-assertions); out=release ;;
        *) echo "fuzz.sh: DROVER_FUZZ_PROFILE is dev or release" >&2; exit 2 ;;
    esac
    triple=$(rustc -vV | sed -n 's/^host: //p')
    build_started=$(date +%s)
    cargo fuzz build --sanitizer none "${build_flags[@]}" >&2
    echo "fuzz.sh: built the targets ($profile) in $(($(date +%s) - build_started))s" >&2
    [ "$seconds" -gt 0 ] || exit 0

    work=$(mktemp -d /tmp/drover-fuzz.XXXXXX)
    trap 'rm -rf "$work"' EXIT
    failed=0
    rows=()
    for t in "${targets[@]}"; do
        if [ "${DROVER_FUZZ_KEEP_CORPUS:-}" = 1 ]; then
            corpus=fuzz/grown/$t
        else
            corpus=$work/corpus/$t
        fi
        mkdir -p "$corpus" "fuzz/artifacts/$t"
        for seed in "fuzz/corpus/$t"/*; do
            [ -e "$corpus/${seed##*/}" ] || cp "$seed" "$corpus/"
        done
        find "fuzz/artifacts/$t" -type f | sort >"$work/$t.before"
        log=$work/$t.log
        started=$(date +%s)
        status=0
        # One process, one job; a crash or a hang (-timeout) ends the target's run.
        # shellcheck disable=SC2086
        "fuzz/target/$triple/$out/$t" "$corpus" \
            -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 \
            -max_len="${DROVER_FUZZ_MAX_LEN:-16384}" -print_final_stats=1 \
            -artifact_prefix="fuzz/artifacts/$t/" ${DROVER_FUZZ_ARGS:-} >"$log" 2>&1 || status=$?
        took=$(($(date +%s) - started))
        runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
        rate=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log" | tail -1)
        size=$(find "$corpus" -type f | wc -l)
        find "fuzz/artifacts/$t" -type f | sort | comm -13 "$work/$t.before" - >"$work/$t.new"
        crashes=$(wc -l <"$work/$t.new")
        if [ "$status" -ne 0 ] && [ "$crashes" -eq 0 ]; then crashes=1; fi
        rows+=("$(printf '%-18s %10s %6s %8s %7s %8s' "$t" "${runs:-?}" "$took" "${rate:-?}" "$size" "$crashes")")
        echo "fuzz.sh: ${rows[-1]}" >&2
        if [ "$crashes" -ne 0 ]; then
            failed=1
            echo "fuzz.sh: $t crashed (exit $status); the end of its log:" >&2
            grep -v '^#[0-9]' "$log" | tail -40 >&2
            while read -r artifact; do
                echo "fuzz.sh: reproduce with: fuzz/target/$triple/$out/$t $artifact" >&2
            done <"$work/$t.new"
        fi
    done

    printf '%-18s %10s %6s %8s %7s %8s\n' target runs secs exec/s corpus crashes
    printf '%s\n' "${rows[@]}"
    if [ "$failed" -ne 0 ]; then
        echo "fuzz.sh: crashes found; see fuzz/README.md to reproduce them" >&2
        exit 1
    fi
}

main "$@"
