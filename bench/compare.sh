#!/usr/bin/env bash
# sessiongate against nginx, in one run on one machine, in front of one upstream
# (examples/bench_upstream.rs: 1 KiB, 100 KiB and 1 MiB text/html pages from memory).
#
#   bench/compare.sh              # full run, about 6 minutes
#   QUICK=1 bench/compare.sh      # about 1 minute, for a first look
#
# Variants, each on the three pages, interleaved (rep 1 of every cell, then rep 2, …):
#   direct        the upstream itself
#   nginx         nginx proxy_pass, upstream keep-alive, worker_processes = WORKERS
#   nginx-sub     the same plus sub_filter injecting the gateway's own agent tag
#   sg-browser    sessiongate, session.mode = "browser", a live cookie session
#   sg-tab        sessiongate, session.mode = "tab", the X-Session-Token header
# plus heartbeats/s on POST {prefix}/heartbeat (browser mode, cookie + agent header).
# Every request is a page load as a browser sends it (Sec-Fetch-Mode: navigate), so
# the gateway injects the agent into every answer.
#
# Reported per cell: req/s and p50/p99 (median over reps), the proxy's CPU µs per
# request (utime + stime from /proc/<pid>/stat over all reps / requests; nginx: master
# and workers summed), and the ratios to nginx and to direct; then the time to first
# byte of single unloaded requests (median of TTFB_SAMPLES). CPU per request is the
# figure to trust on a busy machine; req/s moves with whatever else runs.
#
# Environment (defaults in brackets):
#   DURATION [6]  seconds per wrk run     REPS [3]  interleaved repetitions
#   CONNECTIONS [64]  WRK_THREADS [1]     WORKERS [nproc]  proxy worker threads
#   UPSTREAM_THREADS [1]                  TTFB_SAMPLES [21]
#   PAGES ["1k 100k 1m"]  a subset, e.g. PAGES=1k
#   QUICK=1  sets DURATION=3 REPS=1 TTFB_SAMPLES=9 unless they are set
#   SKIP_BUILD=1  use the release binaries already in target/
#   BENCH_GATE=path  another sessiongate binary (to compare two builds)
#
# Needs nginx (with the sub module) and wrk: installed with apt-get (Debian) when
# missing, with sudo when not root. Builds the release binaries. Everything listens on
# 127.0.0.1, every process it starts is stopped by its PID on exit, and it exits
# non-zero if any figure could not be measured.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ "${QUICK:-0}" = 1 ]; then
  DURATION=${DURATION:-3}; REPS=${REPS:-1}; TTFB_SAMPLES=${TTFB_SAMPLES:-9}
fi
DURATION=${DURATION:-6}
REPS=${REPS:-3}
CONNECTIONS=${CONNECTIONS:-64}
WRK_THREADS=${WRK_THREADS:-1}
WORKERS=${WORKERS:-$(nproc)}
UPSTREAM_THREADS=${UPSTREAM_THREADS:-1}
TTFB_SAMPLES=${TTFB_SAMPLES:-21}
read -r -a PAGES <<<"${PAGES:-1k 100k 1m}"
VARIANTS=(direct nginx nginx-sub sg-browser sg-tab)

die() { echo "compare.sh: $*" >&2; exit 1; }
need() { command -v "$1" >/dev/null 2>&1; }

# --- tools -------------------------------------------------------------------
NGINX=$(command -v nginx || echo /usr/sbin/nginx)
if [ ! -x "$NGINX" ] || ! need wrk; then
  need apt-get || die "nginx and wrk are missing and there is no apt-get to install them"
  SUDO=""
  if [ "$(id -u)" != 0 ]; then need sudo || die "not root and no sudo to install nginx and wrk"; SUDO=sudo; fi
  echo "installing nginx-light and wrk with apt-get" >&2
  $SUDO env DEBIAN_FRONTEND=noninteractive apt-get update -qq
  $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends nginx-light wrk >/dev/null
  NGINX=$(command -v nginx || echo /usr/sbin/nginx)
