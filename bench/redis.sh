#!/usr/bin/env bash
# The Redis store against the memory store, in one run, in front of one upstream
# (examples/bench_upstream.rs, the 1 KiB page), plus the Redis load that active
# sessions cause.
#
#   bench/redis.sh                # about 1 minute (shares bench/lib.sh with compare.sh)
#
# 1. Request path: two gateways in browser mode, one with store.backend = "memory",
#    one with "redis" (a redis-server of its own on a free loopback port, no
#    persistence), each with one live cookie session; wrk drives page loads
#    (Sec-Fetch-Mode: navigate) on each, interleaved REPS times. Reported per store:
#    req/s (median over reps) and the gateway's CPU µs per request (utime + stime
#    from /proc/<pid>/stat over all reps / all requests), and the redis/memory ratios.
# 2. Redis load: SESSIONS sessions minted on the Redis gateway, then each touched
#    once a second (a request per session per second, as a busy tab's heartbeat
#    would) for LOAD_SECONDS; Redis commands/s from `INFO commandstats` deltas,
#    reported per 1,000 active sessions, and split by command.
#
# Environment (defaults in brackets): DURATION [5] seconds per wrk run, REPS [3],
# CONNECTIONS [32], WRK_THREADS [1], WORKERS [nproc], SESSIONS [1000],
# LOAD_SECONDS [10], SKIP_BUILD=1 (use the release binaries in target/).
#
# Needs wrk, redis-server, redis-cli, curl, python3 (apt-get installs wrk and
# redis-server/redis-tools when missing). Everything listens on 127.0.0.1; every
# process it starts is stopped by its PID on exit.
set -euo pipefail
cd "$(dirname "$0")/.."

DURATION=${DURATION:-5}
REPS=${REPS:-3}
CONNECTIONS=${CONNECTIONS:-32}
WRK_THREADS=${WRK_THREADS:-1}
WORKERS=${WORKERS:-$(nproc)}
SESSIONS=${SESSIONS:-1000}
LOAD_SECONDS=${LOAD_SECONDS:-10}

BENCH_NAME=redis.sh
source bench/lib.sh
need wrk && need redis-server && need redis-cli || install_packages wrk redis-server redis-tools
need curl || die "curl is missing"
need python3 || die "python3 is missing"

start_upstream 1

REDIS_PORT=$(free_port)
redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --save '' --appendonly no > "$work/redis.log" 2>&1 &
pids+=($!)
for _ in $(seq 100); do redis-cli -p "$REDIS_PORT" ping >/dev/null 2>&1 && break; sleep 0.1; done
redis-cli -p "$REDIS_PORT" ping >/dev/null || die "redis-server did not start"

# Two gateways, one per store; no per-client limits (every session comes from 127.0.0.1).
for store in memory redis; do
  start_gate "$store" browser $'max_per_client = 0\nnew_per_client = 0' \
    $'[store]\nbackend = "'"$store"$'"\nurl = "redis://127.0.0.1:'"$REDIS_PORT"$'/0"'
done

for store in memory redis; do
  port_var="PORT_$store"
  curl -fs -o /dev/null -D "$work/$store.head" "${NAVIGATE[@]}" "http://127.0.0.1:${!port_var}/1k"
  printf -v "COOKIES_$store" '%s' "$(cookies_of "$work/$store.head")"
done

CLK_TCK=$(getconf CLK_TCK)
ticks() { sed 's/^.*) //' "/proc/$1/stat" | awk '{print $12 + $13}'; }
for store in memory redis; do printf -v "TICKS_$store" 0; printf -v "REQS_$store" 0; : > "$work/rps-$store"; done
for rep in $(seq "$REPS"); do
  for store in memory redis; do
    pid_var="PID_$store"; port_var="PORT_$store"; cookies_var="COOKIES_$store"
    before=$(ticks "${!pid_var}")
    out=$(wrk -t"$WRK_THREADS" -c"$CONNECTIONS" -d"${DURATION}s" "${NAVIGATE[@]}" \
      -H "Cookie: ${!cookies_var}" "http://127.0.0.1:${!port_var}/1k")
    after=$(ticks "${!pid_var}")
    requests=$(awk '/requests in/ {print $1}' <<<"$out")
    rps=$(awk '/Requests\/sec/ {print $2}' <<<"$out")
    if grep -q "Non-2xx" <<<"$out"; then die "$store: non-2xx answers: $out"; fi
    echo "$rps" >> "$work/rps-$store"
    ticks_var="TICKS_$store"; reqs_var="REQS_$store"
    printf -v "$ticks_var" '%s' $(( ${!ticks_var} + after - before ))
    printf -v "$reqs_var" '%s' $(( ${!reqs_var} + requests ))
    echo "rep $rep $store: $rps req/s" >&2
  done
