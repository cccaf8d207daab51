#!/usr/bin/env bash
# Run a local Warmline cluster: N nodes sharing one SQLite file, one redis-server for fan-out
# and presence, and nginx in front (deploy/nginx.conf). Ctrl-C (or SIGTERM) stops it all:
# nodes first (they drain: clients get `reconnect`), then nginx and Redis.
#
#   deploy/run-local.sh [N]          N nodes (default 3)
#
# Environment (all optional):
#   PORT=8080            where nginx listens (the one URL clients use)
#   BASE_PORT=8001       node i listens on BASE_PORT+i-1
#   NODE_PORTS="p1 p2"   explicit node ports instead (their count is then N)
#   REDIS_PORT=6390      port of the redis-server started here
#   REDIS_URL=...        use this Redis instead of starting one
#   RUN_DIR=...          logs, pids and the rendered nginx.conf (default: a new temp dir)
#   WARMLINE_DB=...      the shared SQLite file (default: $RUN_DIR/warmline.db)
#   WARMLINE_BIN=...     how to run warmline (default: .venv/bin/warmline, else `warmline`)
#   DEMO=1               seed and print the demo tenant (0 to skip)
#   START_TIMEOUT_S=60   how long each process may take to come up
# Any other WARMLINE_* variable reaches every node (see `warmline serve --help`).
set -euo pipefail

here="$(cd "$(dirname "$0")" && pwd)"
root="$(dirname "$here")"
nodes="${1:-3}"
port="${PORT:-8080}"
base_port="${BASE_PORT:-8001}"
redis_port="${REDIS_PORT:-6390}"
run_dir="${RUN_DIR:-$(mktemp -d -t warmline-cluster.XXXXXX)}"
db="${WARMLINE_DB:-$run_dir/warmline.db}"
demo="${DEMO:-1}"
start_timeout="${START_TIMEOUT_S:-60}"

if ! [[ "$nodes" =~ ^[1-9][0-9]*$ ]]; then
  echo "usage: $0 [number of nodes]" >&2
  exit 2
fi
if [[ -n "${NODE_PORTS:-}" ]]; then
  read -r -a node_ports <<<"$NODE_PORTS"
  nodes="${#node_ports[@]}"
else
  node_ports=()
  for i in $(seq "$nodes"); do node_ports+=($((base_port + i - 1))); done
fi
if [[ -n "${WARMLINE_BIN:-}" ]]; then
  read -r -a warmline <<<"$WARMLINE_BIN"
elif [[ -x "$root/.venv/bin/warmline" ]]; then
  warmline=("$root/.venv/bin/warmline")
else
  warmline=(warmline)
fi
command -v nginx >/dev/null || { echo "nginx is not installed" >&2; exit 1; }

mkdir -p "$run_dir/logs" "$run_dir/tmp"
pids=()

stop_all() {
  trap - EXIT INT TERM
  echo "stopping the cluster..."
  # Nodes first, all at once: each drains its clients, who reconnect through nginx.
  for pidfile in "$run_dir"/node-*.pid; do
    [[ -e "$pidfile" ]] && kill -TERM "$(cat "$pidfile")" 2>/dev/null || true
  done
  for pidfile in "$run_dir"/node-*.pid; do
    [[ -e "$pidfile" ]] || continue
    pid="$(cat "$pidfile")"
    for _ in $(seq 300); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$pid" 2>/dev/null || true
  done
  for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  echo "stopped; logs are in $run_dir"
}
trap stop_all EXIT INT TERM

# Wait (bounded) until a log file shows a line, or the process died.
wait_for_line() {
  local file="$1" pattern="$2" pid="$3" deadline=$((SECONDS + start_timeout))
  until grep -q "$pattern" "$file" 2>/dev/null; do
    if ! kill -0 "$pid" 2>/dev/null; then
      echo "process $pid exited; last lines of $file:" >&2
      tail -n 20 "$file" >&2
      exit 1
    fi
    if ((SECONDS > deadline)); then
      echo "timed out waiting for '$pattern' in $file" >&2
      exit 1
    fi
    sleep 0.1
  done
}

if [[ -z "${REDIS_URL:-}" ]]; then
  redis-server --port "$redis_port" --bind 127.0.0.1 --save "" --appendonly no \
    --dir "$run_dir" --logfile "" >"$run_dir/logs/redis.log" 2>&1 &
  pids+=("$!")
  echo "$!" >"$run_dir/redis.pid"
  wait_for_line "$run_dir/logs/redis.log" "Ready to accept connections" "$!"
  REDIS_URL="redis://127.0.0.1:$redis_port/0"
fi

serve_args=(serve --db "$db" --host 127.0.0.1 --redis-url "$REDIS_URL")
[[ "$demo" == "1" ]] && serve_args+=(--demo)
for i in $(seq "$nodes"); do
  node_port="${node_ports[$((i - 1))]}"
  WARMLINE_NODE_ID="node-$i" "${warmline[@]}" "${serve_args[@]}" --port "$node_port" \
    >"$run_dir/logs/node-$i.log" 2>&1 &
  echo "$!" >"$run_dir/node-$i.pid"
  # One at a time: the first node creates the database and seeds the demo.
  wait_for_line "$run_dir/logs/node-$i.log" "Warmline listening" "$!"
done

# Render nginx.conf: this cluster's nodes between the markers, and our listen port.
servers=""
for node_port in "${node_ports[@]}"; do
  servers+="        server 127.0.0.1:$node_port max_fails=2 fail_timeout=10s;\n"
done
awk -v servers="$servers" -v port="$port" '
  /# nodes begin/ { print; printf "%s", servers; skip = 1; next }
  /# nodes end/   { skip = 0 }
  skip            { next }
  /^ *listen [0-9]+;/ { sub(/[0-9]+/, port) }
  { print }
' "$here/nginx.conf" >"$run_dir/nginx.conf"
nginx -p "$run_dir" -c "$run_dir/nginx.conf" -g 'daemon off;' >"$run_dir/logs/nginx.out" 2>&1 &
pids+=("$!")
echo "$!" >"$run_dir/nginx.pid"
deadline=$((SECONDS + start_timeout))
until (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; do
  kill -0 "${pids[-1]}" 2>/dev/null || { cat "$run_dir/logs/nginx.out" >&2; exit 1; }
  ((SECONDS <= deadline)) || { echo "nginx did not listen on $port" >&2; exit 1; }
  sleep 0.1
done

if [[ "$demo" == "1" ]]; then
  grep -E "Agent token|Supervisor token" "$run_dir/logs/node-1.log" || true
fi
echo "Warmline cluster: $nodes nodes behind http://localhost:$port (redis $REDIS_URL)"
echo "  run dir: $run_dir"
echo "Cluster ready"
wait "${pids[@]}"