fi
"$NGINX" -V 2>&1 | grep -q -- --with-http_sub_module || die "$NGINX has no sub module (sub_filter)"
need curl || die "curl is missing"
need python3 || die "python3 is missing"

if [ "${SKIP_BUILD:-0}" != 1 ]; then
  cargo build --release --quiet --bin sessiongate --example bench_upstream
fi
GATE_BIN=${BENCH_GATE:-target/release/sessiongate}
UPSTREAM_BIN=target/release/examples/bench_upstream
[ -x "$GATE_BIN" ] && [ -x "$UPSTREAM_BIN" ] || die "release binaries missing (run without SKIP_BUILD)"

# --- processes ---------------------------------------------------------------
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
wait_http() { # url
  local _
  for _ in $(seq 100); do curl -fs -o /dev/null "$1" && return 0; sleep 0.1; done
  die "nothing answers at $1"
}

"$UPSTREAM_BIN" 127.0.0.1:0 "$UPSTREAM_THREADS" > "$work/upstream.out" &
pids+=($!); UPSTREAM_PID=$!
for _ in $(seq 100); do grep -q listening "$work/upstream.out" 2>/dev/null && break; sleep 0.1; done
UPSTREAM=$(awk '/listening on/ {print $3}' "$work/upstream.out")
[ -n "$UPSTREAM" ] || die "the upstream did not start"

gate() { # name mode -> starts a gateway, sets GATE_<name>_{PORT,PID}
  local port admin
  port=$(free_port); admin=$(free_port)
  cat > "$work/$1.toml" <<CONF
[listen]
address = "127.0.0.1:$port"
[upstream]
url = "http://$UPSTREAM"
[session]
mode = "$2"
[admin]
address = "127.0.0.1:$admin"
[log]
level = "warn"
CONF
  TOKIO_WORKER_THREADS=$WORKERS "$GATE_BIN" --config "$work/$1.toml" 2> "$work/$1.log" &
  pids+=($!)
  printf -v "PID_$1" '%s' $!
  printf -v "PORT_$1" '%s' "$port"
  wait_http "http://127.0.0.1:$admin/healthz"
}
gate browser browser
gate tab tab

NAVIGATE=(-H "Sec-Fetch-Mode: navigate" -H "Sec-Fetch-Dest: document" -H "Accept: text/html")
cookies_of() { awk -F'[: ;]+' 'tolower($1)=="set-cookie" {printf "%s%s", sep, $2; sep="; "}' "$1"; }

# A live browser-mode session: its cookies.
curl -fs -o "$work/b.html" -D "$work/b.head" "${NAVIGATE[@]}" "http://127.0.0.1:$PORT_browser/1k"
BROWSER_COOKIES=$(cookies_of "$work/b.head")
grep -q sg_session <<<"$BROWSER_COOKIES" || die "browser mode set no session cookie"
# A live tab-mode session: first contact sets the browser key and puts the token in
# the page's agent tag.
curl -fs -o "$work/t.html" -D "$work/t.head" "${NAVIGATE[@]}" "http://127.0.0.1:$PORT_tab/1k"
TAB_COOKIES=$(cookies_of "$work/t.head")
TAB_TOKEN=$(grep -o 'data-token="[^"]*"' "$work/t.html" | head -1 | cut -d'"' -f2)
[ -n "$TAB_TOKEN" ] || die "tab mode put no token into the first page"

# The tag nginx injects: the one the gateway puts into a page of a live session.
curl -fs -o "$work/b2.html" "${NAVIGATE[@]}" -H "Cookie: $BROWSER_COOKIES" "http://127.0.0.1:$PORT_browser/1k"
TAG=$(grep -o '<script src="[^"]*agent.js[^>]*></script>' "$work/b2.html" | head -1)
[ -n "$TAG" ] || die "no agent tag in a browser-mode page"
case "$TAG" in *"'"*) die "the agent tag has a quote nginx's config cannot carry: $TAG" ;; esac

