#!/usr/bin/env bash
# Run the Flower app with `flwr run` against a SuperLink this script starts and stops itself.
#
#   bash scripts/flwr_simulation.sh [--supernodes N] [--cpus-per-client C] [--run-config '<toml overrides>']
#
# Flower keeps its own state in a throwaway FLWR_HOME (no ~/.flwr, pyproject.toml untouched),
# runtime dependency installation and telemetry are off, and the script exits non-zero if the
# run did not finish as "completed" (`flwr run` itself exits 0 even when the ServerApp raised).
set -euo pipefail
cd "$(dirname "$0")/.."
SUPERNODES=3
CPUS=1
RUN_CONFIG=""
while [ $# -gt 0 ]; do
  case "$1" in
    --supernodes) SUPERNODES=$2; shift 2 ;;
    --cpus-per-client) CPUS=$2; shift 2 ;;
    --run-config) RUN_CONFIG=$2; shift 2 ;;
    *) echo "unknown argument: $1" >&2; exit 2 ;;
  esac
done
NCPU=$(python -c 'import os; print(os.cpu_count() or 1)')
if [ "$CPUS" -gt "$NCPU" ]; then CPUS=$NCPU; fi   # never ask more CPUs per client than the machine has

export FLWR_HOME
FLWR_HOME=$(mktemp -d "${TMPDIR:-/tmp}/flwr_home.XXXXXX")
export FLWR_TELEMETRY_ENABLED=0 FLWR_DISABLE_UPDATE_CHECK=1 FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION=1
export RAY_USAGE_STATS_ENABLED=0 RAY_DEDUP_LOGS=0 RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO=0
PORT=$(python -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
printf '[superlink]\ndefault = "local"\n\n[superlink.local]\naddress = "127.0.0.1:%s"\ninsecure = true\n' "$PORT" \
  > "$FLWR_HOME/config.toml"

flower-superlink --insecure --simulation --isolation subprocess --disable-runtime-dependency-installation \
  --host 127.0.0.1 --port "$PORT" --log-file "$FLWR_HOME/superlink.log" >/dev/null 2>&1 &
SUPERLINK_PID=$!
cleanup() {
  kill -TERM "$SUPERLINK_PID" 2>/dev/null || true
  wait "$SUPERLINK_PID" 2>/dev/null || true
  rm -rf "$FLWR_HOME"
}
trap cleanup EXIT
python - "$PORT" <<'PY'
import socket, sys, time
port = int(sys.argv[1]); deadline = time.time() + 60
while time.time() < deadline:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close(); sys.exit(0)
    except OSError:
        time.sleep(0.2)
sys.exit("the SuperLink did not start within 60 s")
PY

ARGS=(run . local --stream --federation-config "num-supernodes=$SUPERNODES client-resources-num-cpus=$CPUS client-resources-num-gpus=0.0")
if [ -n "$RUN_CONFIG" ]; then ARGS+=(--run-config "$RUN_CONFIG"); fi
flwr "${ARGS[@]}" 2>&1 | tee "$FLWR_HOME/run.log"
RUN_ID=$(grep -oE 'Successfully started run [0-9]+' "$FLWR_HOME/run.log" | grep -oE '[0-9]+$' || true)
if [ -z "$RUN_ID" ]; then echo "flwr run did not start a run" >&2; exit 1; fi
STATUS=$(flwr ls local --run-id "$RUN_ID" --format json | python -c 'import json,sys; print(json.load(sys.stdin)["runs"][0]["status"])')
echo "run $RUN_ID: $STATUS"
[ "$STATUS" = "finished:completed" ]
