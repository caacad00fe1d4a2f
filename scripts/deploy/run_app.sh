#!/usr/bin/env bash
# Submit the federated TarDiff app to a running SuperLink, stream its log, and exit 0 only if
# the run finished as "completed" (`flwr run` itself exits 0 even when the ServerApp raised).
#
#   bash scripts/deploy/run_app.sh --cli-home <superlink state-dir>/cli \
#        --run-config 'output.dir="/srv/tardiff/runs" output.name="fed-001" federation.num-sites=3'
#
# Prints "run <id>: <status>" last, e.g. "run 42: finished:completed" or "finished:failed".
# --log FILE keeps the streamed log (default: <cli-home>/run-<time>.log).
set -euo pipefail
. "$(dirname "$0")/common.sh"

CLI_HOME=""
CONNECTION=""
RUN_CONFIG=""
LOG=""
APP="$REPO_ROOT"
while [ $# -gt 0 ]; do
  case "$1" in
    --cli-home) CLI_HOME=$2; shift 2 ;;
    --connection) CONNECTION=$2; shift 2 ;;
    --run-config) RUN_CONFIG=$2; shift 2 ;;
    --log) LOG=$2; shift 2 ;;
    --app) APP=$2; shift 2 ;;
    -h|--help) usage; exit 0 ;;
    *) die "unknown argument: $1" ;;
  esac
done
[ -n "$CLI_HOME" ] || die "--cli-home <dir with config.toml> is required"
export FLWR_HOME
FLWR_HOME=$(abspath "$CLI_HOME")
[ -n "$LOG" ] || LOG="$FLWR_HOME/run-$(date +%Y%m%d-%H%M%S).log"

ARGS=(run "$APP")
if [ -n "$CONNECTION" ]; then ARGS+=("$CONNECTION"); fi
ARGS+=(--stream)
if [ -n "$RUN_CONFIG" ]; then ARGS+=(--run-config "$RUN_CONFIG"); fi
flwr "${ARGS[@]}" 2>&1 | tee "$LOG"
RUN_ID=$(grep -oE 'Successfully started run [0-9]+' "$LOG" | grep -oE '[0-9]+$' || true)
if [ -z "$RUN_ID" ]; then echo "flwr run did not start a run (log: $LOG)" >&2; exit 1; fi
LS=(ls)
if [ -n "$CONNECTION" ]; then LS+=("$CONNECTION"); fi
STATUS=$(flwr "${LS[@]}" --run-id "$RUN_ID" --format json 2>/dev/null \
  | python -c 'import json,sys
try:
    print(json.load(sys.stdin)["runs"][0]["status"])
except Exception:
    print("unknown")')
echo "run $RUN_ID: $STATUS"
[ "$STATUS" = "finished:completed" ]
