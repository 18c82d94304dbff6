#!/usr/bin/env bash
# Throughput and latency of sessiongate against nginx as a reverse proxy, measured in
# the same run on the same machine, in front of the same upstream (an nginx that
# answers a 1 KiB page from memory). Reports each proxy's numbers and the ratios.
#
#   bench/vs-nginx.sh                 # 10 s per run
#   BENCH_SECONDS=30 BENCH_CONNECTIONS=64 bench/vs-nginx.sh
#
# Needs nginx and wrk (installed with apt-get when missing) and builds the release
# binary. Everything listens on 127.0.0.1 and is stopped on exit.
set -euo pipefail
cd "$(dirname "$0")/.."

SECONDS_PER_RUN=${BENCH_SECONDS:-10}
CONNECTIONS=${BENCH_CONNECTIONS:-32}
THREADS=${BENCH_THREADS:-2}

need() { command -v "$1" >/dev/null 2>&1; }
if ! need nginx || ! need wrk; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq && apt-get install -y -qq nginx-light wrk >/dev/null
fi
NGINX=$(command -v nginx || echo /usr/sbin/nginx)

cargo build --release --quiet --bin sessiongate
work=$(mktemp -d)
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  "$NGINX" -p "$work/upstream" -c "$work/upstream/nginx.conf" -s stop 2>/dev/null || true
  "$NGINX" -p "$work/proxy" -c "$work/proxy/nginx.conf" -s stop 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
UPSTREAM=$(free_port); NGINX_PROXY=$(free_port); GATE=$(free_port); ADMIN=$(free_port)
PLAIN=$(free_port); PLAIN_ADMIN=$(free_port)
page=$(python3 -c 'print("<!DOCTYPE html><title>bench</title>" + "x" * 990)')

mkdir -p "$work/upstream/logs" "$work/proxy/logs"
cat > "$work/upstream/nginx.conf" <<CONF
worker_processes 1;
pid $work/upstream/nginx.pid;
error_log $work/upstream/logs/error.log;
events { worker_connections 4096; }
http {
  access_log off;
  server { listen 127.0.0.1:$UPSTREAM; keepalive_requests 100000;
    location / { default_type text/html; return 200 '$page'; } }
}
CONF
cat > "$work/proxy/nginx.conf" <<CONF
worker_processes 2;
pid $work/proxy/nginx.pid;
error_log $work/proxy/logs/error.log;
events { worker_connections 4096; }
http {
  access_log off;
  upstream app { server 127.0.0.1:$UPSTREAM; keepalive 64; }
  server { listen 127.0.0.1:$NGINX_PROXY; keepalive_requests 100000;
    location / {
      proxy_pass http://app;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_set_header X-Session \$cookie_sg_session;
      proxy_set_header X-Forwarded-For \$remote_addr;
    } }
}
CONF
"$NGINX" -p "$work/upstream" -c "$work/upstream/nginx.conf"
"$NGINX" -p "$work/proxy" -c "$work/proxy/nginx.conf"

cat > "$work/gate.toml" <<CONF
[listen]
address = "127.0.0.1:$GATE"
[upstream]
url = "http://127.0.0.1:$UPSTREAM"
[session]
mode = "browser"
[admin]
address = "127.0.0.1:$ADMIN"
[log]
level = "warn"
CONF
./target/release/sessiongate --config "$work/gate.toml" &
pids+=($!)
# The same gateway without the agent: what injecting it into every page costs.
sed -e "s/$GATE/$PLAIN/; s/$ADMIN/$PLAIN_ADMIN/" "$work/gate.toml" > "$work/plain.toml"
printf '[browser]\ninject = false\n' >> "$work/plain.toml"
./target/release/sessiongate --config "$work/plain.toml" &
pids+=($!)
for port in $ADMIN $PLAIN_ADMIN; do
  for _ in $(seq 50); do curl -fs "http://127.0.0.1:$port/healthz" >/dev/null && break; sleep 0.1; done
done

# One browser's cookies, so every benchmarked request resolves a live session.
cookies_of() {
  curl -fs -o /dev/null -D - "$1" \
    | awk -F'[: ;]+' 'tolower($1)=="set-cookie" {printf "%s%s", sep, $2; sep="; "}'
}
cookies=$(cookies_of "http://127.0.0.1:$GATE/")
plain_cookies=$(cookies_of "http://127.0.0.1:$PLAIN/")

# Every request is a page load as a browser sends it: the gateway injects the agent
# into answers to navigations only.
NAVIGATE=(-H "Sec-Fetch-Mode: navigate" -H "Sec-Fetch-Dest: document" -H "Accept: text/html")

run() { # name url [header]
  local out
  if [ -n "${3:-}" ]; then
    out=$(wrk -t"$THREADS" -c"$CONNECTIONS" -d"${SECONDS_PER_RUN}s" --latency "${NAVIGATE[@]}" -H "$3" "$2")
  else
    out=$(wrk -t"$THREADS" -c"$CONNECTIONS" -d"${SECONDS_PER_RUN}s" --latency "${NAVIGATE[@]}" "$2")
  fi
  local rps p50 p99 errors
  rps=$(awk '/Requests\/sec/ {print $2}' <<<"$out")
  p50=$(awk '$1=="50%" {print $2}' <<<"$out")
  p99=$(awk '$1=="99%" {print $2}' <<<"$out")
  errors=$(awk '/Non-2xx|Socket errors/ {print}' <<<"$out" | tr '\n' ' ')
  printf '%-34s %12s %10s %10s  %s\n' "$1" "$rps" "$p50" "$p99" "$errors"
  echo "$rps" > "$work/$4.rps"
}

echo "sessiongate vs nginx: ${SECONDS_PER_RUN}s per run, $CONNECTIONS connections, $THREADS wrk threads, $(nproc) cores"
printf '%-34s %12s %10s %10s\n' "target" "req/s" "p50" "p99"
run "upstream direct (baseline)" "http://127.0.0.1:$UPSTREAM/" "" direct
run "nginx reverse proxy" "http://127.0.0.1:$NGINX_PROXY/" "Cookie: $cookies" nginx
run "sessiongate, live session" "http://127.0.0.1:$GATE/" "Cookie: $cookies" gate
run "sessiongate, no agent injection" "http://127.0.0.1:$PLAIN/" "Cookie: $plain_cookies" plain

python3 - "$work" <<'PY'
import sys, pathlib
w = pathlib.Path(sys.argv[1])
rps = {p.stem: float(p.read_text()) for p in w.glob("*.rps") if p.read_text().strip()}
if "gate" in rps and "nginx" in rps:
    print(f"\nsessiongate / nginx throughput: {rps['gate'] / rps['nginx']:.2f}")
if "plain" in rps and "nginx" in rps:
    print(f"sessiongate without injection / nginx: {rps['plain'] / rps['nginx']:.2f}")
PY
