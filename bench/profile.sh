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

die() { echo "profile.sh: $*" >&2; exit 1; }
need() { command -v "$1" >/dev/null 2>&1; }
if ! need perf || ! need wrk; then
  need apt-get || die "perf and wrk are missing and there is no apt-get to install them"
  SUDO=""
  if [ "$(id -u)" != 0 ]; then need sudo || die "not root and no sudo"; SUDO=sudo; fi
  $SUDO env DEBIAN_FRONTEND=noninteractive apt-get update -qq
  $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends linux-perf wrk >/dev/null
fi
if [ "${SKIP_BUILD:-0}" != 1 ]; then
  cargo build --release --quiet --bin sessiongate --example bench_upstream
fi
GATE_BIN=${BENCH_GATE:-target/release/sessiongate}
UPSTREAM_BIN=target/release/examples/bench_upstream

work=$(mktemp -d)
pids=()
cleanup() {
  local pid
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
  rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

"$UPSTREAM_BIN" 127.0.0.1:0 1 > "$work/upstream.out" &
pids+=($!)
for _ in $(seq 100); do grep -q listening "$work/upstream.out" 2>/dev/null && break; sleep 0.1; done
UPSTREAM=$(awk '/listening on/ {print $3}' "$work/upstream.out")
[ -n "$UPSTREAM" ] || die "the upstream did not start"

PORT=$(free_port); ADMIN=$(free_port)
cat > "$work/gate.toml" <<CONF
[listen]
address = "127.0.0.1:$PORT"
[upstream]
url = "http://$UPSTREAM"
[session]
mode = "browser"
[admin]
address = "127.0.0.1:$ADMIN"
[log]
level = "warn"
CONF
TOKIO_WORKER_THREADS=$WORKERS "$GATE_BIN" --config "$work/gate.toml" 2> "$work/gate.log" &
pids+=($!); GATE_PID=$!
for _ in $(seq 100); do curl -fs -o /dev/null "http://127.0.0.1:$ADMIN/healthz" && break; sleep 0.1; done

NAVIGATE=(-H "Sec-Fetch-Mode: navigate" -H "Sec-Fetch-Dest: document" -H "Accept: text/html")
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