NGINX_PROXY=$(free_port); NGINX_SUB=$(free_port)
mkdir -p "$work/nginx/logs"
cat > "$work/nginx/nginx.conf" <<CONF
worker_processes $WORKERS;
pid $work/nginx/nginx.pid;
daemon off;
error_log $work/nginx/logs/error.log;
events { worker_connections 4096; }
http {
  access_log off;
  upstream app { server $UPSTREAM; keepalive 64; }
  proxy_http_version 1.1;
  proxy_set_header Connection "";
  proxy_set_header X-Session \$cookie_sg_session;
  proxy_set_header X-Forwarded-For \$remote_addr;
  keepalive_requests 1000000;
  server { listen 127.0.0.1:$NGINX_PROXY;
    location / { proxy_pass http://app; } }
  server { listen 127.0.0.1:$NGINX_SUB;
    location / {
      proxy_pass http://app;
      proxy_set_header Accept-Encoding "";
      sub_filter_once on;
      sub_filter '<head>' '<head>$TAG';
    } }
}
CONF
"$NGINX" -p "$work/nginx" -c "$work/nginx/nginx.conf" &
pids+=($!); NGINX_PID=$!
wait_http "http://127.0.0.1:$NGINX_PROXY/1k"

url_of() { # variant page
  case "$1" in
    direct) echo "http://$UPSTREAM/$2" ;;
    nginx) echo "http://127.0.0.1:$NGINX_PROXY/$2" ;;
    nginx-sub) echo "http://127.0.0.1:$NGINX_SUB/$2" ;;
    sg-browser) echo "http://127.0.0.1:$PORT_browser/$2" ;;
    sg-tab) echo "http://127.0.0.1:$PORT_tab/$2" ;;
  esac
}
headers_of() { # variant -> one header per line
  case "$1" in
    sg-tab) printf 'Cookie: %s\nX-Session-Token: %s\n' "$TAB_COOKIES" "$TAB_TOKEN" ;;
    *) printf 'Cookie: %s\n' "$BROWSER_COOKIES" ;;
  esac
}
curl_args() { # variant -> curl/wrk -H arguments in CURL_ARGS
  CURL_ARGS=("${NAVIGATE[@]}")
  local line
  while IFS= read -r line; do CURL_ARGS+=(-H "$line"); done < <(headers_of "$1")
}
cpu_pids() { # variant -> the PIDs whose CPU counts as the proxy's
  case "$1" in
    direct) echo "$UPSTREAM_PID" ;;
    nginx | nginx-sub) echo "$NGINX_PID $(cat "/proc/$NGINX_PID/task/$NGINX_PID/children" 2>/dev/null)" ;;
    sg-browser) echo "$PID_browser" ;;
    sg-tab) echo "$PID_tab" ;;
  esac
}
ticks() { # pids -> utime + stime, summed
  local total=0 pid fields
  for pid in "$@"; do
    fields=$(sed 's/^.*) //' "/proc/$pid/stat") || die "process $pid is gone"
    total=$((total + $(awk '{print $12 + $13}' <<<"$fields")))
  done
  echo "$total"
}

# --- checks: every variant answers every page, injected where it should be ------
for variant in "${VARIANTS[@]}"; do
  curl_args "$variant"
  for page in "${PAGES[@]}"; do
    out="$work/check-$variant-$page"
    code=$(curl -s -o "$out" -w '%{http_code}' "${CURL_ARGS[@]}" "$(url_of "$variant" "$page")")
    [ "$code" = 200 ] || die "$variant /$page answered $code"
    tags=$( (grep -o 'agent\.js' "$out" || true) | wc -l)
    case "$variant" in
      direct | nginx) want=0 ;;
      *) want=1 ;;
    esac
    [ "$tags" = "$want" ] || die "$variant /$page carries $tags agent tags, not $want"
  done
done
for page in "${PAGES[@]}"; do
  cmp -s "$work/check-direct-$page" "$work/check-nginx-$page" || die "nginx changed /$page"