done

python3 - "$CLK_TCK" "$work" "$TICKS_memory" "$REQS_memory" "$TICKS_redis" "$REQS_redis" <<'PY'
import statistics, sys
hz, work = int(sys.argv[1]), sys.argv[2]
t_mem, r_mem, t_red, r_red = map(int, sys.argv[3:7])
rps = {s: statistics.median(float(x) for x in open(f"{work}/rps-{s}")) for s in ("memory", "redis")}
cpu = {"memory": t_mem / hz * 1e6 / r_mem, "redis": t_red / hz * 1e6 / r_red}
print("request path (browser mode, live cookie session, /1k page load)")
print(f"{'store':8} {'req/s':>10} {'CPU µs/req':>11}")
for s in ("memory", "redis"):
    print(f"{s:8} {rps[s]:>10.0f} {cpu[s]:>11.1f}")
print(f"redis/memory: req/s x{rps['redis']/rps['memory']:.2f}, CPU/req x{cpu['redis']/cpu['memory']:.2f}")
PY

# --- Redis load per active session -------------------------------------------
python3 - "$PORT_redis" "$SESSIONS" "$work/sessions" <<'PY'
import http.client, sys
port, n, out = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
conn = http.client.HTTPConnection("127.0.0.1", port)
with open(out, "w") as f:
    for _ in range(n):
        conn.request("GET", "/1k", headers={"Accept": "text/plain"})
        r = conn.getresponse(); r.read()
        if r.status != 200: sys.exit(f"mint answered {r.status}")
        cookies = "; ".join(v.split(";")[0] for k, v in r.getheaders() if k.lower() == "set-cookie")
        f.write(cookies + "\n")
PY
calls() { redis-cli -p "$REDIS_PORT" info commandstats | tr -d '\r' | sed -n 's/^cmdstat_\([a-z|]*\):calls=\([0-9]*\).*/\1 \2/p'; }
calls > "$work/calls-before"
python3 - "$PORT_redis" "$work/sessions" "$LOAD_SECONDS" <<'PY'
import http.client, sys, time
port, path, seconds = int(sys.argv[1]), sys.argv[2], int(sys.argv[3])
sessions = [l.strip() for l in open(path) if l.strip()]
conn = http.client.HTTPConnection("127.0.0.1", port)
start = time.monotonic()
for second in range(seconds):
    for cookies in sessions:
        conn.request("GET", "/1k", headers={"Cookie": cookies, "Accept": "text/plain"})
        r = conn.getresponse(); r.read()
    # one touch per session per second
    time.sleep(max(0.0, start + second + 1 - time.monotonic()))
elapsed = time.monotonic() - start
print(f"{len(sessions)} sessions touched once a second for {elapsed:.1f} s", file=sys.stderr)
open(path + ".elapsed", "w").write(f"{elapsed}")
PY
calls > "$work/calls-after"
python3 - "$work" "$SESSIONS" <<'PY'
import sys
work, n = sys.argv[1], int(sys.argv[2])
def read(name):
    return {k: int(v) for k, v in (l.split() for l in open(f"{work}/{name}") if l.strip())}
before, after = read("calls-before"), read("calls-after")
elapsed = float(open(f"{work}/sessions.elapsed").read())
delta = {k: after[k] - before.get(k, 0) for k in after if after[k] - before.get(k, 0) > 0}
total = sum(delta.values()) - delta.get("info", 0)
print(f"Redis load: {total / elapsed:.0f} commands/s for {n} active sessions "
      f"({total / elapsed * 1000 / n:.0f} per 1,000), each touched once a second")
for k, v in sorted(delta.items(), key=lambda kv: -kv[1]):
    if k != "info":
        print(f"  {k:12} {v / elapsed:8.1f}/s")
PY
