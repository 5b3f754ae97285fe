#!/bin/sh
# Same server, same run: homecmp-loadgen against h2load (Debian's
# nghttp2-client), legit requests only, same connections and streams, for
# HTTP/1.1 and HTTP/2. Prints the requests per second each reached and the
# ratio, plus the CPU each side used (from the loadgen's JSON report).
#
# Usage: loadgen/compare-h2load.sh READY_LINE_FILE [DURATION_SECS] [CONNECTIONS] [STREAMS]
#   READY_LINE_FILE holds `homecmp serve`'s first stdout line
#   ("homecmp ready public=... admin=... token_file=... ca=...").
# Environment: LOADGEN (default homecmp-loadgen), SERVER_PID (adds the
# server's CPU use to the loadgen's report).
# Loopback targets only; the run is bounded by DURATION_SECS per tool.
set -eu

ready_file=$1
secs=${2:-10}
connections=${3:-16}
streams=${4:-8}
loadgen=${LOADGEN:-homecmp-loadgen}

field() { sed -n "s/.* $1=\([^ ]*\).*/\1/p" "$ready_file" | head -1; }
public=$(field public)
admin=$(field admin)
token_file=$(field token_file)
ca=$(field ca)
case $public in
https://127.*) ;;
*) echo "refusing: $public is not a loopback URL" >&2; exit 64 ;;
esac

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
common="--url $public --admin $admin --token-file $token_file --ca $ca --quiet"
# shellcheck disable=SC2086
# Subscribers of its own (from number 60000), so other setups on the server stay valid.
"$loadgen" $common --clientids 64 --codes 1 --first-subscriber 60000 --setup-only \
    --save-setup "$work/setup.json" >/dev/null
code=$(jq -r '.codes[0]' "$work/setup.json")
clientid=$(jq -r '.subscribers[0].clientids[0]' "$work/setup.json")
url="$public/mc/v1/resolve?code=$code&clientid=$clientid"
server_pid=${SERVER_PID:+--server-pid $SERVER_PID}

printf '%-8s %14s %14s %8s %s\n' protocol h2load_rps loadgen_rps ratio "loadgen CPU (cores) / server CPU (cores)"
for protocol in h1 h2; do
    # The loadgen's legitimate requests leave half from WiFi, half from the
    # subscriber's MNO address: an HTTP/2 lane is two connections, each
    # carrying half its streams. Half the lanes with twice the streams is
    # h2load's CONNECTIONS connections with STREAMS streams each.
    if [ "$protocol" = h1 ]; then
        h1=--h1 m=1 lanes=$connections lane_streams=1
    else
        h1= m=$streams lanes=$(((connections + 1) / 2)) lane_streams=$((streams * 2))
    fi
    # shellcheck disable=SC2086
    h2load $h1 -c "$connections" -m "$m" -D "$secs" --warm-up-time=1 "$url" >"$work/h2load-$protocol.txt"
    h2load_rps=$(awk '/^finished in/ { gsub(",", "", $4); print $4 }' "$work/h2load-$protocol.txt")
    ok=$(awk '/^status codes:/ { print $3 }' "$work/h2load-$protocol.txt")
    # shellcheck disable=SC2086
    "$loadgen" $common $server_pid --setup "$work/setup.json" --mix legit=1 -p "$protocol" \
        -c "$lanes" -m "$lane_streams" -d "${secs}s" --warmup 1s --json "$work/loadgen-$protocol.json" >/dev/null
    loadgen_rps=$(jq '.total.throughput_rps' "$work/loadgen-$protocol.json")
    cpu=$(jq -r 'def r: if . == null then "?" else (. * 100 | round / 100 | tostring) end;
        "\(.cpu.loadgen.cores | r) / \(.cpu.server.cores | r)"' "$work/loadgen-$protocol.json")
    ratio=$(awk -v a="$loadgen_rps" -v b="$h2load_rps" 'BEGIN { printf "%.2f", (b > 0 ? a / b : 0) }')
    printf '%-8s %14.0f %14.0f %8s %s   (h2load 2xx: %s)\n' "$protocol" "$h2load_rps" "$loadgen_rps" "$ratio" "$cpu" "$ok"
done