done

# --- load --------------------------------------------------------------------
CLK_TCK=$(getconf CLK_TCK)
cat > "$work/heartbeat.lua" <<'LUA'
wrk.method = "POST"
wrk.body = '{"page":"bench","activity":false,"visible":true,"want":0}'
wrk.headers["Content-Type"] = "application/json"
LUA
# wrk's report -> one TSV row: rep variant page req/s p50_ms p99_ms requests cpu_s errors
PARSE_WRK='
import re, sys
rep, variant, page, ticks, hz = sys.argv[1:6]
text = sys.stdin.read()
def ms(value):
    number, unit = re.fullmatch(r"([0-9.]+)(us|ms|s)", value).groups()
    return float(number) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]
rps = float(re.search(r"Requests/sec:\s+([0-9.]+)", text).group(1))
p50 = ms(re.search(r"^\s+50%\s+(\S+)", text, re.M).group(1))
p99 = ms(re.search(r"^\s+99%\s+(\S+)", text, re.M).group(1))
requests = int(re.search(r"(\d+) requests in", text).group(1))
errors = sum(int(n) for n in re.findall(r"(?:connect|read|write|timeout) (\d+)", text))
non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", text)
errors += int(non2xx.group(1)) if non2xx else 0
print("\t".join(map(str, [rep, variant, page, rps, p50, p99, requests, int(ticks) / int(hz), errors])))
'
results="$work/results.tsv"
: > "$results"

measure() { # rep variant page url [extra wrk args...]
  local rep=$1 variant=$2 page=$3 url=$4
  shift 4
  local cpus before after out
  read -r -a cpus <<<"$(cpu_pids "$variant")"
  before=$(ticks "${cpus[@]}")
  out=$(wrk -t"$WRK_THREADS" -c"$CONNECTIONS" -d"${DURATION}s" --latency "$@" "$url") \
    || die "wrk failed on $variant /$page"
  after=$(ticks "${cpus[@]}")
  python3 -c "$PARSE_WRK" "$rep" "$variant" "$page" "$((after - before))" "$CLK_TCK" <<<"$out" >> "$results" \
    || die "could not read wrk's output for $variant /$page: $out"
}

echo "compare.sh: ${DURATION}s x ${REPS} reps, ${CONNECTIONS} connections, wrk -t${WRK_THREADS}," \
  "proxies with ${WORKERS} workers, upstream ${UPSTREAM_THREADS} thread(s), $(nproc) cores" >&2
for rep in $(seq "$REPS"); do
  for page in "${PAGES[@]}"; do
    for variant in "${VARIANTS[@]}"; do
      curl_args "$variant"
      echo "  rep $rep: $variant /$page" >&2
      measure "$rep" "$variant" "$page" "$(url_of "$variant" "$page")" "${CURL_ARGS[@]}"
    done
  done
  echo "  rep $rep: heartbeat" >&2
  measure "$rep" sg-browser heartbeat "http://127.0.0.1:$PORT_browser/__sessiongate/heartbeat" \
    -s "$work/heartbeat.lua" -H "Cookie: $BROWSER_COOKIES" -H "X-Sessiongate-Agent: 1"
done

# --- time to first byte, unloaded ------------------------------------------------
ttfb="$work/ttfb.tsv"
: > "$ttfb"
for page in "${PAGES[@]}"; do
  for variant in "${VARIANTS[@]}"; do
    curl_args "$variant"
    for _ in $(seq "$TTFB_SAMPLES"); do
      t=$(curl -s -o /dev/null -w '%{http_code} %{time_starttransfer}' "${CURL_ARGS[@]}" "$(url_of "$variant" "$page")")
      [ "${t%% *}" = 200 ] || die "$variant /$page answered ${t%% *} while timing the first byte"
      printf '%s\t%s\t%s\n' "$variant" "$page" "${t#* }" >> "$ttfb"
    done
  done
done

python3 - "$results" "$ttfb" "$REPS" "${PAGES[*]}" <<'PY'
import sys, statistics
from collections import defaultdict

