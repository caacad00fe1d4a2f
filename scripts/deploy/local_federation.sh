#!/usr/bin/env bash
# A whole deployment on this machine over loopback: a SuperLink and one SuperNode per hospital
# of the embedded synthetic data set (hospital_a, hospital_b, hospital_c), each a separate
# process with its own FLWR_HOME and node config, then `flwr run` and a status check.
#
#   bash scripts/deploy/local_federation.sh                 # secure: TLS + SuperNode authentication
#   bash scripts/deploy/local_federation.sh --insecure      # development mode (plain HTTP)
#   bash scripts/deploy/local_federation.sh --tiny --out /tmp/fed   # seconds-sized models (smoke test)
#   bash scripts/deploy/local_federation.sh --run-config 'guidance.scale=30.0'
#
# Secure mode provisions a CA, the SuperLink's certificate and the hospitals' keys into
# <work>/keys (or uses --keys DIR from provision.py), starts the SuperLink with TLS and
# --enable-supernode-auth, registers the hospitals' public keys with `flwr supernode register`,
# and starts each SuperNode with the CA certificate and its private key.
# The run folder is <out>/<name> (default out: runs/, name: deploy-<time>); each hospital's
# synthetic data goes to <work>/sites/<hospital>/. Exits 0 only if the run finished completed;
# everything it started is stopped on exit (by PID), also on Ctrl-C or failure.
set -euo pipefail
. "$(dirname "$0")/common.sh"

MODE=secure
SITES="hospital_a,hospital_b,hospital_c"
KEYS=""
WORK=""
OUT="$REPO_ROOT/runs"
NAME="deploy-$(date +%Y%m%d-%H%M%S)"
RUN_CONFIG=""
TINY=0
KEEP=0
TINY_CONFIG='data.size-scale=0.12 data.length=16 classifier.kind="gru" classifier.hidden=8 classifier.num-layers=1 unet.dim=8 unet.dim-mults="1,2" unet.attention-levels="1" unet.heads=2 unet.head-dim=4 unet.groups=4 diffusion.num-steps=20 sampling.num-inference-steps=4 federation.classifier-rounds=1 federation.diffusion-rounds=1 evaluation.seeds="0" evaluation.epochs=1 evaluation.tsrtr-ratios="1.0"'
while [ $# -gt 0 ]; do
  case "$1" in
    --insecure) MODE=insecure; shift ;;
    --secure) MODE=secure; shift ;;
    --sites) SITES=$2; shift 2 ;;
    --keys) KEYS=$2; shift 2 ;;
    --work) WORK=$2; shift 2 ;;
    --out) OUT=$2; shift 2 ;;
    --name) NAME=$2; shift 2 ;;
    --run-config) RUN_CONFIG=$2; shift 2 ;;
    --tiny) TINY=1; shift ;;
    --keep) KEEP=1; shift ;;
    -h|--help) usage; exit 0 ;;
    *) die "unknown argument: $1" ;;
  esac
done
if [ -z "$WORK" ]; then WORK=$(mktemp -d "${TMPDIR:-/tmp}/tardiff-federation.XXXXXX"); fi
mkdir -p "$WORK" "$OUT"
WORK=$(abspath "$WORK"); OUT=$(abspath "$OUT")
IFS=',' read -r -a SITE_LIST <<< "$SITES"

PIDS=()
GENERATED_KEYS=0
descendants() { local c; for c in $(pgrep -P "$1" 2>/dev/null || true); do echo "$c"; descendants "$c"; done; }
stop_all() {
  local rc=$? pid all=()
  for pid in "${PIDS[@]}"; do all+=($(descendants "$pid")); done
  for pid in "${PIDS[@]}"; do kill -TERM -- "-$pid" 2>/dev/null || kill -TERM "$pid" 2>/dev/null || true; done
  for _ in $(seq 50); do
    local alive=0
    for pid in "${PIDS[@]}" "${all[@]}"; do if kill -0 "$pid" 2>/dev/null; then alive=1; fi; done
    [ "$alive" = 0 ] && break
    sleep 0.2
  done
  for pid in "${PIDS[@]}" "${all[@]}"; do kill -KILL "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  if [ "$KEEP" = 0 ] && [ "$rc" = 0 ]; then
    rm -rf "$WORK/superlink" "$WORK"/supernode_*
    if [ "$GENERATED_KEYS" = 1 ]; then rm -rf "$WORK/keys"; fi
  fi
  exit "$rc"
}
trap stop_all EXIT
trap 'exit 130' INT TERM

if [ "$MODE" = secure ]; then
  if [ -z "$KEYS" ]; then
    KEYS="$WORK/keys"
    GENERATED_KEYS=1
    python "$DEPLOY_DIR/provision.py" --out "$KEYS" --hospitals "$SITES" >/dev/null
  fi
  KEYS=$(abspath "$KEYS")
fi

PORT=$(free_port 127.0.0.1)
SL_ARGS=(--port "$PORT" --state-dir "$WORK/superlink")
if [ "$MODE" = secure ]; then SL_ARGS+=(--keys "$KEYS"); else SL_ARGS+=(--insecure); fi
setsid bash "$DEPLOY_DIR/start_superlink.sh" "${SL_ARGS[@]}" > "$WORK/superlink.out" 2>&1 &
PIDS+=($!)
wait_for_port 127.0.0.1 "$PORT" 60 "${PIDS[0]}" || { cat "$WORK/superlink.out" >&2; die "the SuperLink did not start"; }
CLI_HOME="$WORK/superlink/cli"

if [ "$MODE" = secure ]; then
  PUBS=()
  for site in "${SITE_LIST[@]}"; do PUBS+=("$KEYS/supernodes/$site/$site.pub"); done
  bash "$DEPLOY_DIR/register_supernodes.sh" --cli-home "$CLI_HOME" "${PUBS[@]}"
fi

for site in "${SITE_LIST[@]}"; do
  SN_ARGS=(--superlink "127.0.0.1:$PORT" --state-dir "$WORK/supernode_$site" --dataset synthetic
           --site "$site" --device cpu --output-dir "$WORK/sites")
  if [ "$MODE" = secure ]; then SN_ARGS+=(--keys "$KEYS/supernodes/$site"); else SN_ARGS+=(--insecure); fi
  setsid bash "$DEPLOY_DIR/start_supernode.sh" "${SN_ARGS[@]}" > "$WORK/supernode_$site.out" 2>&1 &
  PIDS+=($!)
done

CONFIG="output.dir=\"$OUT\" output.name=\"$NAME\" federation.num-sites=${#SITE_LIST[@]}"
if [ "$TINY" = 1 ]; then CONFIG="$TINY_CONFIG $CONFIG"; fi
if [ -n "$RUN_CONFIG" ]; then CONFIG="$CONFIG $RUN_CONFIG"; fi
echo "SuperLink 127.0.0.1:$PORT ($MODE), SuperNodes: ${SITE_LIST[*]}; logs in $WORK" >&2
bash "$DEPLOY_DIR/run_app.sh" --cli-home "$CLI_HOME" --run-config "$CONFIG" --log "$WORK/run.log"
echo "run folder: $OUT/$NAME"
