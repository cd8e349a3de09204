#!/usr/bin/env bash
# The server's own capacity on a machine with spare cores: the server pinned to SERVER_CPUS
# (a "2-vCPU box"), wrk and Locust pinned to LOAD_CPUS, so the load generator never takes the
# server's CPU. Runs `make bench` pinned, then two Locust step runs (predict-only and the
# realistic mix) against one pinned server, and writes everything under OUT.
#
#   loadtest/pinned.sh                          # SERVER_CPUS=0,1  LOAD_CPUS=2-<last>
#   SERVER_CPUS=0,1 LOAD_CPUS=2-9 OUT=var/capacity/run1 loadtest/pinned.sh
#   BENCH=0 PREDICT_USERS=320 REALISTIC_USERS=48 loadtest/pinned.sh   # Locust only, finer steps
#   BENCH=0 MIXES=predict loadtest/pinned.sh                           # the predict-only run alone
#
# Each Locust run climbs in 8 equal steps of STEP_SECONDS (default 12) up to its users, each
# user paced at 20 req/s: PREDICT_USERS=640 offers 1,600 more req/s per step, up to 12,800.
#
# Needs at least 4 cores (2 for the server, 2+ for the load), wrk and taskset. Uses MODEL_DIR's
# model and DATABASE_URL's data when they exist; otherwise seeds the demo data and trains first.
set -euo pipefail
cd "$(dirname "$0")/.."

PY=${PY:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3 )}
cores=$(nproc)
if [ "$cores" -lt 4 ]; then
  echo "pinned: $cores core(s) here; this needs at least 4 (2 for the server, 2+ for the load generator)." >&2
  echo "pinned: on a small box use make bench / make loadtest, which share the cores." >&2
  exit 2
fi
for tool in taskset wrk; do
  command -v "$tool" >/dev/null || { echo "pinned: $tool not found (make system-deps)" >&2; exit 2; }
done
SERVER_CPUS=${SERVER_CPUS:-0,1}
LOAD_CPUS=${LOAD_CPUS:-2-$((cores - 1))}
PORT=${PORT:-8000}
OUT=${OUT:-var/capacity/$(date -u +%Y%m%dT%H%M%SZ)}
PREDICT_USERS=${PREDICT_USERS:-640}     # 20 req/s each: up to 12,800 req/s offered, in 8 steps
REALISTIC_USERS=${REALISTIC_USERS:-120} # up to 2,400 req/s offered, in 8 steps
STEP_SECONDS=${STEP_SECONDS:-12}
load_n=$(taskset -c "$LOAD_CPUS" nproc)
PROCESSES=${PROCESSES:-$load_n}
mkdir -p "$OUT"
export DATABASE_URL=${DATABASE_URL:-sqlite:///var/app.db} MODEL_DIR=${MODEL_DIR:-var/models}
export EXPERIMENTS_LOG=${EXPERIMENTS_LOG:-var/runs.csv}

if ! $PY -c 'import os, sys; from registry.store import Registry; sys.exit(not Registry(os.environ["MODEL_DIR"]).current())'; then
  echo "pinned: no deployed model in $MODEL_DIR; seeding demo data and training" >&2
  $PY -m features.demo >/dev/null
  $PY -m train | tail -1
fi

{
  echo "machine: $cores cores ($(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//'))"
  echo "server: CPUs $SERVER_CPUS, 2 workers; load generator: CPUs $LOAD_CPUS ($load_n cores, $PROCESSES Locust processes)"
  echo "python: $($PY -c 'import sys; print(sys.version.split()[0])')"
} | tee "$OUT/conditions.txt"

if [ "${BENCH:-1}" != 0 ]; then
  echo "== make bench, pinned" >&2
  $PY -m serve.bench --server-cpus "$SERVER_CPUS" --load-cpus "$LOAD_CPUS" --json "$OUT/bench.json" | tee "$OUT/bench.txt"
fi

echo "== Locust against one server pinned to CPUs $SERVER_CPUS" >&2
export PROMETHEUS_MULTIPROC_DIR=${PROMETHEUS_MULTIPROC_DIR:-$(mktemp -d)}
WEB_CONCURRENCY=2 PORT=$PORT HOST=127.0.0.1 taskset -c "$SERVER_CPUS" $PY -m serve >"$OUT/server.log" 2>&1 &
server=$!
trap 'kill -TERM $server 2>/dev/null; wait $server 2>/dev/null || true' EXIT
for _ in $(seq 1 120); do
  $PY -c "import urllib.request as u; u.urlopen('http://127.0.0.1:$PORT/ready', timeout=1)" 2>/dev/null && break
  kill -0 $server 2>/dev/null || { echo "pinned: the server exited; see $OUT/server.log" >&2; exit 1; }
  sleep 0.25
done

run() {  # name mix users
  local steps=8
  taskset -c "$LOAD_CPUS" $PY -m loadtest --host "http://127.0.0.1:$PORT" --mix "$2" --shape step \
    --users "$3" --step-users $(($3 / steps)) --step-seconds "$STEP_SECONDS" --spawn-rate 200 \
    --duration "$((steps * STEP_SECONDS))s" --user-rps 20 --processes "$PROCESSES" --slo-min-rps 0 \
    --payloads "$OUT/payloads.json" --out "$OUT/$1" || echo "pinned: $1 run exited $? (an SLO missed at the highest steps is expected)" >&2
}
for mix in ${MIXES:-predict realistic}; do
  case $mix in
    predict) run predict predict "$PREDICT_USERS" ;;
    realistic) run realistic realistic "$REALISTIC_USERS" ;;
    *) echo "pinned: unknown mix '$mix' in MIXES (predict, realistic)" >&2; exit 2 ;;
  esac
done
echo "pinned: results in $OUT (conditions.txt, bench.txt, predict/*/report.md, realistic/*/report.md)" >&2
