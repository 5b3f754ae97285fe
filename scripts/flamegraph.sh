# Sourced by scripts/vs-nginx and scripts/vs-caddy:
#   flamegraph PID OUT.svg TITLE COMMAND...
# records PID with perf while COMMAND (a shell function is fine) runs once
# more, and draws the samples with inferno into OUT.svg. Where perf or
# inferno-flamegraph (cargo install inferno) is missing it says so.
flamegraph() {
    local pid=$1 out=$2 title=$3 data
    shift 3
    if ! command -v perf >/dev/null || ! command -v inferno-flamegraph >/dev/null; then
        echo "$(basename "$0"): perf or inferno-flamegraph missing; no flame graph"
        return 0
    fi
    data=$(mktemp)
    perf record -F 999 -g -o "$data" -p "$pid" 2>/dev/null &
    local perf_pid=$!
    sleep 0.5
    "$@" >/dev/null
    kill -INT "$perf_pid"
    wait "$perf_pid" 2>/dev/null || true
    mkdir -p "$(dirname "$out")"
    perf script -i "$data" 2>/dev/null | inferno-collapse-perf | inferno-flamegraph --title "$title" >"$out"
    rm -f "$data"
    echo "flame graph: $out"
}
