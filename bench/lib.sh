# Shared by the bench scripts (`source bench/lib.sh` after `cd` to the repo root and
# setting BENCH_NAME): tools, release binaries, processes stopped by PID, and
# starting the bench upstream and gateways on free loopback ports.

die() { echo "${BENCH_NAME:-bench}: $*" >&2; exit 1; }
need() { command -v "$1" >/dev/null 2>&1; }

# install_packages PACKAGE... — installs Debian packages with apt-get (sudo when not
# root); for callers that found a tool missing.
install_packages() {
  need apt-get || die "$* missing and there is no apt-get to install them"
  local sudo=""
  if [ "$(id -u)" != 0 ]; then need sudo || die "not root and no sudo to install $*"; sudo=sudo; fi
  echo "installing $* with apt-get" >&2
  $sudo env DEBIAN_FRONTEND=noninteractive apt-get update -qq
  $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" >/dev/null
}

# The release gateway (or BENCH_GATE) and the bench upstream; built unless SKIP_BUILD=1.
if [ "${SKIP_BUILD:-0}" != 1 ]; then
  cargo build --release --quiet --bin sessiongate --example bench_upstream
fi
GATE_BIN=${BENCH_GATE:-target/release/sessiongate}
UPSTREAM_BIN=target/release/examples/bench_upstream
[ -x "$GATE_BIN" ] && [ -x "$UPSTREAM_BIN" ] || die "release binaries missing (run without SKIP_BUILD)"

# Every process started goes into `pids`; all are stopped (by PID) and the work
# directory removed on exit.
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

# start_upstream [THREADS] — the bench upstream; sets UPSTREAM (host:port) and UPSTREAM_PID.
start_upstream() {
  local _
  "$UPSTREAM_BIN" 127.0.0.1:0 "${1:-1}" > "$work/upstream.out" &
  pids+=($!); UPSTREAM_PID=$!
  for _ in $(seq 100); do grep -q listening "$work/upstream.out" 2>/dev/null && break; sleep 0.1; done
  UPSTREAM=$(awk '/listening on/ {print $3}' "$work/upstream.out")
  [ -n "$UPSTREAM" ] || die "the upstream did not start"
}

# start_gate NAME MODE [SESSION_TOML] [EXTRA_TOML] — a gateway in front of the bench
# upstream with WORKERS worker threads, log level warn; SESSION_TOML goes into its
# [session] table, EXTRA_TOML (more tables) at the end. Sets PID_<NAME>, PORT_<NAME>
# and ADMIN_<NAME>, and returns once its admin listener answers.
start_gate() {
  local port admin
  port=$(free_port); admin=$(free_port)
  cat > "$work/$1.toml" <<CONF
[listen]
address = "127.0.0.1:$port"
[upstream]
url = "http://$UPSTREAM"
[session]
mode = "$2"
${3:-}
[admin]
address = "127.0.0.1:$admin"
[log]
level = "warn"
${4:-}
CONF
  TOKIO_WORKER_THREADS=${WORKERS:-$(nproc)} "$GATE_BIN" --config "$work/$1.toml" 2> "$work/$1.log" &
  pids+=($!)
  printf -v "PID_$1" '%s' $!
  printf -v "PORT_$1" '%s' "$port"
  printf -v "ADMIN_$1" '%s' "$admin"
  wait_http "http://127.0.0.1:$admin/healthz"
}

# Page loads as a browser sends them (the gateway injects the agent into each), and
# the session cookies a response head (curl -D) set.
NAVIGATE=(-H "Sec-Fetch-Mode: navigate" -H "Sec-Fetch-Dest: document" -H "Accept: text/html")
cookies_of() { awk -F'[: ;]+' 'tolower($1)=="set-cookie" {printf "%s%s", sep, $2; sep="; "}' "$1"; }
