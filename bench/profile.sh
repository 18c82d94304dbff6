#!/usr/bin/env bash
# Where sessiongate spends its CPU on one page under load: starts the bench upstream
# and a browser-mode gateway with a live session, drives page loads with wrk and
# samples the gateway with `perf record`, then prints the top frames.
#
#   bench/profile.sh 1k        # the small-GET path (1 KiB page, injected)
#   bench/profile.sh 100k      # the injection path on a 100 KiB page
#   PERF_SECONDS=12 PERF_FREQ=499 TOP=30 BENCH_GATE=path/to/sessiongate bench/profile.sh 1m
#   CALLERS=1 bench/profile.sh 1k   # inclusive cost per function (DWARF call graphs)
#
# Needs perf (Debian: linux-perf) and wrk, installed with apt-get when missing (sudo
# when not root); builds the release binaries unless SKIP_BUILD=1. Every process it
# starts is stopped by its PID on exit; perf.data is left in PERF_DATA if set.
set -euo pipefail
cd "$(dirname "$0")/.."

PAGE=${1:-1k}
PERF_SECONDS=${PERF_SECONDS:-10}
PERF_FREQ=${PERF_FREQ:-499}
TOP=${TOP:-25}
CONNECTIONS=${CONNECTIONS:-64}
WORKERS=${WORKERS:-$(nproc)}

BENCH_NAME=profile.sh
source bench/lib.sh
need perf && need wrk || install_packages linux-perf wrk

start_upstream 1
start_gate gate browser
GATE_PID=$PID_gate; PORT=$PORT_gate

COOKIES=$(curl -fs -o /dev/null -D - "${NAVIGATE[@]}" "http://127.0.0.1:$PORT/$PAGE" \
  | awk -F'[: ;]+' 'tolower($1)=="set-cookie" {printf "%s%s", sep, $2; sep="; "}')
[ -n "$COOKIES" ] || die "no session cookie"

wrk -t1 -c"$CONNECTIONS" -d"$((PERF_SECONDS + 4))s" "${NAVIGATE[@]}" -H "Cookie: $COOKIES" \
  "http://127.0.0.1:$PORT/$PAGE" > "$work/wrk.out" &
pids+=($!); WRK_PID=$!
sleep 2
DATA=${PERF_DATA:-$work/perf.data}
if [ -n "${CALLERS:-}" ]; then
  # Inclusive cost: stacks unwound from DWARF (.eh_frame), frames sorted by children.
  perf record -q -F "$PERF_FREQ" --call-graph dwarf,16384 -p "$GATE_PID" -o "$DATA" -- sleep "$PERF_SECONDS" 2>/dev/null
else
  perf record -q -F "$PERF_FREQ" -p "$GATE_PID" -o "$DATA" -- sleep "$PERF_SECONDS" 2>/dev/null
fi
wait "$WRK_PID" || die "wrk failed"
echo "# sessiongate, browser mode, /$PAGE injected, $WORKERS workers; wrk -t1 -c$CONNECTIONS:" \
  "$(awk '/Requests\/sec/ {print $2}' "$work/wrk.out") req/s"
perf report -i "$DATA" --stdio "$([ -n "${CALLERS:-}" ] && echo --children || echo --no-children)" \
  -g none --percent-limit 0.3 --sort symbol 2>/dev/null \
  | grep -v "^#" | sed -E "s/[[:space:]-]+$//" | grep -v "^$" | cut -c1-160 | head -n "$TOP"
