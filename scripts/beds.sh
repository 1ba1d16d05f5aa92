# Sourced by scripts/test.sh, bench.sh and demo.sh: the daemons this run's test beds start
# (dockerd, moto) are recorded in a folder of this checkout (testbed::pids), and
# `beds_stop` stops exactly those and removes their folders under /tmp. Other checkouts'
# beds, and anything else on the machine, are left alone: no pattern matching on names.
#
#   . scripts/beds.sh; trap beds_stop EXIT
beds_pids=${DROVER_TESTBED_PIDS:-$PWD/.testbed/pids/$$}
export DROVER_TESTBED_PIDS="$beds_pids"
mkdir -p "$beds_pids"

# Whether pid $1 still runs program $2 (a word of its command line): a pid reused since it
# was recorded is someone else's.
beds_runs() {
    [ -r "/proc/$1/cmdline" ] && tr '\0' ' ' <"/proc/$1/cmdline" | grep -qF -- "$2"
}

# TERM, then KILL after about 10 s, of pid $1 if it still runs $2.
beds_kill() {
    local pid=$1 program=$2 _
    beds_runs "$pid" "$program" || return 0
    kill -TERM "$pid" 2>/dev/null || return 0
    for _ in $(seq 50); do
        beds_runs "$pid" "$program" || return 0
        sleep 0.2
    done
    kill -KILL "$pid" 2>/dev/null || true
}

beds_stop() {
    local record pid program dir
    for record in "$beds_pids"/*; do
        [ -f "$record" ] || continue
        pid=${record##*/}
        program=$(sed -n 1p "$record")
        dir=$(sed -n 2p "$record")
        [ -n "$program" ] && beds_kill "$pid" "$program"
        # A dockerd killed hard leaves its containerd, which holds the data root.
        if [ -n "$dir" ] && [ -f "$dir/exec/containerd/containerd.pid" ]; then
            beds_kill "$(cat "$dir/exec/containerd/containerd.pid")" containerd
        fi
        # Only a bed's own folder, and only once nothing is mounted under it.
        case $dir in
        /tmp/tb-*) grep -qF " $dir" /proc/self/mounts || rm -rf -- "$dir" ;;
        esac
        rm -f -- "$record"
    done
    rmdir -- "$beds_pids" 2>/dev/null || true
}