rows = [line.split("\t") for line in open(sys.argv[1]).read().splitlines() if line]
reps = int(sys.argv[3])
cell = defaultdict(list)
for rep, variant, page, rps, p50, p99, requests, cpu_s, errors in rows:
    cell[(variant, page)].append((float(rps), float(p50), float(p99), int(requests), float(cpu_s), int(errors)))
bad = []
summary = {}
for key, runs in cell.items():
    if len(runs) != reps:
        bad.append(f"{key}: {len(runs)} of {reps} runs")
    requests = sum(r[3] for r in runs)
    cpu = sum(r[4] for r in runs)
    errors = sum(r[5] for r in runs)
    if requests == 0 or cpu <= 0:
        bad.append(f"{key}: no requests or no CPU time measured")
    if errors:
        bad.append(f"{key}: {errors} errors or non-2xx answers")
    summary[key] = dict(
        rps=statistics.median(r[0] for r in runs),
        p50=statistics.median(r[1] for r in runs),
        p99=statistics.median(r[2] for r in runs),
        cpu_us=cpu * 1e6 / requests if requests else float("nan"),
    )

ttfb = defaultdict(list)
for line in open(sys.argv[2]).read().splitlines():
    variant, page, seconds = line.split("\t")
    ttfb[(variant, page)].append(float(seconds) * 1000)

def ratio(a, b):
    return f"{a / b:.2f}" if b else "–"

pages = sys.argv[4].split()
variants = ["direct", "nginx", "nginx-sub", "sg-browser", "sg-tab"]
print("| page | variant | req/s | p50 ms | p99 ms | CPU µs/req | TTFB ms "
      "| req/s ÷ nginx | CPU ÷ nginx | req/s ÷ nginx-sub | CPU ÷ nginx-sub | req/s ÷ direct |")
print("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
for page in pages:
    nginx = summary.get(("nginx", page))
    sub = summary.get(("nginx-sub", page))
    direct = summary.get(("direct", page))
    for variant in variants:
        s = summary.get((variant, page))
        if s is None or nginx is None or sub is None or direct is None:
            bad.append(f"({variant}, {page}): not measured")
            continue
        times = ttfb[(variant, page)]
        first = f"{statistics.median(times):.2f}" if times else "–"
        proxy = variant != "direct"
        cells = [
            f"{s['rps']:,.0f}", f"{s['p50']:.2f}", f"{s['p99']:.2f}",
            f"{s['cpu_us']:.1f}" if proxy else "–", first,
            ratio(s["rps"], nginx["rps"]) if proxy and variant != "nginx" else "–",
            ratio(s["cpu_us"], nginx["cpu_us"]) if proxy and variant != "nginx" else "–",
            ratio(s["rps"], sub["rps"]) if variant.startswith("sg-") else "–",
            ratio(s["cpu_us"], sub["cpu_us"]) if variant.startswith("sg-") else "–",
            ratio(s["rps"], direct["rps"]) if proxy else "–",
        ]
        print(f"| {page} | {variant} | " + " | ".join(cells) + " |")
hb = summary.get(("sg-browser", "heartbeat"))
small = summary.get(("sg-browser", "1k"))
if hb:
    print(f"\nheartbeats: {hb['rps']:,.0f}/s, p50 {hb['p50']:.2f} ms, p99 {hb['p99']:.2f} ms, "
          f"{hb['cpu_us']:.1f} CPU µs each; ÷ sg-browser 1 KiB page req/s: {ratio(hb['rps'], small['rps']) if small else '–'}")
else:
    bad.append("heartbeats: not measured")
print("\nCPU µs/req: the proxy's own utime + stime (nginx: master + workers) over all reps / requests;"
      " req/s, p50, p99: median of the reps; TTFB: median of single unloaded requests"
      " (curl time_starttransfer).")
if bad:
    print("\nNOT MEASURED: " + "; ".join(bad), file=sys.stderr)
    sys.exit(1)
PY
